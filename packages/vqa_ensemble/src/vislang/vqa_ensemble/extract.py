"""Extract region or grid features of a folder of images into a feature store, once.

    python -m vislang.vqa_ensemble.extract --images data/vqa2/train2014 --out features/x152_region/train2014 \\
        --detector checkpoints/detector_x152.ckpt --kind region --min-boxes 10 --max-boxes 100 --dtype float16

Region features follow bottom-up attention (``detector.bottom_up_select``: one box per proposal, 10-100 by
confidence 0.2); grid features are the full-resolution C5 map with ``--grid-size 0`` (grid-feats-vqa).

Re-running the same command resumes: finished shards are kept, the unfinished one is redone. Running it
with other settings on an existing store stops with one line naming the differing field. The detector is a
``DetectorModule`` checkpoint (``lightning fit --config configs/detector_*.yaml``, or a published
bottom-up-attention / grid-feats-vqa model imported by ``python -m vislang.vqa_ensemble.convert``); ``--backbone`` without
``--detector`` builds an untrained detector (for tests and smoke runs only: its features are noise).
``--boxes ground_truth --instances <COCO instances json>`` pools features over given boxes instead of
detections (a demo / analysis option, never a VQA result: test images have no boxes).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vislang.shared.checkpoint import load_checkpoint, load_weights
from vislang.shared.data.robust import SampleLoadError, TooManyLoadFailures
from vislang.vqa_ensemble.data import image_files, load_rgb, read_coco_instances
from vislang.vqa_ensemble.detector import (
    BACKBONES,
    HEADS,
    GridFeatureExtractor,
    RegionFeatureExtractor,
    build_detector,
    detector_hparams,
)
from vislang.vqa_ensemble.features import ImageFeatures, write_store

__all__ = ["build_extractor", "extract_images", "main"]

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def load_detector(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A trained ``DetectorModule`` checkpoint -> (torchvision detector in eval mode, its build arguments)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: detector checkpoint not found")
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint:
        raise KeyError(f"{path}: no 'hyper_parameters': not a DetectorModule checkpoint")
    args = detector_hparams(dict(checkpoint["hyper_parameters"]))
    detector = build_detector(**args)
    load_weights(detector, path, prefix="detector.", strict=True)
    return detector.eval(), args


def _anchors(head: str) -> list[int]:
    return [8, 16, 32, 64, 128] if head == "fpn" else [16, 32, 64]


def build_extractor(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The extractor named by the command line and its spec (what the store records and checks)."""
    if args.detector:
        detector, build_args = load_detector(args.detector)
        weights = _sha256(Path(args.detector))
    else:
        torch.manual_seed(args.seed)
        build_args = {
            "backbone": args.backbone,
            "num_classes": args.num_classes,
            "min_size": args.min_size,
            "max_size": args.max_size,
            "representation_size": args.representation_size,
            "norm": "bn",
            "head": args.head,
            "anchor_sizes": _anchors(args.head),
        }
        detector = build_detector(**build_args).eval()
        weights = f"untrained-seed{args.seed}"
    spec: dict[str, Any] = {
        "kind": args.kind,
        "backbone": build_args["backbone"],
        "head": build_args.get("head", "fpn"),
        "detector_weights": weights,
        "min_size": list(build_args.get("min_size", [])),
        "max_size": build_args.get("max_size"),
        "dtype": args.dtype,
    }
    if args.kind == "region":
        extractor: torch.nn.Module = RegionFeatureExtractor(
            detector, args.min_boxes, args.max_boxes, args.score_threshold, args.nms_threshold
        )
        spec.update(
            box_source=args.boxes,
            min_boxes=args.min_boxes,
            max_boxes=args.max_boxes,
            score_threshold=args.score_threshold,
            nms_threshold=args.nms_threshold,
        )
    else:
        extractor = GridFeatureExtractor(detector, args.grid_size)
        # full resolution: at most ceil(shorter side / stride) x ceil(longer side / stride) cells
        stride = 16 if spec["head"] == "c5" else 32
        short, long = max(build_args.get("min_size", [800])), build_args.get("max_size", 1333)
        cells = args.grid_size**2 if args.grid_size else math.ceil(short / stride) * math.ceil(long / stride)
        spec.update(grid_size=args.grid_size, max_boxes=cells)
    spec["feature_dim"] = int(extractor.feature_dim)
    # At test time torchvision resizes to the largest training scale; extract at that one scale.
    detector.transform.min_size = (max(build_args.get("min_size", [800])),)
    return extractor.eval(), spec


