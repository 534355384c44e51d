"""One unreadable image among real photographs in an ImageNet folder: every CMAE loader (pre-training, probe,
fine-tuning) skips it, counts it once and never loads it again; the default limit stops a split where it is
more than 1 % of the files.

The photographs are scikit-image's bundled ones, saved as JPEGs in two class folders; one is emptied or
truncated.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vislang.cmae.data import CMAEClassificationDataModule, CMAEPretrainDataModule
from vislang.shared.data.robust import FAILURES_KEY, RobustDataset, TooManyLoadFailures

skdata = pytest.importorskip("skimage.data")

CLASSES = {"animal": ("chelsea", "cat", "coffee"), "thing": ("astronaut", "rocket", "camera")}


def _imagenet_folder(root: Path, broken: str) -> Path:
    """train/ and val/ with the photos (64 px) in their class folders; returns the broken training file."""
    for split in ("train", "val"):
        for label, names in CLASSES.items():
            (root / split / label).mkdir(parents=True)
            for name in names:
                image = Image.fromarray(getattr(skdata, name)())
                image.thumbnail((64, 64))
                image.save(root / split / label / f"{name}.JPEG", quality=90)
    bad = root / "train" / "animal" / "cat.JPEG"
    data = bad.read_bytes()
    bad.write_bytes(b"" if broken == "empty" else data[: len(data) // 4])
    return bad


def _epoch(loader: torch.utils.data.DataLoader) -> tuple[int, int]:
    """(failures counted in the batches, samples delivered)."""
    failures = samples = 0
    for batch in loader:
        failures += batch[FAILURES_KEY]
        samples += len(batch["index"])
    return failures, samples


@pytest.mark.parametrize("broken", ["empty", "truncated"])
def test_pretraining_and_probe_loaders_skip_the_bad_photo_once(tmp_path: Path, broken: str) -> None:
    bad = _imagenet_folder(tmp_path, broken)
    dm = CMAEPretrainDataModule(
        dataset="imagenet_folder",
        root=str(tmp_path),
        image_size=32,
        max_shift=4,
        batch_size=2,
        eval_batch_size=2,
        num_workers=0,
        max_failure_fraction=0.2,
    )
    dm.setup("fit")
    torch.manual_seed(0)
    for name, loader in [("train", dm.train_dataloader()), ("probe train", dm.probe_dataloaders()[0])]:
        robust = loader.dataset
        assert isinstance(robust, RobustDataset) and robust.num_files == 6, name
        for epoch in range(2):  # the second epoch neither retries nor recounts it
            failures, samples = _epoch(loader)
            assert failures == (1 if epoch == 0 else 0), (name, epoch)
            assert robust.failed_files() == {str(bad)}, name
        assert robust.total_loads == 2 * len(robust) + 1, name  # one attempt at the bad file, ever
    assert _epoch(dm.val_dataloader())[0] == 0  # the validation split's copy of the photo is intact


def test_fine_tuning_loader_skips_the_bad_photo_and_the_default_limit_stops(tmp_path: Path) -> None:
    bad = _imagenet_folder(tmp_path, "truncated")
    common = {
        "dataset": "imagenet_folder",
        "root": str(tmp_path),
        "image_size": 32,
        "auto_augment": None,
        "batch_size": 2,
        "eval_batch_size": 2,
        "num_workers": 0,
    }
    dm = CMAEClassificationDataModule(**common, max_failure_fraction=0.2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    failures, samples = _epoch(loader)
    assert failures == 1 and loader.dataset.failed_files() == {str(bad)}
    strict = CMAEClassificationDataModule(**common)  # 1 %: one bad file of six is too many
    strict.setup("fit")
    with pytest.raises(TooManyLoadFailures, match=r"1 of 6 files failed to load .*cat\.JPEG"):
        _epoch(strict.train_dataloader())
