"""Skip-and-count for samples that fail to load: one bad video must not stop a week-long run, but a
broken dataset (wrong root, missing codec) must stop it at once with a message that says why.

How the pieces fit:

* A dataset raises `SampleLoadError(path, reason)` (or a subclass such as
  `vislang.shared.data.video.VideoDecodeError`) from ``__getitem__`` when a file cannot be read.
* `RobustDataset` wraps it: it catches the error, logs it once, marks the sample's *file* as failed
  (a wrapped dataset that defines ``sample_file(index)`` says which file an index reads: a video with
  six QA pairs is one file, not six), substitutes the next index whose file is not known to fail
  (deterministic, so a seeded run stays reproducible), and records in the returned sample how many
  files newly failed while producing it (key `FAILURES_KEY`). A file that failed is never tried
  again, in this epoch or the next, so it is counted and reported once. When the failed files exceed
  ``max_failure_fraction`` of the split's files it raises `TooManyLoadFailures` naming them.
* `collate_with_failures(collate)` moves those per-sample counts out of the samples (so the
  dataset's own collate never sees the extra key) and into the batch as one integer.
* `vislang.shared.callbacks.LoadFailureMonitor`, a Lightning callback, sums the batches' counts and logs the running total
  as ``data/load_failures``.

Why counts travel inside the samples for the metric: DataLoader workers are separate processes,
so a counter on the dataset object in the main process never sees their failures; the batch is the
one channel every worker already sends back to the main process, under every start method, with
persistent or fresh workers, and under DDP on every rank. The threshold, on the other hand, must be
checked inside the worker that hits the failures (it has to stop the run even when the model never
reads the count); the failed files are a shared-memory bool tensor, one entry per file, so that every
worker sees every other worker's failed files (and never retries them) and compares the split-wide
count with the limit, without locks (entries only ever go from False to True).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from vislang.shared.data.resume import SampleKey, seeded

__all__ = [
    "FAILURES_KEY",
    "RobustDataset",
    "SampleLoadError",
    "TooManyLoadFailures",
    "collate_with_failures",
    "count_failures",
]

log = logging.getLogger(__name__)

FAILURES_KEY = "load_failures"
"""Key of the failure count in samples (added by `RobustDataset`) and batches (by the collate)."""

SEED_KEY = "_sample_key"
"""Key of a sample's `SampleKey` (added by `RobustDataset` for `ResumableSampler`'s items): the collate
runs seeded from its batch's keys, then drops them."""

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
    """Wraps a map-style dataset: samples whose file raises `SampleLoadError` are logged, counted per
    file and replaced by the next index whose file loads.

    Each returned sample that is a mapping gets ``sample[FAILURES_KEY]``: the number of files that
    newly failed while producing it (0 almost always; summed over a run, every bad file counts once).
    Other sample types are returned unchanged (their failures are still skipped, logged and counted
    towards the limit).

    Files: if the wrapped dataset has ``sample_file(index) -> str`` (the file an index reads, without
    reading it; a tuple of names for an item that reads several, as NLVR2's two images), failures are
    counted per file (the one the `SampleLoadError` names), an item that reads a file known to fail is
    never tried or used as a substitute, and the limit is judged on the number of distinct files.
    Otherwise every index is its own file.

    The limit: loading stops with `TooManyLoadFailures` as soon as more than
    ``max_failure_fraction`` of the split's files have failed (1 % by default: one bad video of 160
    goes on, two stop), whichever process finds them; the message names the first failing files.

    Args:
        dataset: the map-style dataset to protect; its ``__getitem__`` raises `SampleLoadError`
            for unreadable files and its other exceptions (bugs) propagate unchanged.
        max_failure_fraction: the tolerated fraction of failed files; 0 stops at the first failure.
        show: how many failing files the stopping error names.
    """

    def __init__(self, dataset: Dataset, max_failure_fraction: float = 0.01, show: int = 5) -> None:
        if not 0 <= max_failure_fraction <= 1:
            raise ValueError(f"max_failure_fraction must be in [0, 1], got {max_failure_fraction}")
        self.dataset = dataset
        self.max_failure_fraction = max_failure_fraction
        self.show = show
        size = len(dataset)  # type: ignore[arg-type]
        sample_file = getattr(dataset, "sample_file", None)
        if sample_file is None:
            self._file_of = torch.arange(size)[:, None]
            self._file_names: list[str] | None = None
        else:  # an item may read several files (NLVR2's two images): one row per item, -1 padded
            ids: dict[str, int] = {}
            rows = [[ids.setdefault(str(f), len(ids)) for f in _as_tuple(sample_file(i))] for i in range(size)]
            width = max((len(r) for r in rows), default=1)
            self._file_of = torch.tensor([r + [-1] * (width - len(r)) for r in rows]).reshape(size, width)
            self._file_names = list(ids)
        self.num_files = int(self._file_of.max()) + 1 if size else 0
        # shared memory survives fork and spawn alike, and persists across epochs when workers are re-created
        self._failed_files = torch.zeros(max(self.num_files, 1), dtype=torch.bool).share_memory_()
        self._loads = torch.zeros(_MAX_PROCESS_ROWS, dtype=torch.int64).share_memory_()  # per process
        self.failed: dict[str, str] = {}  # path -> reason, in order of first failure, this process

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # read-through to the wrapped dataset (e.g. `items`); guarded for unpickling
        if name.startswith("__") or name in ("dataset", "_file_of", "_file_names", "_failed_files", "_loads"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def total_loads(self) -> int:
        """Loads attempted by every process of this dataset so far."""
        return int(self._loads.sum())

    @property
    def total_failures(self) -> int:
        """Files that failed to load (all processes) so far; each counts once however often it is listed."""
        return int(self._failed_files.sum())

    def failed_files(self) -> set[str]:
        """The files that failed so far, in every process (indices as `#N` without `sample_file`)."""
        marked = self._failed_files[: self.num_files].nonzero().flatten().tolist()
        return {self._file_names[i] if self._file_names is not None else f"#{i}" for i in marked}

    def __getitem__(self, index: int | SampleKey) -> Any:
        if isinstance(index, SampleKey):  # from ResumableSampler: load with generators seeded by the key
            with seeded([index]):
                sample = self._load(index.index)
            if isinstance(sample, MutableMapping):
                sample[SEED_KEY] = index
            return sample
        return self._load(index)

    def _load(self, index: int) -> Any:
        size = len(self)
        row = self._row()
        failures = 0
        for attempt in range(size):
            current = (index + attempt) % size  # the next index: deterministic substitution
            files = [f for f in self._file_of[current].tolist() if f >= 0]
            if any(self._failed_files[f] for f in files):
                continue  # a file known to fail is never tried again, nor used as a substitute
            self._loads[row] += 1
            try:
                sample = self.dataset[current]
            except SampleLoadError as error:
                file = self._failing_file(files, error.path)
                if not self._failed_files[file]:
                    self._failed_files[file] = True
                    failures += 1
                self._record(error)
                continue
            if isinstance(sample, MutableMapping):
                sample[FAILURES_KEY] = failures
            return sample
        raise TooManyLoadFailures(self._message(f"no sample of {size} could be loaded"))

    def _failing_file(self, files: list[int], path: str) -> int:
        """Which of an item's files the error names (the first one when it names none of them)."""
        if self._file_names is not None:
            for file in files:
                if self._file_names[file] == path:
                    return file
        return files[0]

    def _row(self) -> int:
        info = get_worker_info()
        return 0 if info is None else 1 + info.id % (_MAX_PROCESS_ROWS - 1)

    def _record(self, error: SampleLoadError) -> None:
        if error.path not in self.failed:
            self.failed[error.path] = error.reason
            log.warning("skipping unreadable sample %s: %s", error.path, error.reason)
        if self.total_failures > self.max_failure_fraction * self.num_files:
            raise TooManyLoadFailures(self._message(f"more than {self.max_failure_fraction:.2%} of the split's files"))

    def _message(self, what: str) -> str:
        names = "; ".join(f"{path} ({reason})" for path, reason in list(self.failed.items())[: self.show])
        more = len(self.failed) - self.show
        tail = f"; and {more} more" if more > 0 else ""
        return (
            f"{self.total_failures} of {self.num_files} files failed to load ({what}); first failing files: "
            f"{names}{tail}; fix or remove them, or raise max_failure_fraction"
        )


def _as_tuple(files: Any) -> tuple[Any, ...]:
    return tuple(files) if isinstance(files, list | tuple) else (files,)


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
        keys = []
        for sample in samples:
            if isinstance(sample, Mapping) and (FAILURES_KEY in sample or SEED_KEY in sample):
                found = found or FAILURES_KEY in sample
                failures += int(sample.get(FAILURES_KEY, 0))
                if SEED_KEY in sample:
                    keys.append(sample[SEED_KEY])
                sample = {key: value for key, value in sample.items() if key not in (FAILURES_KEY, SEED_KEY)}
            stripped.append(sample)
        with seeded(keys) if keys else contextlib.nullcontext():  # random masks drawn in a collate replay too
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
