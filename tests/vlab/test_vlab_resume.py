"""The VLAB demo, shrunk to about a minute, killed with SIGKILL and resumed with `--ckpt_path last`, ends
with the weights and optimiser state of the run that was never stopped, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "packages/vlab/configs/demo.yaml"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three runs of a shrunk demo; minutes each on a busy machine
@pytest.mark.parametrize(
    ("kill", "workers"),
    [({"step": 5}, 0), ({"step": 40}, 1), ({"epoch": 1}, 1)],
    ids=["mid-epoch", "mid-epoch-with-a-worker", "epoch-boundary"],
)
def test_killed_and_resumed_demo_equals_the_uninterrupted_one(
    kill: dict, workers: int, tmp_path: Path, check_exact_resume
) -> None:
    args = [
        f"--data.init_args.root={tmp_path / 'msrvtt'}",
        "--data.init_args.synthetic_videos=60",
        "--data.init_args.batch_size=8",
        f"--data.init_args.num_workers={workers}",
        "--trainer.max_epochs=2",  # 35 steps an epoch
        "--trainer.enable_progress_bar=false",
    ]
    check_exact_resume(DEMO, args, tmp_path, kill)
