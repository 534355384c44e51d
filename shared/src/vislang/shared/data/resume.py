"""Exact resume: a run killed at any step and resumed from its checkpoint sees the same batches, the
same augmentations and the same random numbers as the run that was never stopped.

What a resumed run must reproduce, and which piece here does it:

* **The order of the epoch and the position in it** — `ResumableSampler`: the epoch's order is a
  function of (seed, epoch) only (as `DistributedSampler`'s, which it extends, so Lightning leaves it
  in place under DDP and calls its ``set_epoch``); it can start an epoch after the items already
  consumed. It also draws weighted orders (PixelLM's dataset mixture) the same way.
* **The augmentations** — every index the sampler yields is a `SampleKey` (index, epoch, seed);
  `RobustDataset` loads each sample with the process's random generators (torch, NumPy, ``random``)
  seeded from that key, and the collate of `collate_with_failures` runs seeded from its batch's keys.
  So a sample's crop or masked words do not depend on which worker loaded it, how many samples that
  worker loaded before, or whether the run was restarted in between; and loading in the main process
  (``num_workers=0``) leaves the training step's random stream untouched.
* **The training step's random stream** (dropout, masks drawn in the model) — `ExactResume`, a
  callback, saves the generators' states with each checkpoint and puts them back just before the
  first training step of the resumed run.
* **Where to start** — `ExactResume` records how many batches of which epoch the run had consumed
  when the checkpoint was written; `train_loader` (or any loader builder, through `resume_position`)
  gives that position to the sampler when the resumed run builds its loaders.

Everything else a run carries — weights, EMA/target encoders, buffers such as SOHO's visual
dictionary, optimiser and scheduler state, the mixed-precision loss scaler, the loops' counters — is
in Lightning's checkpoint already. `ExactResume` lives in `vislang.shared.callbacks`, which the
``lightning`` command adds to every run; a Python user adds it to ``Trainer(callbacks=[...])``.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from vislang.shared.distributed import rank as _rank
from vislang.shared.distributed import world_size as _world_size

__all__ = [
    "ResumableSampler",
    "SampleKey",
    "default_seed",
    "rng_state",
    "set_rng_state",
    "newest_checkpoint",
    "resume_position",
    "seeded",
]


def default_seed() -> int:
    """The run's seed: what ``seed_everything`` (the configs' ``seed_everything:``) set, else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class SampleKey(NamedTuple):
    """What `ResumableSampler` yields instead of a bare index: the index and what seeds its loading."""

    index: int
    epoch: int
    seed: int


def _seed_of(keys: Sequence[SampleKey]) -> int:
    entropy = [value for key in keys for value in (key.seed, key.epoch, key.index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


@contextlib.contextmanager
def seeded(keys: Sequence[SampleKey]) -> Iterator[None]:
    """Run the block with torch's CPU generator, NumPy's global generator and ``random`` seeded from
    ``keys``, and give the process its own states back afterwards (so loading in the main process does
    not shift the training step's random stream)."""
    seed = _seed_of(keys)
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would reseed the GPUs too
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` that yields `SampleKey`s and can start an epoch part-way through.

    One process or many: with no process group it is one replica. The order of an epoch is a function
    of ``(seed, epoch)`` alone; each rank takes every ``num_replicas``-th item of it.

    Args:
        dataset: the (sized) dataset; items are `SampleKey`s, so wrap it in `RobustDataset`.
        shuffle: a new permutation each epoch; ``False`` keeps the dataset's order.
        seed: default `default_seed()`.
        drop_last: drop the tail that does not divide among the ranks (else it is padded by repetition).
        weights: draw ``num_samples`` items per rank with replacement, with these relative weights
            (for a mixture of datasets); ``shuffle`` is then irrelevant.
        num_samples: items per rank per epoch when ``weights`` are given (default: the dataset's
            size divided among the ranks).
        num_replicas, rank: default: the process group's.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = False,
        weights: Sequence[float] | torch.Tensor | None = None,
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        replicas = _world_size() if num_replicas is None else num_replicas
        super().__init__(
            dataset,
            num_replicas=replicas,
            rank=_rank() if rank is None else rank,
            shuffle=shuffle,
            seed=default_seed() if seed is None else seed,
            drop_last=drop_last,
        )
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if self.weights is not None:
            self.num_samples = num_samples or -(-len(dataset) // replicas)  # type: ignore[arg-type]
            self.total_size = self.num_samples * replicas
        self._start: tuple[int, int] | None = None

    def start_at(self, epoch: int, consumed: int) -> None:
        """The next iteration is epoch ``epoch`` without its first ``consumed`` items (of this rank);
        an epoch consumed to its end starts the next one."""
        if consumed >= self.num_samples:
            epoch, consumed = epoch + 1, 0
        self.set_epoch(epoch)
        self._start = (epoch, consumed)

    def _indices(self) -> list[int]:
        if self.weights is None:
            return list(super().__iter__())
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return drawn[self.rank : self.total_size : self.num_replicas].tolist()

    def __iter__(self) -> Iterator[SampleKey]:  # type: ignore[override]
        indices = self._indices()
        skip = self._start[1] if self._start is not None and self._start[0] == self.epoch else 0
        self._start = None
        return iter([SampleKey(index, self.epoch, self.seed) for index in indices[skip:]])


def rng_state() -> dict[str, Any]:
    # tensors, ints and tuples only: the checkpoint stays loadable with torch.load(weights_only=True)
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_position(trainer: Any) -> tuple[int, int] | None:
    """(epoch, batches already consumed) that a resumed run's training loaders start from, or None
    when the run is not resuming (or has no `ExactResume` callback). Loader builders call it."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if type(callback).__name__ == "ExactResume" and isinstance(getattr(callback, "pending", None), tuple):
            return callback.pending
    return None


def newest_checkpoint(trainer: Any) -> str | None:
    """The checkpoint with the highest global step (then the newest file) in the directories of the
    trainer's `ModelCheckpoint`s, or None when there is none (or a directory is not set yet)."""
    from vislang.shared.checkpoint import load_checkpoint

    found: list[tuple[int, float, str]] = []
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        folder = getattr(callback, "dirpath", None)
        if not folder or not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            if not entry.name.endswith(".ckpt") or not entry.is_file():
                continue
            try:
                step = int(load_checkpoint(entry.path, mmap=True).get("global_step", -1))
            except Exception:  # noqa: BLE001 - an unreadable file is not a candidate; Lightning reports it if chosen
                continue
            found.append((step, entry.stat().st_mtime, entry.path))
    return max(found)[2] if found else None
