"""The SOHO demo (the single-stream core Pixel-BERT shares), shrunk to about a minute — one epoch per phase:
pre-training, retrieval, VQA — killed with SIGKILL and resumed with `--ckpt_path last`, ends with the weights,
visual dictionary and optimiser state of the run that was never stopped, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "packages/soho/configs/demo.yaml"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three runs of a shrunk demo; minutes each on a busy machine
@pytest.mark.parametrize("kill", [{"step": 6}, {"epoch": 2}], ids=["mid-epoch", "phase-boundary"])
def test_killed_and_resumed_demo_equals_the_uninterrupted_one(kill: dict, tmp_path: Path, check_exact_resume) -> None:
    args = [
        f"--data.init_args.root={tmp_path / 'data'}",
        "--data.init_args.synthetic_images=80",
        "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=1",
        "--data.init_args.task_epochs=[1]",
        "--trainer.max_epochs=3",
        "--trainer.enable_progress_bar=false",
    ]
    check_exact_resume(DEMO, args, tmp_path, kill)
