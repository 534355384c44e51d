"""The feature detector: torchvision Faster R-CNN + FPN presets, multi-scale training, checkpoint -> extractor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vislang.shared.cli import build_cli
from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.synthetic.writers import split_indices, write_coco_instances
from vislang.vqa_ensemble import extract
from vislang.vqa_ensemble.data import image_files, load_rgb
from vislang.vqa_ensemble.detector import (
    GridFeatureExtractor,
    RegionFeatureExtractor,
    bottom_up_select,
    build_detector,
    select_boxes,
)
from vislang.vqa_ensemble.features import FeatureStore

CONFIGS = Path(__file__).resolve().parents[2] / "packages" / "vqa_ensemble" / "configs"


def test_bottom_up_box_rule() -> None:
    scores = torch.tensor([0.9, 0.5, 0.3, 0.1, 0.05, 0.01])
    assert len(select_boxes(scores, 0.2, 1, 100)) == 3  # the confident ones
    assert len(select_boxes(scores, 0.2, 5, 100)) == 5  # at least min_boxes
    assert len(select_boxes(scores, 0.0, 1, 4)) == 4  # at most max_boxes
    assert len(select_boxes(scores, 0.0, 10, 100)) == 6  # never more than were detected


def test_bottom_up_selection_keeps_one_box_per_proposal() -> None:
    # proposals A and B overlap (IoU 0.8), C stands apart; classes: 0 background, 1, 2
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([[0.05, 0.90, 0.05], [0.05, 0.35, 0.60], [0.65, 0.05, 0.30]])
    keep, confidence, label = bottom_up_select(boxes, scores, score_threshold=0.2, min_boxes=1, max_boxes=100)
    # A: class 1 (0.9). B: its class-1 score is suppressed by A's, class 2 (0.6) survives. C: class 2 (0.3);
    # background never counts. Each proposal once, most confident first.
    assert keep.tolist() == [0, 1, 2] and label.tolist() == [1, 2, 2]
    assert confidence.tolist() == pytest.approx([0.9, 0.6, 0.3])
    assert bottom_up_select(boxes, scores, 0.5, 1, 100)[0].tolist() == [0, 1]  # by confidence
    assert bottom_up_select(boxes, scores, 0.95, 2, 100)[0].tolist() == [0, 1]  # at least min_boxes
    assert bottom_up_select(boxes, scores, 0.0, 1, 1)[0].tolist() == [0]  # at most max_boxes
    # (torchvision's post-processing keeps one regressed box per surviving (proposal, class) pair instead)


def test_resnext152_fpn_detector_builds_on_meta() -> None:
    with torch.device("meta"):
        x152 = build_detector("resnext152_32x8d", num_classes=1601, norm="frozen_bn")
        x101 = build_detector("resnext101_32x8d", num_classes=1601, norm="frozen_bn")
    body152 = sum(p.numel() for p in x152.backbone.body.parameters())
    body101 = sum(p.numel() for p in x101.backbone.body.parameters())
    # torchvision's ResNeXt-101 32x8d has 88.8 M parameters, 2.0 M of them in the dropped fc layer
    assert body101 == pytest.approx(86.7e6, rel=0.01)
    # ResNeXt-152 adds 15 bottleneck blocks of width 1024 to stage 4 (ResNet-152's [3, 8, 36, 3])
    assert body152 > body101 * 1.3
    assert x152.roi_heads.box_predictor.cls_score.out_features == 1601


def test_trained_detector_checkpoint_feeds_the_extractor(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])
    world = SyntheticWorld(seed=4, image_size=32)
    instances = write_coco_instances(world, tmp_path / "coco", "train", split_indices("train", 8))
    cli = build_cli(
        [
            "fit",
            "-c",
            str(CONFIGS / "demo_detector.yaml"),
            f"--data.init_args.train_json={instances}",
            f"--data.init_args.image_dir={tmp_path / 'coco' / 'images' / 'train'}",
            "--trainer.max_steps=2",
            "--data.init_args.batch_size=4",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--model.init_args.min_size=[28, 32]",
            "--trainer.enable_progress_bar=false",
        ]
    )
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    images = tmp_path / "coco" / "images" / "train"
    store = FeatureStore(
        extract.main(
            [
                "--images",
                str(images),
                "--out",
                str(tmp_path / "store"),
                "--detector",
                ckpt,
                "--min-boxes",
                "2",
                "--max-boxes",
                "4",
            ]
        )
    )
    spec = store.spec
    assert spec["backbone"] == "resnet18" and spec["head"] == cli.model.hparams.head and spec["min_size"] == [28, 32]
    assert len(spec["detector_weights"]) == 16 and store.feature_dim == cli.model.detector.feature_dim  # sha256 prefix
    assert all(2 <= store[i].num_boxes <= 4 for i in store.image_ids)
    # the stored features are the trained detector's (checkpoint round trip), not an untrained one's
    trained = cli.model.detector.eval()
    trained.transform.min_size = (32,)
    first = store.image_ids[0]
    (image,) = [f for i, f in image_files(images) if i == first]
    features, boxes = RegionFeatureExtractor(trained, 2, 4)([load_rgb(image)])[0]
    stored = store[first]
    assert torch.allclose(torch.from_numpy(stored.features[: stored.num_boxes]), features, atol=1e-4)
    assert torch.allclose(torch.from_numpy(stored.boxes[: stored.num_boxes]), boxes, atol=1e-5)


def test_grid_features_do_not_depend_on_batching() -> None:
    torch.manual_seed(0)
    grid = GridFeatureExtractor(build_detector("resnet18", 6, [32], 64, norm="bn").eval(), grid_size=2)
    images = [torch.rand(3, 32, 32), torch.rand(3, 32, 48), torch.rand(3, 32, 32)]
    together = grid(images)
    alone = [grid([im])[0] for im in images]
    for (f, b), (f1, b1) in zip(together, alone, strict=True):
        assert torch.allclose(f, f1, atol=1e-5) and torch.equal(b, b1)
    assert together[0][0].shape == (1, 512) and together[1][0].shape == (1, 512)  # C5 of 32 px is 1 cell high
