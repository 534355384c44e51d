"""The feature store: exact round trip, resumable extraction, refusal of mismatched settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.synthetic.vl_writers import write_vqa_v2
from vislang.shared.data.synthetic.writers import split_indices, write_coco_instances
from vislang.vqa_ensemble import extract
from vislang.vqa_ensemble.features import FeatureStore, FeatureStoreMismatchError, ImageFeatures, write_store

SPEC = {"kind": "region", "backbone": "resnet18", "feature_dim": 5, "max_boxes": 4, "dtype": "float32"}


def _features(image_ids, dtype=np.float32):
    rng = np.random.default_rng(0)
    out = {}
    for i in image_ids:
        n = int(rng.integers(1, 5))
        out[i] = ImageFeatures(rng.standard_normal((n, 5)).astype(dtype), rng.random((n, 4), dtype=np.float32))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_store_round_trips_exactly(tmp_path: Path, dtype: str) -> None:
    ids = [7, 3, 1000001, 42, 5, 9, 11]
    truth = _features(ids, np.dtype(dtype))
    write_store(
        tmp_path, {**SPEC, "dtype": dtype}, ids, lambda chunk: (truth[i] for i in chunk), shard_size=3, progress=False
    )
    store = FeatureStore(tmp_path)
    assert store.image_ids == ids and len(store) == 7 and 42 in store and 8 not in store
    for i in ids:
        got = store[i]
        assert got.features.dtype == np.dtype(dtype)
        assert np.array_equal(got.features, truth[i].features) and np.array_equal(got.boxes, truth[i].boxes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_00000", "shard_00001", "shard_00002", "store.json"]
    with pytest.raises(KeyError, match="no features for image id 8"):
        store[8]


def test_interrupted_extraction_resumes_without_redoing_finished_shards(tmp_path: Path) -> None:
    ids = list(range(10))
    truth = _features(ids)
    calls: list[int] = []

    def crashing(chunk):
        for i in chunk:
            if i == 7:  # dies in the middle of the third shard
                raise KeyboardInterrupt
            calls.append(i)
            yield truth[i]

    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path, SPEC, ids, crashing, shard_size=3, progress=False)
    meta = json.loads((tmp_path / "store.json").read_text())
    assert meta["completed"] == [0, 1]
    assert not (tmp_path / "shard_00002").exists()  # the unfinished shard never appears under its name
    with pytest.raises(ValueError, match="incomplete store"):
        FeatureStore(tmp_path)
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "shard_00000").iterdir()}

    calls.clear()
    write_store(
        tmp_path, SPEC, ids, lambda chunk: (calls.append(i) or truth[i] for i in chunk), shard_size=3, progress=False
    )
    assert calls == [6, 7, 8, 9]  # shards 0 and 1 were not extracted again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "shard_00000").iterdir()} == finished
    store = FeatureStore(tmp_path)
    assert all(np.array_equal(store[i].features, truth[i].features) for i in ids)

    calls.clear()  # a third run over a complete store extracts nothing
    write_store(
        tmp_path, SPEC, ids, lambda chunk: (calls.append(i) or truth[i] for i in chunk), shard_size=3, progress=False
    )
    assert calls == []


def test_mismatched_store_is_refused_naming_the_field(tmp_path: Path) -> None:
    ids = [1, 2, 3]
    truth = _features(ids)
    write_store(tmp_path, SPEC, ids, lambda chunk: (truth[i] for i in chunk), shard_size=2, progress=False)
    with pytest.raises(FeatureStoreMismatchError, match=r"backbone='resnet18' but backbone='resnext152_32x8d'"):
        write_store(tmp_path, {**SPEC, "backbone": "resnext152_32x8d"}, ids, lambda c: iter(()), shard_size=2)
    with pytest.raises(FeatureStoreMismatchError, match="image_ids"):
        write_store(tmp_path, SPEC, [1, 2, 4], lambda c: iter(()), shard_size=2)
    with pytest.raises(FeatureStoreMismatchError, match="shard_size"):
        write_store(tmp_path, SPEC, ids, lambda c: iter(()), shard_size=3)
    with pytest.raises(FeatureStoreMismatchError, match="feature_dim"):
        FeatureStore(tmp_path, expected_spec={"feature_dim": 2048})


@pytest.fixture(scope="module")
def synthetic_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    world = SyntheticWorld(seed=1, image_size=32)
    write_vqa_v2(world, root, "val", split_indices("val", 5))
    write_coco_instances(world, root / "coco", "val", split_indices("val", 5), image_format="jpg")
    return root


def _cli(images: Path, out: Path, *extra: str) -> list[str]:
    return [
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
        "2",
        "--batch-size",
        "2",
        *extra,
    ]


def test_extraction_command_region_grid_and_ground_truth_boxes(synthetic_images: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = synthetic_images / "val2014"
    region = FeatureStore(extract.main(_cli(images, tmp_path / "region", "--min-boxes", "3", "--max-boxes", "5")))
    assert region.spec["kind"] == "region" and region.feature_dim == 16 and len(region) == 5
    for i in region.image_ids:
        f = region[i]
        assert 1 <= f.num_boxes <= 5 and f.features.shape == (f.num_boxes, 16) and np.isfinite(f.features).all()
        assert (f.boxes >= 0).all() and (f.boxes <= 1).all() and (f.boxes[:, 2:] >= f.boxes[:, :2]).all()
    grid = FeatureStore(extract.main(_cli(images, tmp_path / "grid", "--kind", "grid", "--grid-size", "2")))
    assert grid.feature_dim == 512 and all(grid[i].num_boxes == 1 for i in grid.image_ids)  # 32 px -> 1x1 C5

    # the same command again resumes (nothing to do); other settings are refused with the field's name
    before = (tmp_path / "region" / "shard_00000" / "features.npy").stat().st_mtime_ns
    extract.main(_cli(images, tmp_path / "region", "--min-boxes", "3", "--max-boxes", "5"))
    assert (tmp_path / "region" / "shard_00000" / "features.npy").stat().st_mtime_ns == before
    with pytest.raises(FeatureStoreMismatchError, match="max_boxes=5 but max_boxes=6"):
        extract.main(_cli(images, tmp_path / "region", "--min-boxes", "3", "--max-boxes", "6"))

    instances = synthetic_images / "coco" / "annotations" / "instances_val.json"
    gt = FeatureStore(
        extract.main(
            _cli(
                synthetic_images / "coco" / "images" / "val",
                tmp_path / "gt",
                "--boxes",
                "ground_truth",
                "--instances",
                str(instances),
            )
        )
    )
    anns = json.loads(instances.read_text())["annotations"]
    for i in gt.image_ids:
        assert gt[i].num_boxes == sum(a["image_id"] == i for a in anns)
