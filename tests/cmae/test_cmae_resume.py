"""The CMAE demo's pre-training, shrunk to about a minute, killed with SIGKILL and resumed with
`--ckpt_path last`, ends with the weights (online and momentum target encoders) and optimiser state of the
run that was never stopped, bit for bit (the pixel shift, crops and masks included)."""

from __future__ import annotations

from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "packages/cmae/configs/demo.yaml"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three runs of a shrunk demo; minutes each on a busy machine
@pytest.mark.parametrize("kill", [{"step": 4}, {"epoch": 1}], ids=["mid-epoch", "epoch-boundary"])
def test_killed_and_resumed_demo_equals_the_uninterrupted_one(kill: dict, tmp_path: Path, check_exact_resume) -> None:
    args = [
        f"--data.init_args.root={tmp_path / 'imagenet'}",
        "--data.init_args.synthetic_samples=256",
        "--data.init_args.batch_size=32",
        "--data.init_args.num_workers=1",
        "--trainer.max_epochs=2",
        "--trainer.check_val_every_n_epoch=100",
        "--trainer.enable_progress_bar=false",
    ]
    check_exact_resume(DEMO, args, tmp_path, kill)
