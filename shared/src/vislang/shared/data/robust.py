"""Skip-and-count for samples that fail to load: one bad video must not stop a week-long run, but a
broken dataset (wrong root, missing codec) must stop it at once with a message that says why.

How the pieces fit:

* A dataset raises `SampleLoadError(path, reason)` (or a subclass such as
  `vislang.shared.data.video.VideoDecodeError`) from ``__getitem__`` when a file cannot be read.
* `RobustDataset` wraps it: it catches the error, logs it once per file, substitutes the next index
  (deterministic, so a seeded run stays reproducible), and records in the returned sample how many
  failures it hit while producing it (key `FAILURES_KEY`). Past ``max_failure_fraction`` of the
  loads it raises `TooManyLoadFailures` naming the first failing files.
* `collate_with_failures(collate)` moves those per-sample counts out of the samples (so the
  dataset's own collate never sees the extra key) and into the batch as one integer.
* `LoadFailureMonitor`, a Lightning callback, sums the batches' counts and logs the running total
  as ``data/load_failures``.

Why counts travel inside the samples for the metric: DataLoader workers are separate processes,
so a counter on the dataset object in the main process never sees their failures; the batch is the
one channel every worker already sends back to the main process, under every start method, with
persistent or fresh workers, and under DDP on every rank. The threshold, on the other hand, must be
checked inside the worker that hits the failures (it has to stop the run even when the model never
reads the count); it uses a small shared-memory tensor, one row per loader process, so that every
worker compares the dataset-wide totals with the limit, without locks (each process writes only
its own row).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

__all__ = [
    "FAILURES_KEY",
    "LoadFailureMonitor",
    "RobustDataset",
    "SampleLoadError",
    "TooManyLoadFailures",
    "collate_with_failures",
    "count_failures",
]

log = logging.getLogger(__name__)

FAILURES_KEY = "load_failures"
"""Key of the failure count in samples (added by `RobustDataset`) and batches (by the collate)."""

# Rows of the shared counter: row 0 is the main process, row 1 + k is DataLoader worker k.
_MAX_PROCESS_ROWS = 64


class SampleLoadError(Exception):
    """A sample's file could not be loaded (missing, empty, corrupt, truncated, undecodable).

    Args:
        path: the file that failed.
        reason: why, in a few words (one line).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str = "could not be loaded") -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # picklable with both arguments (DataLoader workers and multiprocessing send exceptions)
        return type(self), (self.path, self.reason)


class TooManyLoadFailures(RuntimeError):
    """More than the allowed fraction of a dataset's samples failed to load.

    Constructed from one message string, so DataLoader can re-raise it in the main process with
    the worker's traceback.
    """


class RobustDataset(Dataset):
    """Wraps a map-style dataset: samples that raise `SampleLoadError` are logged, counted and
    replaced by the next index that loads.

    Each returned sample that is a mapping gets ``sample[FAILURES_KEY]``: the number of failures hit
    while producing it (0 almost always). Other sample types are returned unchanged (they are still
    skipped, logged and counted towards the limit, but carry no count for the metric).

    The limit: loading stops with `TooManyLoadFailures` once the failures exceed
    ``max_failure_fraction * max(loads, len(dataset))`` where both counts are totals over the main
    process and all DataLoader workers of this dataset object: during the first epoch that is "more
    than 1 % of the dataset's files" (by default), afterwards the running failure rate. The message
    names the first failing files seen by the process that trips it and the total count.

    Args:
        dataset: the map-style dataset to protect; its ``__getitem__`` raises `SampleLoadError`
            for unreadable files and its other exceptions (bugs) propagate unchanged.
        max_failure_fraction: the tolerated fraction of failed loads; 0 stops at the first failure.
        show: how many failing files the stopping error names.
    """

    def __init__(self, dataset: Dataset, max_failure_fraction: float = 0.01, show: int = 5) -> None:
        if not 0 <= max_failure_fraction <= 1:
            raise ValueError(f"max_failure_fraction must be in [0, 1], got {max_failure_fraction}")
        self.dataset = dataset
        self.max_failure_fraction = max_failure_fraction
        self.show = show
        # (loads, failures) per process; shared memory survives fork and spawn alike, and the
        # totals persist across epochs even when workers are re-created.
        self._counts = torch.zeros(_MAX_PROCESS_ROWS, 2, dtype=torch.int64).share_memory_()
        self.failed: dict[str, str] = {}  # path -> reason, in order of first failure, this process

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # read-through to the wrapped dataset (e.g. `items`); guarded for unpickling
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def total_loads(self) -> int:
        """Loads attempted by every process of this dataset so far."""
        return int(self._counts[:, 0].sum())

    @property
    def total_failures(self) -> int:
        """Failed loads (all processes) so far; a file that fails in every epoch counts every time."""
        return int(self._counts[:, 1].sum())

    def __getitem__(self, index: int) -> Any:
        size = len(self)
        row = self._row()
        failures = 0
        for attempt in range(size):
            current = (index + attempt) % size  # the next index: deterministic substitution
            self._counts[row, 0] += 1
            try:
                sample = self.dataset[current]
            except SampleLoadError as error:
                failures += 1
                self._counts[row, 1] += 1
                self._record(error)
                continue
            if isinstance(sample, MutableMapping):
                sample[FAILURES_KEY] = failures
            return sample
        raise TooManyLoadFailures(self._message(f"no sample of {size} could be loaded"))

    def _row(self) -> int:
        info = get_worker_info()
        return 0 if info is None else 1 + info.id % (_MAX_PROCESS_ROWS - 1)

    def _record(self, error: SampleLoadError) -> None:
        if error.path not in self.failed:
            self.failed[error.path] = error.reason
            log.warning("skipping unreadable sample %s: %s", error.path, error.reason)
        loads, failures = self.total_loads, self.total_failures
        allowed = self.max_failure_fraction * max(loads, len(self))
        if failures > allowed:
            raise TooManyLoadFailures(self._message(f"more than {self.max_failure_fraction:.2%} of the loads"))

    def _message(self, what: str) -> str:
        names = "; ".join(f"{path} ({reason})" for path, reason in list(self.failed.items())[: self.show])
        more = len(self.failed) - self.show
        tail = f"; and {more} more" if more > 0 else ""
        return (
            f"{self.total_failures} of {self.total_loads} sample loads failed ({what}, dataset of {len(self)}); "
            f"first failing files: {names}{tail}"
        )


