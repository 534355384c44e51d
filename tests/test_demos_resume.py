"""Each demo, shrunk to a minute or two, killed with SIGKILL and resumed with `--ckpt_path last`, ends with the
weights (EMA/target encoders, SOHO's visual dictionary included) and optimiser state of the run that was never
stopped, bit for bit: killed mid-epoch and at an epoch (SOHO: training-phase) boundary, with and without a
loader worker. The single-stream core is exercised through SOHO's demo (Pixel-BERT shares it)."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parents[1] / "packages"

SHRUNK = {  # the demo's own config with fewer samples, smaller batches and fewer epochs
    "vlab": lambda tmp: [
        f"--data.init_args.root={tmp / 'msrvtt'}",
        "--data.init_args.synthetic_videos=60",
        "--data.init_args.batch_size=8",
        "--trainer.max_epochs=2",
    ],  # 35 steps an epoch
    "cmae": lambda tmp: [
        f"--data.init_args.root={tmp / 'imagenet'}",
        "--data.init_args.synthetic_samples=256",
        "--data.init_args.batch_size=32",
        "--trainer.max_epochs=2",
        "--trainer.check_val_every_n_epoch=100",
    ],  # 8 steps an epoch
    "pixellm": lambda tmp: [
        f"--data.init_args.muse_root={tmp / 'muse'}",
        "--data.init_args.synthetic_images=60",
        "--data.init_args.batch_size=8",
        "--model.init_args.evaluate_before_training=false",
        "--trainer.max_epochs=2",
    ],
    "soho": lambda tmp: [
        f"--data.init_args.root={tmp / 'data'}",
        "--data.init_args.synthetic_images=80",
        "--data.init_args.batch_size=8",
        "--data.init_args.task_epochs=[1]",
        "--trainer.max_epochs=3",
    ],  # pre-training, retrieval, VQA: one epoch each
}


def _ids(value: object) -> str | None:
    return "-".join(f"{k}{v}" for k, v in value.items()) if isinstance(value, dict) else None


CASES = [
    ("vlab", {"step": 5}, 0),
    ("vlab", {"step": 40}, 1),
    ("vlab", {"epoch": 1}, 1),
    ("cmae", {"step": 4}, 1),
    ("cmae", {"epoch": 1}, 1),
    ("pixellm", {"step": 7}, 1),
    ("pixellm", {"epoch": 1}, 1),
    ("soho", {"step": 6}, 1),
    pytest.param(
        "soho",
        {"epoch": 2},
        1,
        marks=pytest.mark.xfail(
            strict=True,
            reason=(
                "known: a checkpoint written at the last batch of an epoch, resumed into a reloaded loader of another "
                "length (SOHO's next phase), is taken by Lightning's loop as mid-epoch: the resumed run trains only "
                "the last 3 of the VQA epoch's 28 batches (measured; see the README's exact-resume note)"
            ),
        ),
    ),
]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three runs of a shrunk demo: minutes each on a busy machine
@pytest.mark.parametrize(("package", "kill", "workers"), CASES, ids=_ids)
def test_killed_and_resumed_demo_equals_the_uninterrupted_one(
    package: str, kill: dict, workers: int, tmp_path: Path, check_exact_resume
) -> None:
    args = [
        *SHRUNK[package](tmp_path),
        f"--data.init_args.num_workers={workers}",
        "--trainer.enable_progress_bar=false",
    ]
    check_exact_resume(PACKAGES / package / "configs" / "demo.yaml", args, tmp_path, kill)
