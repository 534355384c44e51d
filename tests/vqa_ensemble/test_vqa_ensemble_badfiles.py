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
    return extract.main(
        [
            "--images",
            str(images),
            "--out",
            str(out),
            "--backbone",
            "resnet18",
            "--min-size",
            "32",
            "--max-size",
            "64",
            "--representation-size",
            "16",
            "--shard-size",
            "4",
            "--batch-size",
            "3",
            "--min-boxes",
            "2",
            "--max-boxes",
            "4",
            *extra,
        ]
    )


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

    items = [
        QAItem(100 * i + q, i, f"question {q}?", ("yes",) * 10, "yes/no", "yes/no", "vqa")
        for i in sorted(paths)
        for q in range(QUESTIONS)
    ]
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


def test_validation_with_an_image_that_failed_at_extraction_completes_and_counts_it(vqa_world, tmp_path, monkeypatch):
    """A member validated over a store where one val2014 image could not be read: the run completes, the
    image is counted once, and the results file holds every other question (not refused for the missing)."""
    import sys

    from vislang.shared.cli import build_cli
    from vislang.shared.data.vl import read_vqa_v2, vqa_v2_paths
    from vislang.shared.metrics.vqa import read_vqa_results
    from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR
    from vislang.vqa_ensemble.features import ImageFeatures, write_store

    monkeypatch.setattr(sys, "argv", ["lightning"])
    questions = read_vqa_v2(*vqa_v2_paths(vqa_world["root"], "val2014"))
    ids = sorted({q.image_id for q in questions})
    bad = ids[1]
    rng = np.random.default_rng(0)
    spec = {"kind": "region", "feature_dim": 12, "max_boxes": 6, "dtype": "float32"}

    def features(chunk):
        for i in chunk:
            yield (
                ImageFeatures.unreadable(f"val2014/{i}.jpg", "truncated")
                if i == bad
                else ImageFeatures(rng.standard_normal((3, 12), dtype=np.float32), np.full((3, 4), 0.5, np.float32))
            )

    store = write_store(
        tmp_path / "region_val", spec, ids, features, shard_size=5, progress=False, max_failure_fraction=0.5
    )
    region = [vqa_world["features"]["region"][0], str(store), vqa_world["features"]["region"][2]]
    out = tmp_path / "results"
    config = Path(__file__).resolve().parents[2] / "packages" / "vqa_ensemble" / "configs" / "demo.yaml"
    cli = build_cli(
        [
            "validate",
            "-c",
            str(config),
            f"--data.init_args.root={vqa_world['root']}",
            f"--data.init_args.features={{region: [{', '.join(region)}]}}",
            f"--data.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
            "--data.init_args.min_answer_count=2",
            "--data.init_args.heldout_fraction=0.0",
            "--data.init_args.eval_batch_size=4",
            "--data.init_args.max_failure_fraction=0.5",
            "--model.init_args.feature_set=region",
            f"--model.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
            f"--model.init_args.results_dir={out}",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks=[{class_path: vislang.shared.callbacks.LoadFailureMonitor}]",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert cli.trainer.callback_metrics["data/val_load_failures"].item() == 1
    kept = [q.question_id for q in questions if q.image_id != bad]
    assert len(kept) < len(questions)
    assert sorted(read_vqa_results(out / "val_results.json", question_ids=kept)) == sorted(kept)
