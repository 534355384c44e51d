"""What the VQA entry pays for its features, measured in one run on this machine.

1. Extraction per image with the *trained* demo detector (the checkpoint ``python packages/vqa_ensemble/scripts/demo.py``
   wrote): wall time per image of region features (bottom-up rule) and full-resolution grid features, on the
   demo's own images, with the demo's settings.
2. Extraction per image for the full-size presets at 600 x 1000 px (the entry's ResNeXt-152 / -101 FPN
   detectors, bottom-up attention's ResNet-101 C4, grid-feats-vqa's X-152 C5): multiply-accumulate FLOPs
   counted on the meta device (no weights, no memory) with ``torch.utils.flop_counter``, component by component
   (backbone, RPN head, box head on the proposals, classifier; grid: the backbone, plus res5 for C4). NMS,
   RoIAlign and box decoding are not counted (no matmul / conv work). The total for the VQA v2 images
   (train2014 + val2014 + test2015: 82,783 + 40,504 + 81,434) follows.
3. Reading stored features back: random-access reads of one image's features from the memory-mapped
   ``FeatureStore`` against one ``.npy`` file per image (the common alternative), medians of interleaved
   repetitions after warm-up, so load from other processes hits both sides.

    python benchmarks/vqa_ensemble.py --demo demo_outputs/vqa_ensemble [--images 2000 --reads 500]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vislang.vqa_ensemble.convert import BOTTOM_UP_CAFFE_R101, GRID_FEATS, GRID_FEATS_COMMON
from vislang.vqa_ensemble.data import image_files, load_rgb
from vislang.vqa_ensemble.detector import GridFeatureExtractor, RegionFeatureExtractor, build_detector, c5_features
from vislang.vqa_ensemble.extract import load_detector
from vislang.vqa_ensemble.features import FeatureStore, ImageFeatures, write_store

H, W = 600, 1000
VQA_IMAGES = 82_783 + 40_504 + 81_434

PRESETS = {
    "entry X152-FPN (region, 1000 proposals)": dict(backbone="resnext152_32x8d", head="fpn", rpn_proposals=1000),
    "entry X101-FPN (region, 1000 proposals)": dict(backbone="resnext101_32x8d", head="fpn", rpn_proposals=1000),
    "bottom-up R101-C4 (region, 300 proposals)": dict(BOTTOM_UP_CAFFE_R101),
    "grid-feats X152-C5 (grid, full map)": {**GRID_FEATS_COMMON, **GRID_FEATS["X-152"]},
}


def _flops(fn) -> int:  # noqa: ANN001
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def preset_gflops(args: dict) -> tuple[float, float]:
    """(region, grid) GFLOPs of one 600 x 1000 image for a ``build_detector`` preset, on the meta device."""
    with torch.device("meta"):
        det = build_detector(**{**args, "num_classes": 1601}).eval()
        image = torch.empty(1, 3, H, W)
        features = det.backbone(image)
        maps = list(features.values()) if isinstance(features, dict) else [features]
        backbone = _flops(lambda: det.backbone(image))
        rpn = _flops(lambda: det.rpn.head(maps))
        proposals = det.rpn._post_nms_top_n["testing"]
        pool = det.roi_heads.box_roi_pool
        pooled = torch.empty(proposals, maps[0].shape[1], *pool.output_size)
        head = _flops(lambda: det.roi_heads.box_predictor(det.roi_heads.box_head(pooled)))
        grid = _flops(lambda: c5_features(det, image))
    return (backbone + rpn + head) / 2e9, grid / 2e9  # FLOPs -> multiply-accumulates, as papers quote GFLOPs


def _median_time(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def demo_extraction(demo: Path, count: int) -> dict[str, float]:
    """Seconds per image of the trained demo detector's region and grid extraction on the demo's val images."""
    ckpt = demo / "detector" / "demo" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise SystemExit(
            f"{ckpt}: no trained demo detector; run `python packages/vqa_ensemble/scripts/demo.py --out {demo}`"
        )
    detector, _ = load_detector(ckpt)
    detector.transform.min_size = (max(detector.transform.min_size),)  # as extract.py: the largest training scale
    images = [load_rgb(p) for _, p in image_files(demo / "vqa2" / "val2014")[:count]]
    out = {}
    for name, extractor in (
        ("region", RegionFeatureExtractor(detector, 10, 36)),
        ("grid", GridFeatureExtractor(detector, 0)),
    ):
        extractor(images[:2])  # warm-up
        out[name] = _median_time(lambda e=extractor: [e([im]) for im in images], 3) / len(images)
    return out


def store_reads(num_images: int, dim: int, boxes: int, reads: int, repeats: int) -> tuple[float, float]:
    """Seconds per random-access read: memory-mapped store, one .npy file per image."""
    rng = np.random.default_rng(0)
    spec = {"kind": "region", "feature_dim": dim, "max_boxes": boxes, "dtype": "float16"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = list(range(num_images))
        feats = rng.standard_normal((boxes, dim)).astype(np.float16)
        box = rng.random((boxes, 4), dtype=np.float32)
        write_store(
            root / "store",
            spec,
            ids,
            lambda chunk: (ImageFeatures(feats, box) for _ in chunk),
            shard_size=500,
            progress=False,
        )
        (root / "files").mkdir()
        for i in ids:
            np.save(root / "files" / f"{i}.npy", feats)
        store = FeatureStore(root / "store")
        order = rng.integers(0, num_images, reads).tolist()

        def read_store() -> None:
            for i in order:
                store[i].features.sum()

        def read_files() -> None:
            for i in order:
                np.load(root / "files" / f"{i}.npy").sum()

        read_store(), read_files()  # warm-up (page cache, lazily opened shards)
        t_store, t_files = [], []
        for _ in range(repeats):
            t_store.append(_median_time(read_store, 1))
            t_files.append(_median_time(read_files, 1))
    return statistics.median(t_store) / reads, statistics.median(t_files) / reads


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--demo", default="demo_outputs/vqa_ensemble", help="output folder of the demo (trained detector)")
    p.add_argument("--demo-images", type=int, default=40)
    p.add_argument("--images", type=int, default=2000, help="images in the read benchmark's stores")
    p.add_argument("--dim", type=int, default=2048, help="feature width in the read benchmark (bottom-up: 2048)")
    p.add_argument("--boxes", type=int, default=36)
    p.add_argument("--reads", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)

    demo = demo_extraction(Path(args.demo), args.demo_images)
    print(f"1. trained demo detector ({args.demo}), one thread, {args.demo_images} val images of 64 px:")
    print(f"   region features (bottom-up rule, 10-36 boxes) {demo['region'] * 1e3:8.2f} ms / image")
    print(f"   grid features (full C5 map)                   {demo['grid'] * 1e3:8.2f} ms / image")

    print(f"2. full-size presets at {H}x{W} px (GMACs per image, meta device; x {VQA_IMAGES:,} VQA v2 images):")
    for name, preset in PRESETS.items():
        region, grid = preset_gflops(preset)
        cost = grid if "grid" in name else region
        print(
            f"   {name:<44} {cost:8.1f} GMACs  ({cost * VQA_IMAGES / 1e6:6.1f} PMACs for VQA v2)"
            f"  [region {region:.1f}, grid {grid:.1f}]"
        )

    per_store, per_file = store_reads(args.images, args.dim, args.boxes, args.reads, args.repeats)
    print(f"3. reading back {args.boxes} x {args.dim} float16 per image, random access over {args.images} images:")
    print(f"   memory-mapped store {per_store * 1e6:8.1f} us / image")
    print(f"   one .npy per image  {per_file * 1e6:8.1f} us / image  -> store is {per_file / per_store:.2f}x")
    print(f"   the trained demo detector's region extraction takes {demo['region'] / per_store:,.0f}x a store read")


if __name__ == "__main__":
    main()
