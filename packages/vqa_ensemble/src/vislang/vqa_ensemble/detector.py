"""Visual features of the entry: a Faster R-CNN with FPN on ResNet / ResNeXt, region features pooled by
RoIAlign, and grid features from the same backbone as the alternative.

The entry's point (arXiv 1910.13077, §1) is that *better detectors give better VQA features*: it replaces
the bottom-up-attention ResNet-101 Faster R-CNN with ResNeXt-101 / ResNeXt-152 backbones, adds an FPN and
trains with multiple image scales. Everything here is torchvision's detector (``FasterRCNN``,
``BackboneWithFPN``, ``MultiScaleRoIAlign``); what this file adds is

* the backbone table, including ResNeXt-152 (32x8d), which torchvision does not ship but builds from its
  own ``ResNet`` class with ``[3, 8, 36, 3]`` bottleneck blocks;
* the bottom-up box rule used for VQA features: keep detections scoring at least ``score_threshold``, but
  never fewer than ``min_boxes`` nor more than ``max_boxes`` (10-100 in bottom-up-attention);
* region features = the detector's own box head applied to RoIAlign-pooled FPN features of the kept
  boxes (the representation its classifier sees), plus the normalised box coordinates;
* grid features = the last backbone stage (C5) average-pooled to a ``grid_size`` x ``grid_size`` grid
  (Jiang et al., "In Defense of Grid Features for VQA", 2020), one "box" per cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    "BACKBONES",
    "GridFeatureExtractor",
    "RegionFeatureExtractor",
    "build_backbone",
    "build_detector",
    "select_boxes",
]

BACKBONES = (
    "resnet18",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnext152_32x8d",
)
"""Backbones of the detector; the entry used ResNeXt-101 and ResNeXt-152 (ResNet-101 is bottom-up's)."""

NORMS = ("frozen_bn", "bn")


def _resnet(name: str, norm_layer: type[nn.Module]) -> ResNet:
    if name == "resnext152_32x8d":
        # torchvision has no ResNeXt-152; it is ResNet-152's layout with 32 groups of width 8.
        return ResNet(Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=8, norm_layer=norm_layer)
    return torchvision.models.get_model(name, weights=None, norm_layer=norm_layer)


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return int((last.bn3 if hasattr(last, "bn3") else last.bn2).weight.shape[0])


def build_backbone(name: str, norm: str = "frozen_bn", fpn_channels: int = 256) -> BackboneWithFPN:
    """ResNet / ResNeXt body (C2..C5) + FPN (P2..P6), every stage trainable.

    Args:
        name: One of ``BACKBONES``.
        norm: ``"frozen_bn"`` (detectron convention with ImageNet weights) or ``"bn"`` (training from
            scratch, as the synthetic demo does, where frozen identity statistics would not normalise).
        fpn_channels: FPN width (256 in the FPN paper).
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    body = _resnet(name, FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d)
    in_channels = [_stage_channels(getattr(body, f"layer{i}")) for i in range(1, 5)]
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=in_channels,
        out_channels=fpn_channels,
    )


def build_detector(
    backbone: str = "resnext152_32x8d",
    num_classes: int = 1601,
    min_size: Sequence[int] = (600,),
    max_size: int = 1000,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    representation_size: int = 1024,
    norm: str = "frozen_bn",
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    rpn_proposals: int = 1000,
) -> FasterRCNN:
    """torchvision Faster R-CNN + FPN.

    Args:
        backbone: See ``BACKBONES``.
        num_classes: Object classes + background (1600 VG objects + 1 in bottom-up-attention).
        min_size: Shorter-side sizes; several values = multi-scale training (one drawn per batch), the
            first-listed maximum is used at test time by torchvision (``min_size[-1]``).
        max_size: Longer-side cap.
        anchor_sizes: One anchor size per FPN level P2..P6 (three aspect ratios each).
        representation_size: Width of the two-FC box head; it is the region feature dimension.
        norm: See ``build_backbone``.
        rpn_batch_size_per_image / box_batch_size_per_image: Sampled anchors / RoIs per image in training.
        rpn_proposals: Proposals kept after NMS per image (torchvision: 2000 train / 1000 test); the
            synthetic demo's scenes hold at most 4 objects and use far fewer.
    """
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per FPN level (5), got {list(anchor_sizes)}")
    body = build_backbone(backbone, norm)
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    model = FasterRCNN(
        body,
        num_classes=num_classes,
        min_size=tuple(min_size),
        max_size=max_size,
        rpn_anchor_generator=anchors,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_batch_size_per_image=box_batch_size_per_image,
        rpn_pre_nms_top_n_train=2 * rpn_proposals,
        rpn_post_nms_top_n_train=2 * rpn_proposals,
        rpn_pre_nms_top_n_test=rpn_proposals,
        rpn_post_nms_top_n_test=rpn_proposals,
    )
    # torchvision's default box head is TwoMLPHead(256*7*7, 1024); rebuild it at the requested width.
    head_in = body.out_channels * 7 * 7
    model.roi_heads.box_head = torchvision.models.detection.faster_rcnn.TwoMLPHead(head_in, representation_size)
    model.roi_heads.box_predictor = torchvision.models.detection.faster_rcnn.FastRCNNPredictor(
        representation_size, num_classes
    )
    return model


def select_boxes(scores: Tensor, score_threshold: float, min_boxes: int, max_boxes: int) -> Tensor:
    """Indices of the boxes kept for VQA (bottom-up rule): confident ones, clamped to [min, max] boxes.

    ``scores`` must be sorted in descending order (as torchvision's detections are).
    """
    confident = int((scores >= score_threshold).sum())
    keep = min(max(confident, min_boxes), max_boxes, scores.numel())
    return torch.arange(keep, device=scores.device)


def _normalise(boxes: Tensor, height: int, width: int) -> Tensor:
    scale = boxes.new_tensor([width, height, width, height])
    return (boxes / scale).clamp(0, 1)


class RegionFeatureExtractor(nn.Module):
    """Detector boxes (or given boxes) -> RoIAlign over FPN levels -> box head -> region features.

    ``forward`` takes RGB images as float tensors in [0, 1] (C, H, W; sizes may differ) and returns one
    ``(features (n, representation_size), boxes (n, 4) as x1 y1 x2 y2 in [0, 1])`` per image.
    """

    def __init__(
        self, detector: FasterRCNN, min_boxes: int = 10, max_boxes: int = 100, score_threshold: float = 0.2
    ) -> None:
        super().__init__()
        if not 1 <= min_boxes <= max_boxes:
            raise ValueError(f"need 1 <= min_boxes <= max_boxes, got {min_boxes}, {max_boxes}")
        self.detector = detector
        self.min_boxes, self.max_boxes, self.score_threshold = min_boxes, max_boxes, score_threshold
        self.feature_dim = int(detector.roi_heads.box_predictor.cls_score.in_features)

    @torch.no_grad()
    def forward(self, images: list[Tensor], boxes: list[Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
        det = self.detector
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, _ = det.transform(images)
        features = det.backbone(batch.tensors)
        if boxes is None:
            # Detection proper: RPN proposals -> box head -> per-class NMS; keep up to max_boxes by score.
            proposals, _ = det.rpn(batch, features)
            thresh, per_img = det.roi_heads.score_thresh, det.roi_heads.detections_per_img
            det.roi_heads.score_thresh, det.roi_heads.detections_per_img = 0.0, self.max_boxes
            try:
                detections, _ = det.roi_heads(features, proposals, batch.image_sizes)
            finally:
                det.roi_heads.score_thresh, det.roi_heads.detections_per_img = thresh, per_img
            kept = []
            for d, (h, w) in zip(detections, batch.image_sizes, strict=True):
                chosen = d["boxes"][select_boxes(d["scores"], self.score_threshold, self.min_boxes, self.max_boxes)]
                if chosen.numel() == 0:  # nothing detected at all: fall back to the whole image
                    chosen = d["boxes"].new_tensor([[0.0, 0.0, float(w), float(h)]])
                kept.append(chosen)
        else:
            # Given boxes (original pixel coordinates), e.g. ground truth: rescale like the images.
            kept = []
            for b, (h0, w0), (h, w) in zip(boxes, sizes, batch.image_sizes, strict=True):
                scale = b.new_tensor([w / w0, h / h0, w / w0, h / h0])
                kept.append(b.float() * scale)
        # RoIAlign on the FPN level chosen by box size (FPN eq. 1), then the two-FC head.
        pooled = det.roi_heads.box_roi_pool(features, kept, batch.image_sizes)
        rep = det.roi_heads.box_head(pooled)
        out, start = [], 0
        for b, (h, w) in zip(kept, batch.image_sizes, strict=True):
            out.append((rep[start : start + len(b)], _normalise(b, h, w)))
            start += len(b)
        return out


class GridFeatureExtractor(nn.Module):
    """Backbone C5 map average-pooled to ``grid_size`` x ``grid_size`` cells, one feature per cell."""

    def __init__(self, detector: FasterRCNN, grid_size: int = 8) -> None:
        super().__init__()
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        self.transform = detector.transform
        self.body = detector.backbone.body
        self.grid_size = grid_size
        self.feature_dim = _stage_channels(self.body.layer4)

    @torch.no_grad()
    def forward(self, images: list[Tensor], boxes: list[Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
        out: list[tuple[Tensor, Tensor] | None] = [None] * len(images)
        # Images of equal size run as one batch; different sizes never share a batch, so no padding
        # enters the pooled cells.
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(k)
        for members in groups.values():
            batch, _ = self.transform([images[k] for k in members])
            h, w = batch.image_sizes[0]
            c5 = self.body(batch.tensors[:, :, :h, :w])["3"]
            g = min(self.grid_size, c5.shape[-2], c5.shape[-1])
            grid = nn.functional.adaptive_avg_pool2d(c5, g)  # (B, C, g, g)
            ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
            cells = torch.stack([xs, ys, xs + 1, ys + 1], dim=-1).reshape(-1, 4).float() / g
            for j, k in enumerate(members):
                out[k] = (grid[j].flatten(1).T.contiguous(), cells)
        return [o for o in out if o is not None]


def detector_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The ``build_detector`` arguments found in a DetectorModule checkpoint's ``hyper_parameters``."""
    import inspect

    names = inspect.signature(build_detector).parameters
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in hparams.items() if k in names}
