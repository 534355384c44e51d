"""SOHO / Pixel-BERT data: one unreadable image among real photographs is skipped and counted once by the
training and evaluation loaders of every task whose items share images (captions, VQA questions, SNLI-VE
hypotheses), and no item of that image ever stands in for another.

The photographs are scikit-image's bundled ones (JPEG); one is emptied or truncated.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vislang.shared.data.loaders import eval_loader, train_loader
from vislang.shared.data.robust import FAILURES_KEY, RobustDataset
from vislang.shared.data.vl import CaptionedImage, EntailmentExample, VQAExample
from vislang.singlestream.data import (
    CaptionPairDataset,
    EntailmentDataset,
    ImageTransform,
    VQADataset,
    collate,
)

skdata = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")
PER_IMAGE = 3


def _photos(folder: Path, broken: str) -> tuple[list[Path], Path]:
    folder.mkdir(parents=True)
    paths = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(skdata, name)())
        image.thumbnail((48, 48))
        image.save(folder / f"{name}.jpg", quality=90)
        paths.append(folder / f"{name}.jpg")
    bad = paths[1]
    data = bad.read_bytes()
    bad.write_bytes(b"" if broken == "empty" else data[: len(data) // 4])
    return paths, bad


def _datasets(paths: list[Path]) -> dict[str, torch.utils.data.Dataset]:
    transform = ImageTransform(32, 32)
    captioned = [
        CaptionedImage(k, p, tuple(f"caption {c} of {p.stem}" for c in range(PER_IMAGE)), "train")
        for k, p in enumerate(paths)
    ]
    questions = [
        VQAExample(10 * k + q, k, p, f"question {q}?", ("yes",) * 10, "yes", "is", "yes/no")
        for k, p in enumerate(paths)
        for q in range(PER_IMAGE)
    ]
    hypotheses = [
        EntailmentExample(f"{k}-{h}", p, f"hypothesis {h}", "entailment")
        for k, p in enumerate(paths)
        for h in range(PER_IMAGE)
    ]
    return {
        "pretrain": CaptionPairDataset(captioned, transform),
        "vqa": VQADataset(questions, transform, ["yes", "no"]),
        "snli_ve": EntailmentDataset(hypotheses, transform),
    }


@pytest.mark.parametrize("broken", ["empty", "truncated"])
def test_one_bad_photo_is_counted_once_per_split_and_never_stands_in(tmp_path: Path, broken: str) -> None:
    paths, bad = _photos(tmp_path / "images", broken)
    # the loaders SingleStreamDataModule builds: its train and evaluation loaders of batch 4, 20 % tolerated
    options = {"collate": collate, "num_workers": 0, "max_failure_fraction": 0.2}
    torch.manual_seed(0)
    for task, dataset in _datasets(paths).items():
        for train in (True, False):
            if train:
                loader = train_loader(dataset, 4, None, persistent_workers=False, **options)
            else:
                loader = eval_loader(dataset, 4, **options)
            robust = loader.dataset
            assert isinstance(robust, RobustDataset) and robust.num_files == len(PHOTOS), task
            counted = delivered = 0
            for batch in loader:
                counted += batch[FAILURES_KEY]
                delivered += len(batch["index"])
                items = batch["index"].tolist()
                assert all(dataset.sample_file(i) != str(bad) for i in items), (task, train)
            assert counted == 1 and robust.failed_files() == {str(bad)}, (task, train)
            assert robust.total_loads == delivered + 1, (task, train)  # the bad photo was opened once