def extract_images(
    extractor: torch.nn.Module,
    spec: dict[str, Any],
    images: Sequence[tuple[int, Path]],
    out: str | Path,
    shard_size: int = 1000,
    batch_size: int = 8,
    boxes: dict[int, np.ndarray] | None = None,
    progress: bool = True,
    max_failure_fraction: float = 0.01,
) -> Path:
    """Run ``extractor`` over ``images`` into the store at ``out`` (created, resumed or refused).

    An image file that cannot be read is logged, stored without features and recorded in the store (its
    questions are then skipped and counted by the training loader); more than ``max_failure_fraction`` of
    the images failing stops the extraction with a message naming them.
    """
    paths = dict(images)

    def extract(image_ids: Sequence[int]) -> Iterator[ImageFeatures]:
        for start in range(0, len(image_ids), batch_size):
            chunk = image_ids[start : start + batch_size]
            pixels, failures = {}, {}
            for i in chunk:
                try:
                    pixels[i] = load_rgb(paths[i])
                except SampleLoadError as error:
                    log.warning("skipping unreadable image %s: %s", error.path, error.reason)
                    failures[i] = ImageFeatures.unreadable(error.path, error.reason)
            readable = [i for i in chunk if i in pixels]
            given = None
            if boxes is not None:
                missing = [i for i in readable if i not in boxes or len(boxes[i]) == 0]
                if missing:
                    raise KeyError(f"--boxes ground_truth: no boxes for image {missing[0]} in --instances")
                given = [torch.from_numpy(boxes[i]) for i in readable]
            results = iter(extractor([pixels[i] for i in readable], given) if readable else ())
            for i in chunk:  # in the shard's order, unreadable images in their places
                if i in failures:
                    yield failures[i]
                    continue
                feats, b = next(results)
                yield ImageFeatures(feats.float().numpy(), b.float().numpy())

    return write_store(
        out,
        spec,
        [i for i, _ in images],
        extract,
        shard_size=shard_size,
        progress=progress,
        max_failure_fraction=max_failure_fraction,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vislang.vqa_ensemble.extract", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="folder of images; image id = trailing digits of the file name")
    p.add_argument("--out", required=True, help="feature store directory (created or resumed)")
    p.add_argument("--kind", choices=("region", "grid"), default="region")
    p.add_argument("--detector", help="DetectorModule checkpoint (.ckpt)")
    p.add_argument("--backbone", choices=BACKBONES, default="resnet18", help="untrained detector (no --detector)")
    p.add_argument("--head", choices=HEADS, default="fpn", help="untrained detector's layout (no --detector)")
    p.add_argument("--num-classes", type=int, default=6)
    p.add_argument("--min-size", type=int, nargs="+", default=[128])
    p.add_argument("--max-size", type=int, default=256)
    p.add_argument("--representation-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--boxes", choices=("detector", "ground_truth"), default="detector")
    p.add_argument("--instances", help="COCO instances JSON with the boxes (--boxes ground_truth)")
    p.add_argument("--min-boxes", type=int, default=10)
    p.add_argument("--max-boxes", type=int, default=100)
    p.add_argument("--score-threshold", type=float, default=0.2, help="bottom-up confidence threshold")
    p.add_argument("--nms-threshold", type=float, default=0.3, help="bottom-up per-class NMS over proposals")
    p.add_argument("--grid-size", type=int, default=0, help="0 = the full-resolution C5 map (grid-feats-vqa)")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument(
        "--max-failure-fraction",
        type=float,
        default=0.01,
        help="unreadable images are skipped and recorded; stop when more than this fraction fails",
    )
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    if args.boxes == "ground_truth" and (args.kind != "region" or not args.instances):
        raise SystemExit("--boxes ground_truth needs --kind region and --instances <COCO instances json>")
    images = image_files(args.images)
    if not images:
        raise SystemExit(f"{args.images}: no .jpg/.png images")
    extractor, spec = build_extractor(args)
    boxes = None
    if args.boxes == "ground_truth":
        boxes = {r["id"]: r["boxes"] for r in read_coco_instances(args.instances)}
    torch.set_grad_enabled(False)
    return extract_images(
        extractor,
        spec,
        images,
        args.out,
        args.shard_size,
        args.batch_size,
        boxes,
        max_failure_fraction=args.max_failure_fraction,
    )


if __name__ == "__main__":
    try:
        print(main())
    except (FileNotFoundError, KeyError, ValueError, TooManyLoadFailures) as error:
        sys.exit(f"error: {error}")
