"""Process-group helpers that also work in a plain single process.

Contrastive losses (CLIP, MoCo v3, CMAE, VLAB) use every sample of the global batch as a negative, so
the keys of all processes are gathered before the similarity matrix is built. ``gather_with_grad`` does
that gather *with* gradients flowing back to the local shard, which is what makes the DDP loss equal
to the single-process full-batch loss (see the convention in its docstring).

Every helper answers sensibly without an initialised process group (world size 1, rank 0, gather is the
identity), so the same model code runs under ``python train.py``, Lightning's CPU accelerator and DDP.
The helpers deliberately ignore ``WORLD_SIZE``/``RANK`` environment variables: before the process group
exists no collective can run, and a rank that disagreed with what ``gather_with_grad`` does would give
wrong positive indices.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import ProcessGroup

__all__ = ["gather_with_grad", "is_distributed", "rank", "world_size"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(group: ProcessGroup | None = None) -> int:
    """Number of processes in ``group`` (default: the world), or 1 without a process group.

    Args:
        group: Process group to ask; ``None`` means the default (world) group.
    """
    return dist.get_world_size(group) if _initialized() else 1


def rank(group: ProcessGroup | None = None) -> int:
    """Rank of this process within ``group``, or 0 without a process group.

    Args:
        group: Process group to ask; ``None`` means the default (world) group.
    """
    return dist.get_rank(group) if _initialized() else 0


def is_distributed(group: ProcessGroup | None = None) -> bool:
    """Whether collectives over ``group`` involve more than this one process.

    Args:
        group: Process group to ask; ``None`` means the default (world) group.
    """
    return world_size(group) > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's rows (a reduce-scatter).

    Written with the public ``all_gather``/``all_reduce`` collectives, which every backend (gloo, NCCL,
    XCCL) implements, as in SimCLR's and lightly's ``GatherLayer``;
    ``torch.distributed.nn.functional.all_gather`` does the same but is deprecated.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: ProcessGroup | None) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        shards = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(shards, x.contiguous(), group=group)
        return torch.cat(shards, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        # Every rank holds d(its loss)/d(all rows); summing them gives d(sum of losses)/d(all rows).
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def gather_with_grad(x: Tensor, group: ProcessGroup | None = None) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping the autograd graph to the local shard.

    A plain ``torch.distributed.all_gather`` returns tensors detached from the graph, so a contrastive
    loss would get no gradient through the other ranks' copies of *this* rank's samples. Here the
    backward pass sums, over all ranks, the gradient each rank computed for rows ``[r*B, (r+1)*B)``
    and returns it to rank ``r`` -- the approach of open_clip's ``gather_with_grad=True``.

    Gradient convention: if each rank computes its loss ``L_r`` over its *local* queries against *all*
    gathered keys, the gradient reaching the local input is ``d(sum_r L_r)/dx_local``. With ``L_r`` a
    mean over the local batch and equal local batch sizes, ``mean_r L_r`` is the full-batch loss; DDP
    averages parameter gradients over ranks, so the parameters receive exactly the full-batch gradient.
    (The input gradient itself is ``world_size`` times the full-batch one.)

    Args:
        x: Local shard, shape ``(B, ...)``. All ranks must pass the same shape (``DistributedSampler``
            gives every rank the same number of samples; use ``drop_last=True`` for training).
        group: Process group to gather over; ``None`` means the world.

    Returns:
        ``(world_size * B, ...)`` tensor ordered by rank, rank ``r``'s rows at ``[r*B, (r+1)*B)``;
        ``x`` itself when there is only one process.
    """
    if not is_distributed(group):
        return x
    return _GatherWithGrad.apply(x, group)