def collate_with_failures(collate: Callable[[list[Any]], Any] = default_collate) -> Callable[[list[Any]], Any]:
    """A collate function that sums the samples' `FAILURES_KEY` into the batch and hands the samples
    without that key to `collate` (so datasets' own collates need not know about it).

    The batch must be a mutable mapping when any sample carries a count; it gets
    ``batch[FAILURES_KEY]`` as a Python int.

    Args:
        collate: the dataset's collate function (default: torch's `default_collate`).
    """

    def collate_fn(samples: list[Any]) -> Any:
        failures = 0
        found = False
        stripped = []
        for sample in samples:
            if isinstance(sample, Mapping) and FAILURES_KEY in sample:
                found = True
                failures += int(sample[FAILURES_KEY])
                sample = {key: value for key, value in sample.items() if key != FAILURES_KEY}
            stripped.append(sample)
        batch = collate(stripped)
        if found:
            if not isinstance(batch, MutableMapping):
                raise TypeError(
                    f"collate_with_failures needs a dict batch to store {FAILURES_KEY!r}, got {type(batch)}"
                )
            batch[FAILURES_KEY] = failures
        return batch

    return collate_fn


def count_failures(batch: Any) -> int:
    """The load failures recorded in a batch: `FAILURES_KEY` at the top level or inside nested
    mappings/sequences (e.g. a CombinedLoader's ``{task: batch}``), as an int or a tensor of
    per-sample counts (what `default_collate` makes of them)."""
    if isinstance(batch, Mapping):
        total = 0
        for key, value in batch.items():
            if key == FAILURES_KEY:
                total += int(value.sum()) if isinstance(value, torch.Tensor) else int(value)
            elif isinstance(value, Mapping | list | tuple):
                total += count_failures(value)
        return total
    if isinstance(batch, list | tuple):
        return sum(count_failures(item) for item in batch if isinstance(item, Mapping | list | tuple))
    return 0


def _monitor_class() -> type:
    """Builds `LoadFailureMonitor` on first access: importing Lightning takes seconds, and video
    decoding (which imports this module for `SampleLoadError`) must not pay for it."""
    from lightning.pytorch import Callback, LightningModule, Trainer

    class LoadFailureMonitor(Callback):
        """Logs the running total of skipped training samples as ``data/load_failures`` (and the
        failures of each validation run as ``data/val_load_failures``, suffixed by Lightning with
        ``/dataloader_idx_N`` when there are several validation loaders), from the counts that
        `RobustDataset` puts into every batch.

        Args:
            sync_dist: sum the totals over DDP ranks when logging (one all-reduce per step); by default
                each rank logs its own (rank 0's is what loggers record).
        """

        def __init__(self, sync_dist: bool = False) -> None:
            self.sync_dist = sync_dist
            self.total = 0

        def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:  # fmt: skip
            self.total += count_failures(batch)
            pl_module.log("data/load_failures", float(self.total), on_step=True, on_epoch=False, batch_size=1,
                          sync_dist=self.sync_dist, reduce_fx="sum")  # fmt: skip

        def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                    batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
            pl_module.log("data/val_load_failures", float(count_failures(batch)), on_step=False, on_epoch=True,
                          batch_size=1, sync_dist=self.sync_dist, reduce_fx="sum")  # fmt: skip

        def state_dict(self) -> dict[str, int]:
            return {"total": self.total}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.total = int(state_dict.get("total", 0))

    LoadFailureMonitor.__qualname__ = "LoadFailureMonitor"  # importable (and picklable) by its module path
    return LoadFailureMonitor


@functools.cache
def _load_failure_monitor() -> type:
    return _monitor_class()


def __getattr__(name: str) -> Any:
    # PEP 562: `from vislang.shared.data.robust import LoadFailureMonitor` and the CLI's
    # `class_path: vislang.shared.data.robust.LoadFailureMonitor` both resolve here.
    if name == "LoadFailureMonitor":
        return _load_failure_monitor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from lightning.pytorch import Callback

    class LoadFailureMonitor(Callback):
        """Logs ``data/load_failures``; see `_monitor_class`."""

        total: int

        def __init__(self, sync_dist: bool = False) -> None: ...
