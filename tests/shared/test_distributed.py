"""vislang.shared.distributed: helpers without a process group, and a real 2-process gloo group.

The two-process test runs this file as a script, once per rank (``python test_distributed.py RANK
WORLD DIR``), with the process group rendezvousing through a FileStore in ``tmp_path``: no ports, no
torchrun, and no pickling of test functions into spawned children.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch

from vislang.shared.distributed import gather_with_grad, is_distributed, rank, world_size

WORLD = 2
ROWS_PER_RANK = 3


def full_batch() -> torch.Tensor:
    return torch.randn(WORLD * ROWS_PER_RANK, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def local_loss(x_local: torch.Tensor, x_all: torch.Tensor) -> torch.Tensor:
    """Each rank scores its local rows (as queries) against all rows (as keys), summed over its rows."""
    return (2.0 * x_local @ x_all.t()).logsumexp(dim=1).sum()


def run_ranks(script: str, tmp_path: Path, world: int = WORLD, timeout: float = 120) -> None:
    """Run ``script`` as ``world`` processes, one per rank, and fail with their stderr if any fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(r), str(world), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    failures = []
    for r, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"rank {r} timed out") from None
        if proc.returncode != 0:
            failures.append(f"rank {r} exited with {proc.returncode}:\n{err[-3000:]}")
    assert not failures, "\n".join(failures)


def test_single_process_defaults() -> None:
    assert not torch.distributed.is_initialized()
    assert world_size() == 1
    assert rank() == 0
    assert not is_distributed()
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


def test_gather_with_grad_two_processes(tmp_path: Path) -> None:
    run_ranks(__file__, tmp_path)

    x = full_batch().requires_grad_(True)
    # Full-batch reference: the sum of every rank's local loss, computed in one process.
    total = sum(local_loss(x[r * ROWS_PER_RANK : (r + 1) * ROWS_PER_RANK], x) for r in range(WORLD))
    (full_grad,) = torch.autograd.grad(total, x)
    for r in range(WORLD):
        result = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert result["world_size"] == WORLD and result["rank"] == r and result["is_distributed"]
        torch.testing.assert_close(result["gathered"], x.detach())
        # The gradient reaching rank r's own rows includes the other rank's loss through its copy of them.
        torch.testing.assert_close(result["grad"], full_grad[r * ROWS_PER_RANK : (r + 1) * ROWS_PER_RANK])
        # ... which a plain (detached) all_gather would miss: the local-only gradient differs.
        assert not torch.allclose(result["grad_local_only"], result["grad"])


def _worker(rank_: int, world: int, out_dir: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir / 'store'}", rank=rank_, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        x_local = full_batch()[rank_ * ROWS_PER_RANK : (rank_ + 1) * ROWS_PER_RANK].clone().requires_grad_(True)
        gathered = gather_with_grad(x_local)
        (grad,) = torch.autograd.grad(local_loss(x_local, gathered), x_local)

        # What a detached gather would give: only this rank's loss reaches x_local.
        detached = [torch.empty_like(x_local) for _ in range(world)]
        dist.all_gather(detached, x_local.detach())
        detached[rank_] = x_local
        (grad_local_only,) = torch.autograd.grad(local_loss(x_local, torch.cat(detached)), x_local)

        torch.save(
            {
                "world_size": world_size(),
                "rank": rank(),
                "is_distributed": is_distributed(),
                "gathered": gathered.detach(),
                "grad": grad,
                "grad_local_only": grad_local_only,
            },
            out_dir / f"rank{rank_}.pt",
        )
        dist.barrier()  # both ranks finish their collectives before gloo is torn down
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
