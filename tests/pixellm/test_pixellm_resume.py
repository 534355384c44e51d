"""The PixelLM demo, shrunk to about a minute, killed with SIGKILL and resumed with `--ckpt_path last`, ends
with the weights and optimiser state of the run that was never stopped, bit for bit (the weighted draw
over the dataset mixture, the sem-seg class picks and the model's random stream included)."""

from __future__ import annotations

from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "packages/pixellm/configs/demo.yaml"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three runs of a shrunk demo; minutes each on a busy machine
@pytest.mark.parametrize("kill", [{"step": 7}, {"epoch": 1}], ids=["mid-epoch", "epoch-boundary"])
def test_killed_and_resumed_demo_equals_the_uninterrupted_one(kill: dict, tmp_path: Path, check_exact_resume) -> None:
    args = [
        f"--data.init_args.muse_root={tmp_path / 'muse'}",
        "--data.init_args.synthetic_images=60",
        "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=1",
        "--model.init_args.evaluate_before_training=false",
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
    ]
    check_exact_resume(DEMO, args, tmp_path, kill)
