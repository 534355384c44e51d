"""One unreadable image among real photographs: feature extraction records and skips it, the VQA questions about
it are skipped and counted once (never standing in for each other), the detector's loader skips it too.

The photographs are scikit-image's bundled ones, saved as COCO-named JPEGs; one is emptied or truncated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislang.shared.data.robust import FAILURES_KEY, RobustDataset, SampleLoadError, TooManyLoadFailures
from vislang.vqa_ensemble import extract
from vislang.vqa_ensemble.data import QAItem, VQAFeatureDataset, _DetectionDataset, read_coco_instances
from vislang.vqa_ensemble.features import FeatureStore

skdata = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")
QUESTIONS = 3


def _photos(folder: Path, broken: dict[int, str]) -> dict[int, Path]:
    """COCO-named JPEGs of the photos, shrunk to 64 px (image id = position + 1); `broken`: id -> empty/truncated."""
    folder.mkdir(parents=True)
    paths = {}
    for k, name in enumerate(PHOTOS):
        image = Image.fromarray(getattr(skdata, name)())
        image.thumbnail((64, 64))
        path = folder / f"COCO_val2014_{k + 1:012d}.jpg"
        image.save(path, quality=90)
        if k + 1 in broken:
            data = path.read_bytes()
            path.write_bytes(b"" if broken[k + 1] == "empty" else data[: len(data) // 4])
        paths[k + 1] = path
    return paths


def _extract(images: Path, out: Path, *extra: str) -> Path:
    torch.manual_seed(0)
    return extract.main(["--images", str(images), "--out", str(out), "--backbone", "resnet18", "--min-size", "32",
                         "--max-size", "64", "--representation-size", "16", "--shard-size", "4", "--batch-size", "3",
                         "--min-boxes", "2", "--max-boxes", "4", *extra])  # fmt: skip


@pytest.mark.parametrize("broken", ["empty", "truncated"])
def test_extraction_records_the_bad_photo_and_the_questions_skip_it_once(tmp_path: Path, broken: str) -> None:
    bad_id = 3
    paths = _photos(tmp_path / "val2014", {bad_id: broken})
    store = FeatureStore(_extract(tmp_path / "val2014", tmp_path / "store", "--max-failure-fraction", "0.2"))
    assert set(store.failed) == {bad_id} and store.failed[bad_id]["file"] == str(paths[bad_id])
    for image_id in store.image_ids:
        if image_id != bad_id:  # the others, in the same batch and shard, have their features
            assert 2 <= store[image_id].num_boxes <= 4 and np.isfinite(store[image_id].features).all()
    with pytest.raises(SampleLoadError, match="unreadable at feature extraction"):
        store[bad_id]

    items = [QAItem(100 * i + q, i, f"question {q}?", ("yes",) * 10, "yes/no", "yes/no", "vqa")
             for i in sorted(paths) for q in range(QUESTIONS)]  # fmt: skip
    dataset = VQAFeatureDataset(items, {"vqa": {"region": {i: store for i in store.image_ids}}})
    robust = RobustDataset(dataset, max_failure_fraction=0.2)
    assert robust.num_files == len(PHOTOS)
    samples = [robust[i] for i in range(len(robust))]  # one epoch in order
    assert sum(s[FAILURES_KEY] for s in samples) == 1 and robust.total_failures == 1
    assert all(s["item"].image_id != bad_id for s in samples)
    assert robust.total_loads == len(robust) + 1  # the bad image was read once


def test_extraction_stops_past_the_failure_fraction(tmp_path: Path) -> None:
    paths = _photos(tmp_path / "val2014", {2: "empty", 5: "truncated"})
    with pytest.raises(TooManyLoadFailures, match=r"2 of 6 images could not be read .*" + paths[2].name):
        _extract(tmp_path / "val2014", tmp_path / "store", "--max-failure-fraction", "0.2")


def test_detector_loader_skips_the_bad_photo_once(tmp_path: Path) -> None:
    bad_id = 4
    paths = _photos(tmp_path / "images", {bad_id: "truncated"})
    instances = {
        "images": [{"id": i, "file_name": p.name} for i, p in paths.items()],
        "annotations": [{"id": i, "image_id": i, "bbox": [2, 2, 20, 20], "category_id": 1} for i in paths],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    dataset = _DetectionDataset(read_coco_instances(tmp_path / "instances.json"), tmp_path / "images", hflip=False)
    robust = RobustDataset(dataset, max_failure_fraction=0.2)
    images = [robust[i]["image"] for i in range(len(robust))]
    assert robust.failed_files() == {str(paths[bad_id])} and robust.total_loads == len(robust) + 1
    assert all(x.shape[0] == 3 and float(x.min()) >= 0 and float(x.max()) <= 1 for x in images)
