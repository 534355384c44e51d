"""A callback for the exact-resume tests: kills its own process with SIGKILL (no clean-up, as a
pre-empted node dies) at the start of a given global step or epoch. Imported by `lightning` runs in
subprocesses (the test puts this folder on PYTHONPATH)."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class KillAt(Callback):
    """SIGKILL at the start of optimiser step ``step`` (the checkpoints of the steps before are on
    disk) or at the start of epoch ``epoch``; ``None`` never kills."""

    def __init__(self, step: int | None = None, epoch: int | None = None) -> None:
        self.step, self.epoch = step, epoch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.step is not None and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
