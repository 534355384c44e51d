"""The files a member or the ensemble writes on ``validate`` / ``test`` / ``predict`` with ``results_dir``: the
EvalAI results file (``[{"question_id", "answer"}]``, every question of the split exactly once, written with
``vislang.shared.metrics.write_vqa_results``) and the metrics as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from lightning import Trainer

from vislang.shared.metrics.vqa import write_vqa_results
from vislang.shared.predictions import replace_text

__all__ = ["Stage", "split_question_ids", "write_metrics", "write_results"]

Stage = Literal["val", "test", "predict"]
"""What a results file answers: the validation split, or the test split (``test`` and ``predict``)."""


def split_question_ids(trainer: Trainer, stage: Stage) -> list[int] | None:
    """Question ids of the data module's split behind ``stage`` (val -> val, test / predict -> test).

    For ``val`` and ``test`` the questions about images that could not be read (skipped and counted by the
    loader's `RobustDataset`) are left out, so one bad image does not stop a run at its results file; a
    ``predict`` file (an EvalAI submission) must hold every question, and is refused without them.
    """
    dm = trainer.datamodule
    if dm is None:
        return None
    dataset = dm.splits["val" if stage == "val" else "test"]
    loaders = {"val": trainer.val_dataloaders, "test": trainer.test_dataloaders}.get(stage)
    failed = getattr(getattr(loaders, "dataset", None), "failed_files", set)()
    return [
        item.question_id for k, item in enumerate(dataset.items) if not failed or dataset.sample_file(k) not in failed
    ]


def write_results(predictions: dict[int, str], path: Path, question_ids: list[int] | None) -> None:
    """The official results file, written under a temporary name and renamed: a re-run replaces it, an
    interrupted run leaves the previous one whole. ``question_ids`` (the split's, not the questions
    collected) must all be answered: a question lost on the way (a dropped batch, a feature-store gap) stops
    here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    write_vqa_results(predictions, partial, question_ids=question_ids)
    os.replace(partial, path)


def write_metrics(path: Path, scores: dict[str, Any]) -> None:
    """The metrics (or the ensemble's report) as indented JSON, replacing an older file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, json.dumps(scores, indent=1))
