"""The two DataLoaders every package builds: a training loader that resumes exactly, and an
evaluation loader that shows each sample to exactly one rank.

Both wrap the dataset in `RobustDataset` (a corrupt file is skipped and counted once) and give the
loader its own seeded generator: DataLoader otherwise draws its workers' base seed from the global
torch generator each time an iterator is created, which would shift the training step's random
stream by a validation pass or a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from vislang.shared.data.resume import ResumableSampler, default_seed, resume_position
from vislang.shared.data.robust import RobustDataset, collate_with_failures
from vislang.shared.metrics.ddp import evaluation_sampler

__all__ = ["eval_loader", "train_loader"]


def _robust(dataset: Dataset, max_failure_fraction: float) -> RobustDataset:
    return dataset if isinstance(dataset, RobustDataset) else RobustDataset(dataset, max_failure_fraction)


def train_loader(
    dataset: Dataset,
    batch_size: int,
    trainer: Any = None,
    *,
    collate: Callable[[list[Any]], Any] = default_collate,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    weights: Sequence[float] | torch.Tensor | None = None,
    num_samples: int | None = None,
    max_failure_fraction: float = 0.01,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """A training loader over ``dataset`` with a `ResumableSampler`: the epoch's order depends on
    (seed, epoch) only, each rank reads its share, and a resumed run (``trainer`` has an
    `ExactResume` callback restored from a checkpoint) starts where the checkpoint was written.

    Args:
        dataset: a map-style dataset (wrapped in `RobustDataset` unless it is one).
        batch_size: per process.
        trainer: the data module's ``self.trainer`` (None outside a Trainer: no resume).
        collate: the dataset's collate (wrapped by `collate_with_failures`).
        weights, num_samples: a weighted draw with replacement of ``num_samples`` items per rank
            (see `ResumableSampler`).
        persistent_workers: default: whenever there are workers.
    """
    robust = _robust(dataset, max_failure_fraction)
    sampler = ResumableSampler(robust, shuffle=shuffle, weights=weights, num_samples=num_samples)
    position = resume_position(trainer)
    if position is not None:
        epoch, batches = position
        # a loader shorter than the epoch (CombinedLoader's max_size_cycle) is re-iterated within it
        per_pass = len(sampler) // batch_size if drop_last else -(-len(sampler) // batch_size)
        sampler.start_at(epoch, (batches % max(per_pass, 1)) * batch_size)
    return DataLoader(
        robust,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_with_failures(collate),
        drop_last=drop_last,
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers,
        generator=torch.Generator().manual_seed(default_seed()),
    )


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    collate: Callable[[list[Any]], Any] = default_collate,
    num_workers: int = 0,
    max_failure_fraction: float = 0.01,
    persistent_workers: bool = False,
) -> DataLoader:
    """A validation/test/predict loader: the dataset in order, each sample on exactly one rank
    (`evaluation_sampler`), nothing dropped."""
    robust = _robust(dataset, max_failure_fraction)
    return DataLoader(
        robust,
        batch_size=batch_size,
        sampler=evaluation_sampler(robust),
        num_workers=num_workers,
        collate_fn=collate_with_failures(collate),
        persistent_workers=persistent_workers and num_workers > 0,
        generator=torch.Generator().manual_seed(default_seed()),
    )
