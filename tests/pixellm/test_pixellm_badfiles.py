"""One unreadable image among real photographs: skipped, counted once, never replaced by a question about itself.

The photographs are scikit-image's bundled ones (JPEG, as COCO's), each asked three MUSE questions; one file
is emptied or truncated. Every loader of the data module (training mixture, validation, test) goes through
`RobustDataset` with the image as the unit (`sample_file`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vislang.pixellm.data import MuseDataset, PixelLMDataModule
from vislang.shared.data.robust import FAILURES_KEY, RobustDataset

skdata = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")
QUESTIONS = 3


def _write_muse(root: Path, broken: str) -> tuple[Path, Path]:
    """A MUSE JSON over the photos (one box target per question) and the path of the broken one."""
    (root / "images").mkdir(parents=True)
    records = []
    for number, name in enumerate(PHOTOS):
        photo = getattr(skdata, name)()
        Image.fromarray(photo).save(root / "images" / f"{name}.jpg", quality=90)
        h, w = photo.shape[:2]
        box = [w * 0.25, h * 0.25, w * 0.75, h * 0.25, w * 0.75, h * 0.75, w * 0.25, h * 0.75]
        target = {"category_name": "thing", "rephrased_name": "the thing", "segmentation": [box]}
        records.append(
            {
                "id": number,
                "file_name": f"{name}.jpg",
                "height": h,
                "width": w,
                "questions": [f"question {q} about {name}" for q in range(QUESTIONS)],
                "answers": [[target]] * QUESTIONS,
            }
        )
    path = root / "muse_split.json"
    path.write_text(json.dumps(records))
    bad = root / "images" / f"{PHOTOS[2]}.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"" if broken == "empty" else data[: len(data) // 4])
    return path, bad


@pytest.mark.parametrize("broken", ["empty", "truncated"])
def test_one_bad_photo_is_skipped_counted_once_and_never_its_own_stand_in(tmp_path: Path, broken: str) -> None:
    path, bad = _write_muse(tmp_path, broken)
    dataset = MuseDataset(path, tmp_path / "images", image_size=64, patch_size=8, image_layout="flat")
    robust = RobustDataset(dataset)  # the default 1 %: one bad file of 6 is over it only for the whole split
    robust.max_failure_fraction = 0.2
    assert robust.num_files == len(PHOTOS) and len(robust) == len(PHOTOS) * QUESTIONS
    samples = [robust[i] for i in range(len(robust))]  # one epoch in order
    assert sum(s[FAILURES_KEY] for s in samples) == 1  # once, not once per question
    assert robust.total_failures == 1 and robust.failed_files() == {str(bad)}
    assert all(s["image_path"] != str(bad) for s in samples)
    # the bad file was opened once: every index loads one good item, plus the one failed attempt
    assert robust.total_loads == len(robust) + 1
    good = {i for i in range(len(robust)) if dataset.sample_file(i) != str(bad)}
    assert {s["index"] for s in samples} == good


def test_every_loader_of_the_data_module_skips_the_bad_photo(tmp_path: Path) -> None:
    path, bad = _write_muse(tmp_path, "truncated")
    dm = PixelLMDataModule(
        muse_root=str(tmp_path),
        muse_image_dir="images",
        muse_image_layout="flat",
        muse_train=path.name,
        muse_val=[path.name],
        muse_test=[path.name],
        image_size=64,
        patch_size=8,
        batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        samples_per_epoch=72,
        max_failure_fraction=0.2,
    )  # the split is 6 files: one bad one is 17 %, over 1 %
    dm.setup("fit")
    dm.setup("test")
    loaders = {"train": [dm.train_dataloader()], "val": dm.val_dataloader(), "test": dm.test_dataloader()}
    torch.manual_seed(0)
    for stage, group in loaders.items():
        for loader in group:
            robust = loader.dataset
            assert isinstance(robust, RobustDataset) and robust.num_files == len(PHOTOS), stage
            assert robust.max_failure_fraction == 0.2, stage
            counted, paths = 0, set()
            for batch in loader:
                counted += batch[FAILURES_KEY]
                paths |= set(batch["image_path"])
            assert counted == 1 and robust.failed_files() == {str(bad)}, stage
            assert str(bad) not in paths and len(paths) == len(PHOTOS) - 1, stage


def test_the_default_limit_stops_a_split_where_one_photo_of_six_fails(tmp_path: Path) -> None:
    from vislang.shared.data.robust import TooManyLoadFailures

    path, bad = _write_muse(tmp_path, "empty")
    robust = RobustDataset(MuseDataset(path, tmp_path / "images", image_size=64, patch_size=8, image_layout="flat"))
    with pytest.raises(TooManyLoadFailures, match=r"1 of 6 files failed to load .*" + bad.name):
        for i in range(len(robust)):
            robust[i]


def test_a_training_run_with_the_bad_photo_completes_and_reports_it_once(tmp_path: Path, monkeypatch) -> None:
    import sys

    from vislang.shared.cli import build_cli

    monkeypatch.setattr(sys, "argv", ["lightning"])
    path, bad = _write_muse(tmp_path, "empty")
    demo = Path(__file__).resolve().parents[2] / "packages" / "pixellm" / "configs" / "demo.yaml"
    cli = build_cli(
        [
            "fit",
            "-c",
            str(demo),
            f"--data.init_args.muse_root={tmp_path}",
            "--data.init_args.muse_image_dir=images",
            f"--data.init_args.muse_train={path.name}",
            f"--data.init_args.muse_val=[{path.name}]",
            "--data.init_args.synthetic_images=0",
            "--data.init_args.samples_per_epoch=16",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--data.init_args.max_failure_fraction=0.2",
            "--model.init_args.max_new_tokens=4",
            "--model.init_args.evaluate_before_training=false",
            "--trainer.max_epochs=2",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.limit_val_batches=2",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks=[{class_path: vislang.shared.callbacks.LoadFailureMonitor}]",
        ]
    )
    assert cli.trainer.state.finished and cli.trainer.current_epoch == 2
    assert cli.trainer.callback_metrics["data/load_failures"].item() == 1
    assert cli.trainer.train_dataloader.dataset.failed_files() == {str(bad)}
