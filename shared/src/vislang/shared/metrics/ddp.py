"""Exact evaluation under DDP: every sample counts exactly once, whatever the world size.

``torch.utils.data.DistributedSampler`` pads the dataset by repeating its first samples until the length
divides the world size, so a plain all-reduced mean over 101 samples on 2 ranks averages 102 values. This
module gives every package two complementary guarantees, and every metric of :mod:`vislang.shared.metrics`
uses both:

1. **No padding**: :func:`evaluation_sampler` / :class:`UnrepeatedDistributedSampler` (Lightning's sampler
   without padding; rank ``r`` gets indices ``r, r + W, r + 2W, ...``) -- ranks may run one batch fewer,
   which is safe in evaluation (no gradient all-reduce). Lightning keeps a ``DistributedSampler`` subclass
   that a data module installs itself, so ``val_dataloader`` can return it under
   ``use_distributed_sampler=True``.
2. **Dedup by sample index**: every :class:`SampleMetric` stores the dataset index of each sample it sees
   and, after the torchmetrics all-gather, keeps the first occurrence of each index and orders samples by
   index. So the result is exact even with Lightning's default padded sampler, and the floating-point
   reductions run in the same order as in a single process, which makes DDP numbers *bit-identical* to
   single-process numbers (not merely close).

Strings (answers, captions, question types) cannot go through ``all_gather`` directly; they are stored as
UTF-8 bytes plus lengths (:func:`encode_strings`), two ordinary ``cat`` states that torchmetrics syncs.

Limitation inherited from torchmetrics: a rank that saw no sample at all syncs an empty float tensor, which
cannot be concatenated with other ranks' integer states. Every rank must see at least one sample, which
:class:`UnrepeatedDistributedSampler` asserts and a padded sampler guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import Dataset, SequentialSampler
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from vislang.shared.distributed import is_distributed
from vislang.shared.distributed import rank as _rank
from vislang.shared.distributed import world_size as _world_size

__all__ = [
    "SampleMetric",
    "UnrepeatedDistributedSampler",
    "decode_strings",
    "encode_strings",
    "evaluation_sampler",
    "first_occurrence",
]


def evaluation_sampler(dataset: Dataset, num_replicas: int | None = None, rank: int | None = None):
    """The sampler every package's ``val/test_dataloader`` uses: each sample on exactly one rank.

    Without an initialised process group (and no explicit ``num_replicas``) this is a plain
    ``SequentialSampler``; otherwise :class:`UnrepeatedDistributedSampler` with ``shuffle=False``.

    Args:
        dataset: A sized map-style dataset.
        num_replicas: World size; default: the current process group's.
        rank: This process's rank; default: the current process group's.
    """
    if num_replicas is None and not is_distributed():
        return SequentialSampler(dataset)  # type: ignore[arg-type]
    return UnrepeatedDistributedSampler(
        dataset,
        num_replicas=_world_size() if num_replicas is None else num_replicas,
        rank=_rank() if rank is None else rank,
        shuffle=False,
    )


def first_occurrence(keys: Tensor) -> Tensor:
    """Positions of the first occurrence of each distinct key, ordered by key.

    Args:
        keys: ``(N,)`` integer keys, or ``(N, k)`` for composite keys (ordered lexicographically).

    Returns:
        ``(U,)`` int64 positions into ``keys``: one per distinct key, in ascending key order.
    """
    if keys.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=keys.device)
    uniq, inverse = torch.unique(keys, dim=0, sorted=True, return_inverse=True)
    n = keys.shape[0]
    positions = torch.arange(n, device=keys.device)
    first = torch.full((uniq.shape[0],), n, dtype=torch.long, device=keys.device)
    return first.scatter_reduce_(0, inverse, positions, reduce="amin")


def encode_strings(strings: Sequence[str], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """UTF-8 bytes of all ``strings`` concatenated (uint8) and each one's byte length (int64)."""
    encoded = [s.encode("utf-8") for s in strings]
    flat = b"".join(encoded)
    data = torch.frombuffer(bytearray(flat), dtype=torch.uint8) if flat else torch.zeros(0, dtype=torch.uint8)
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    return data.to(device), lengths.to(device)


def decode_strings(data: Tensor, lengths: Tensor) -> list[str]:
    """Inverse of :func:`encode_strings`."""
    raw = data.cpu().numpy().tobytes()
    out, offset = [], 0
    for n in lengths.cpu().tolist():
        out.append(raw[offset : offset + n].decode("utf-8"))
        offset += n
    if offset != len(raw):
        raise ValueError(f"string state is corrupt: lengths sum to {offset} bytes but {len(raw)} were stored")
    return out


def _as_index(index: Tensor | Sequence[int], n: int, device: torch.device) -> Tensor:
    index = torch.as_tensor(index, device=device).long().reshape(-1)
    if index.numel() != n:
        raise ValueError(f"got {index.numel()} sample indices for {n} samples")
    return index


class SampleMetric(Metric):
    """Base of every vislang evaluation metric: per-sample states keyed by the dataset index.

    Subclasses call :meth:`_add_states` in ``__init__`` (all ``cat`` states, one row per sample),
    append in ``update`` together with ``index`` (the dataset index of each sample, e.g. the ``index``
    field every vislang dataset returns), and read the deduplicated, index-ordered values in ``compute``
    with :meth:`_gathered`.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def _add_states(self, *names: str) -> None:
        for name in names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _append_index(self, index: Tensor | Sequence[int], n: int) -> None:
        self.index.append(_as_index(index, n, self.device))  # type: ignore[attr-defined]

    def _state(self, name: str) -> Tensor:
        value = getattr(self, name)
        if isinstance(value, list):
            if not value:
                return torch.zeros(0, device=self.device)
            return dim_zero_cat(value)
        return value

    def _kept(self) -> Tensor:
        """Positions (into the gathered per-sample states) of each sample's first copy, by index."""
        index = self._state("index")
        if index.numel() == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() called before any update()")
        return first_occurrence(index.long())

    def _gathered(self, name: str, keep: Tensor) -> Tensor:
        return self._state(name)[keep]

    def _gathered_strings(self, name: str, keep: Tensor) -> list[str]:
        strings = decode_strings(self._state(f"{name}_bytes").to(torch.uint8), self._state(f"{name}_len").long())
        return [strings[i] for i in keep.tolist()]

    def _add_string_state(self, name: str) -> None:
        self._add_states(f"{name}_bytes", f"{name}_len")

    def _append_strings(self, name: str, strings: Sequence[str]) -> None:
        data, lengths = encode_strings(strings, self.device)
        getattr(self, f"{name}_bytes").append(data)
        getattr(self, f"{name}_len").append(lengths)
