"""VQA-ensemble feature-store claims, measured in one run on this machine.

1. Reading stored features vs extracting them on the fly: random-access reads of one image's region
   features from a memory-mapped ``FeatureStore`` against running the region extractor (Faster R-CNN + FPN,
   RoIAlign, box head) on that image. The point of extracting once: training epochs read, never re-extract.
2. The sharded memory-mapped store against the common alternative of one ``.npy`` file per image, for
   random-access reads (the DataLoader's access pattern). Target: >= 1x (no slower).

Times are medians of interleaved repetitions after warm-up, so load from other processes hits both sides.

    python benchmarks/vqa_ensemble.py [--images 2000] [--dim 1024] [--boxes 36]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vislang.vqa_ensemble.detector import RegionFeatureExtractor, build_detector
from vislang.vqa_ensemble.features import FeatureStore, ImageFeatures, write_store


def _median_time(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--boxes", type=int, default=36)
    p.add_argument("--reads", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    spec = {"kind": "region", "feature_dim": args.dim, "max_boxes": args.boxes, "dtype": "float16"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = list(range(args.images))
        feats = rng.standard_normal((args.boxes, args.dim)).astype(np.float16)
        boxes = rng.random((args.boxes, 4), dtype=np.float32)
        write_store(root / "store", spec, ids, lambda chunk: (ImageFeatures(feats, boxes) for _ in chunk),
                    shard_size=500, progress=False)  # fmt: skip
        (root / "files").mkdir()
        for i in ids:
            np.save(root / "files" / f"{i}.npy", feats)
        store = FeatureStore(root / "store")
        order = rng.integers(0, args.images, args.reads).tolist()

        def read_store() -> None:
            for i in order:
                store[i].features.sum()

        def read_files() -> None:
            for i in order:
                np.load(root / "files" / f"{i}.npy").sum()

        read_store(), read_files()  # warm-up (page cache, lazily opened shards)
        t_store, t_files = [], []
        for _ in range(args.repeats):
            t_store.append(_median_time(read_store, 1))
            t_files.append(_median_time(read_files, 1))
        per_read_store = statistics.median(t_store) / args.reads
        per_read_files = statistics.median(t_files) / args.reads

    detector = build_detector("resnet50", 1601, [600], 1000, representation_size=args.dim, rpn_proposals=300).eval()
    extractor = RegionFeatureExtractor(detector, 10, args.boxes, 0.2)
    image = [torch.rand(3, 480, 640)]
    extractor(image)  # warm-up
    per_extract = _median_time(lambda: extractor(image), 3)

    print(f"store read        {per_read_store * 1e6:9.1f} us / image  ({args.boxes} x {args.dim} float16)")
    print(
        f"per-image .npy    {per_read_files * 1e6:9.1f} us / image  -> store is {per_read_files / per_read_store:.2f}x"
    )
    print(f"R50-FPN extraction {per_extract * 1e3:8.1f} ms / image (480x640, 1 thread) -> reading is "
          f"{per_extract / per_read_store:,.0f}x faster than re-extracting")  # fmt: skip


if __name__ == "__main__":
    main()
