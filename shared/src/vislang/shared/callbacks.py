"""The callbacks every ``lightning`` run gets, and which a Python user adds to ``Trainer(callbacks=[...])``.

* `ExactResume` saves, with every checkpoint, where the training loaders were and the random
  generators' states, so a killed run resumes bit for bit (`vislang.shared.data.resume` explains how).
* `LoadFailureMonitor` logs how many files failed to load and were skipped (``data/load_failures``,
  ``data/val_load_failures``; `vislang.shared.data.robust` explains the counting).

`add_default_callbacks` is what the CLI calls on every trainer it builds: a config lists only the
callbacks particular to its run (checkpointing, a prediction writer, an evaluation), never these two.
The module imports Lightning; the dataset code that DataLoader workers run (``robust``, ``resume``,
``video``) does not import it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint

from vislang.shared.data.resume import ResumableSampler, rng_state, set_rng_state
from vislang.shared.data.robust import RobustDataset, count_failures

__all__ = ["ExactResume", "LoadFailureMonitor", "add_default_callbacks", "add_exact_resume"]


class ExactResume(Callback):
    """Saves with every checkpoint where the training loader was (epoch, batches consumed) and the
    random generators' states; on resume hands the position to the loaders (`resume_position`) and
    restores the generators just before the first training step."""

    def __init__(self) -> None:
        self.position = (0, 0)  # (epoch, batches of it consumed) as of the last finished batch
        self.pending: tuple[int, int] | None = None  # the position to resume from, until loaders are built
        self._rng: dict[str, Any] | None = None  # generator states to restore before the next step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = batch_idx + 1 >= trainer.num_training_batches  # the epoch's last batch: resume at the next
        self.position = (trainer.current_epoch + 1, 0) if done else (trainer.current_epoch, batch_idx + 1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.position = (trainer.current_epoch + 1, 0)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.pending is not None and _loaders_resumable(trainer.train_dataloader):
            # Lightning looks for a `state_dict` on the loader itself; ours resume through their sampler
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
        self.pending = None  # loaders rebuilt later (reload_dataloaders_every_n_epochs) start afresh

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None

    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self.position
        return {"epoch": epoch, "batches": batches, "rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.position = self.pending = (int(state_dict["epoch"]), int(state_dict["batches"]))
        self._rng = state_dict["rng"]


def _loaders_resumable(loaders: Any) -> bool:
    """Whether every training loader starts mid-epoch where the checkpoint was written; a loader that
    cannot would silently replay its epoch's beginning, so say so."""
    flat = getattr(loaders, "flattened", None) or (list(loaders.values()) if isinstance(loaders, dict) else [loaders])
    resumable = True
    for loader in flat:
        dataset = getattr(loader, "dataset", None)
        if not isinstance(getattr(loader, "sampler", None), ResumableSampler) and not hasattr(dataset, "skip_batches"):
            resumable = False
            warnings.warn(
                f"the training loader over {type(dataset).__name__} cannot resume mid-epoch (build it with "
                "vislang.shared.data.loaders.train_loader): this epoch restarts from its beginning",
                stacklevel=2,
            )
    return resumable


class LoadFailureMonitor(Callback):
    """Logs the running total of training files that failed to load as ``data/load_failures`` (and
    the validation loader's failed files as ``data/val_load_failures``, suffixed by Lightning with
    ``/dataloader_idx_N`` when there are several validation loaders): each bad file once, read from
    the `RobustDataset`s' shared marks (for other datasets, from the counts in the batches).

    Args:
        sync_dist: sum the totals over DDP ranks when logging (one all-reduce per step); by default
            each rank logs its own (rank 0's is what loggers record).
    """

    def __init__(self, sync_dist: bool = False) -> None:
        self.sync_dist = sync_dist
        self.total = 0
        self._resumed = 0  # the total of the run this one resumes (its datasets' marks are gone)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        datasets = _robust_datasets(trainer.train_dataloader)
        if datasets:  # exact: the distinct failed files every worker has marked, once across the tasks
            self.total = self._resumed + len(set().union(*(d.failed_files() for d in datasets)))
        else:
            self.total += count_failures(batch)
        pl_module.log(
            "data/load_failures",
            float(self.total),
            on_step=True,
            on_epoch=False,
            batch_size=1,
            sync_dist=self.sync_dist,
            reduce_fx="sum",
        )

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        datasets = _robust_datasets(trainer.val_dataloaders)
        if len(datasets) > dataloader_idx:  # exact: the loader's distinct failed files so far
            value, reduce = float(datasets[dataloader_idx].total_failures), "max"
        else:
            value, reduce = float(count_failures(batch)), "sum"
        pl_module.log(
            "data/val_load_failures",
            value,
            on_step=False,
            on_epoch=True,
            batch_size=1,
            sync_dist=self.sync_dist,
            reduce_fx=reduce,
        )

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total = self._resumed = int(state_dict.get("total", 0))


def _robust_datasets(loaders: Any) -> list[RobustDataset]:
    """The `RobustDataset`s behind a trainer's loaders: a DataLoader, or a list, dict or CombinedLoader of them."""
    if isinstance(getattr(loaders, "dataset", None), RobustDataset):
        return [loaders.dataset]
    nested = getattr(loaders, "flattened", None)
    if nested is None:
        nested = (
            loaders.values() if isinstance(loaders, Mapping) else loaders if isinstance(loaders, list | tuple) else []
        )
    return [dataset for item in nested for dataset in _robust_datasets(item)]


def add_exact_resume(trainer: Trainer) -> None:
    """Give ``trainer`` an `ExactResume` callback unless it has one (before its checkpoint callbacks,
    so the position it records is the one they save)."""
    callbacks = trainer.callbacks
    if any(isinstance(c, ExactResume) for c in callbacks):
        return
    first_checkpoint = next((i for i, c in enumerate(callbacks) if isinstance(c, Checkpoint)), len(callbacks))
    callbacks.insert(first_checkpoint, ExactResume())


def add_default_callbacks(trainer: Trainer) -> None:
    """Give ``trainer`` the callbacks every run has: `ExactResume` (before the checkpoint callbacks)
    and `LoadFailureMonitor` (unless the config lists one, e.g. with ``sync_dist: true``)."""
    add_exact_resume(trainer)
    if not any(isinstance(c, LoadFailureMonitor) for c in trainer.callbacks):
        trainer.callbacks.append(LoadFailureMonitor())
