"""Fixtures of the VQA-ensemble tests: a small synthetic VQA v2 root with random-feature stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.synthetic.vl_writers import write_vqa_v2
from vislang.shared.data.synthetic.writers import split_indices
from vislang.shared.data.vl import read_vqa_v2, vqa_v2_paths
from vislang.vqa_ensemble.features import ImageFeatures, write_store

SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015"}


def random_store(root: Path, image_ids: list[int], dim: int, max_boxes: int, kind: str, seed: int = 0) -> Path:
    """A store of random features (variable box counts), as the extractor would write it."""
    rng = np.random.default_rng(seed)
    spec = {"kind": kind, "feature_dim": dim, "max_boxes": max_boxes, "dtype": "float32"}

    def extract(ids):
        for _ in ids:
            n = int(rng.integers(1, max_boxes + 1))
            boxes = np.sort(rng.random((n, 4), dtype=np.float32).reshape(n, 2, 2), axis=1).reshape(n, 4)
            yield ImageFeatures(rng.standard_normal((n, dim), dtype=np.float32), boxes)

    return write_store(root, spec, image_ids, extract, shard_size=5, progress=False)


@pytest.fixture(scope="session")
def vqa_world(tmp_path_factory) -> dict[str, object]:
    """VQA v2 train2014 (12 images), val2014 (8), test2015 (4) + region (dim 12) and grid (dim 8) stores."""
    root = tmp_path_factory.mktemp("vqa2")
    world = SyntheticWorld(seed=3, image_size=32)
    sizes = {"train": 12, "val": 8, "test": 4}
    stores: dict[str, list[str]] = {"region": [], "grid": []}
    for split, n in sizes.items():
        write_vqa_v2(world, root, split, split_indices(split, n))
        ids = sorted({e.image_id for e in read_vqa_v2(*vqa_v2_paths(root, SUBTYPES[split]))})
        stores["region"].append(str(random_store(root / "features" / "region" / split, ids, 12, 6, "region")))
        stores["grid"].append(str(random_store(root / "features" / "grid" / split, ids, 8, 4, "grid", seed=1)))
    return {"root": root, "features": stores}
