"""Visual features of the entry: a Faster R-CNN on ResNet / ResNeXt, region features of its kept proposals
and grid features from the same backbone as the alternative.

The entry's point (arXiv 1910.13077, §1) is that *better detectors give better VQA features*: it replaces
the bottom-up-attention ResNet-101 Faster R-CNN with ResNeXt-101 / ResNeXt-152 backbones, adds an FPN and
trains with multiple image scales. Everything here is torchvision's detector (``FasterRCNN``,
``BackboneWithFPN``, ``MultiScaleRoIAlign``); what this file adds is

* the backbone table, including ResNeXt-152 (32x8d), which torchvision does not ship but builds from its
  own ``ResNet`` class with ``[3, 8, 36, 3]`` bottleneck blocks;
* three detector layouts (``head``): ``fpn`` (the entry's: FPN on C2-C5, two-FC box head), ``c4`` (bottom-up
  attention's: RPN and RoI pooling on C4, the res5 stage as the box head, whose average-pooled 2,048-d output
  is the region feature) and ``c5`` (grid-feats-vqa's: res5 dilated to stride 16 in the backbone, RPN and a
  1x1 RoIAlign + two-FC head on C5); ``convert.py`` imports the published bottom-up-attention and grid-feats
  checkpoints into ``c4`` and ``c5``;
* an optional attribute head (bottom-up attention: class embedding ++ region feature -> FC 512 -> attributes);
* the bottom-up box rule (``bottom_up_select``, bottom-up-attention ``tools/generate_tsv.py``): every *proposal*
  is one candidate region, scored by its most confident object class that survives per-class NMS (0.3); the
  proposals scoring at least ``score_threshold`` (0.2) are kept, but never fewer than ``min_boxes`` (10) nor
  more than ``max_boxes`` (100), the best first. Boxes are the proposals, features the box head's output on
  them -- not torchvision's post-processing, which keeps one regressed box per (proposal, class) pair;
* grid features = the C5 map at the image's full resolution (grid-feats-vqa, Jiang et al., "In Defense of
  Grid Features for VQA", 2020: ``grid_size=0``), or average-pooled to ``grid_size`` x ``grid_size`` cells.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, nms

__all__ = [
    "BACKBONES",
    "Backbone",
    "Head",
    "Norm",
    "HEADS",
    "AttributeHead",
    "GridFeatureExtractor",
    "RegionFeatureExtractor",
    "Res5Head",
    "bottom_up_select",
    "c5_features",
    "coco_box_map",
    "build_backbone",
    "build_detector",
    "select_boxes",
]

Backbone = Literal[
    "resnet18",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnext152_32x8d",
]
"""Backbones of the detector; the entry used ResNeXt-101 and ResNeXt-152 (ResNet-101 is bottom-up's)."""
Norm = Literal["frozen_bn", "bn"]
Head = Literal["fpn", "c4", "c5"]
"""Detector layouts: the entry's FPN, bottom-up attention's C4 + res5 head, grid-feats-vqa's dilated C5."""

BACKBONES, NORMS, HEADS = get_args(Backbone), get_args(Norm), get_args(Head)


def _resnet(name: str, norm_layer: type[nn.Module], stride_in_1x1: bool = False, res5_dilation: int = 1) -> ResNet:
    if name == "resnext152_32x8d":
        # torchvision has no ResNeXt-152; it is ResNet-152's layout with 32 groups of width 8.
        net = ResNet(Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=8, norm_layer=norm_layer)
    else:
        net = torchvision.models.get_model(name, weights=None, norm_layer=norm_layer)
    if stride_in_1x1:  # MSRA / Caffe ResNets (bottom-up attention) downsample in the first 1x1 conv
        for stage in (net.layer2, net.layer3, net.layer4):
            block = stage[0]
            if isinstance(block, Bottleneck):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    if res5_dilation > 1:  # every 3x3 conv of res5 dilated, as detectron2's RES5_DILATION (torchvision skips block 0)
        for block in net.layer4:
            conv = block.conv2
            conv.dilation, conv.padding = (res5_dilation,) * 2, (res5_dilation * (conv.kernel_size[0] // 2),) * 2
    return net


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


class Res5Head(nn.Module):
    """Bottom-up attention's box head (``c4``): the res5 stage on 14x14 RoI features, averaged to one 2,048-d
    vector per box (Caffe ``pool5_flat``; detectron2 ``Res5ROIHeads``) -- the region feature."""

    def __init__(self, res5: nn.Sequential) -> None:
        super().__init__()
        self.res5 = res5

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


class AttributeHead(nn.Module):
    """Visual Genome attribute head (bottom-up attention, Anderson et al. 2018 §3.1): the region feature
    concatenated with an embedding of its object class, FC + ReLU, then one score per attribute class
    (400 attributes + "no attribute" in the Caffe model, 400 in grid-feats)."""

    def __init__(self, feature_dim: int, num_classes: int, num_attributes: int, embed: int = 256, hidden: int = 512):
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed)
        self.fc = nn.Linear(feature_dim + embed, hidden)
        self.score = nn.Linear(hidden, num_attributes)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return self.score(torch.relu(self.fc(torch.cat([features, self.embed(labels)], dim=1))))


def _single_level_rpn_head(in_channels: int, num_anchors: int, width: int) -> RPNHead:
    """torchvision's RPN head with a hidden width of its own (bottom-up attention: 512 on C4's 1024 channels)."""
    head = RPNHead(in_channels, num_anchors)
    head.conv = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True))
    head.cls_logits = nn.Conv2d(width, num_anchors, 1)
    head.bbox_pred = nn.Conv2d(width, 4 * num_anchors, 1)
    for layer in (head.conv[0], head.cls_logits, head.bbox_pred):
        nn.init.normal_(layer.weight, std=0.01)
        nn.init.constant_(layer.bias, 0)
    return head


def build_detector(
    backbone: Backbone = "resnext152_32x8d",
    num_classes: int = 1601,
    min_size: Sequence[int] = (600,),
    max_size: int = 1000,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    representation_size: int = 1024,
    norm: Norm = "frozen_bn",
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    rpn_proposals: int = 1000,
    head: Head = "fpn",
    num_attributes: int = 0,
    stride_in_1x1: bool = False,
    res5_dilation: int = 1,
    rpn_channels: int | None = None,
) -> FasterRCNN:
    """torchvision Faster R-CNN in one of three layouts (``HEADS``).

    Args:
        backbone: See ``BACKBONES``.
        num_classes: Object classes + background (1600 VG objects + 1 in bottom-up-attention).
        min_size: Shorter-side sizes; several values = multi-scale training (one drawn per batch), the
            first-listed maximum is used at test time by torchvision (``min_size[-1]``).
        max_size: Longer-side cap.
        anchor_sizes: ``fpn``: one size per level P2..P6; ``c4`` / ``c5``: every size on the one level
            (bottom-up attention: 64, 128, 256, 512; grid-feats: 32 ... 512). Three aspect ratios each.
        representation_size: Width of the two-FC box head (``fpn``, ``c5``); the ``c4`` head's width is res5's.
        norm: See ``build_backbone``.
        rpn_batch_size_per_image / box_batch_size_per_image: Sampled anchors / RoIs per image in training.
        rpn_proposals: Proposals kept after NMS per image (torchvision: 2000 train / 1000 test; bottom-up
            attention tests with 300); the synthetic demo's scenes hold at most 4 objects and use far fewer.
        head: ``fpn`` (the entry), ``c4`` (bottom-up attention), ``c5`` (grid-feats-vqa).
        num_attributes: Attribute classes of an ``AttributeHead`` (0 = none).
        stride_in_1x1: Downsample in each stage's first 1x1 conv (MSRA / Caffe ResNets), not in the 3x3.
        res5_dilation: Dilation of res5's 3x3 convs (bottom-up Caffe model and grid-feats: 2).
        rpn_channels: Hidden width of the single-level RPN head (bottom-up attention: 512; None = input width).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    common = dict(
        num_classes=num_classes,
        min_size=tuple(min_size),
        max_size=max_size,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_batch_size_per_image=box_batch_size_per_image,
        rpn_pre_nms_top_n_train=2 * rpn_proposals,
        rpn_post_nms_top_n_train=2 * rpn_proposals,
        rpn_pre_nms_top_n_test=rpn_proposals,
        rpn_post_nms_top_n_test=rpn_proposals,
    )
    if head == "fpn":
        if len(anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per FPN level (5), got {list(anchor_sizes)}")
        body = build_backbone(backbone, norm)
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
        model = FasterRCNN(body, rpn_anchor_generator=anchors, **common)
        # torchvision's default box head is TwoMLPHead(256*7*7, 1024); rebuild it at the requested width.
        model.roi_heads.box_head = TwoMLPHead(body.out_channels * 7 * 7, representation_size)
        feature_dim = representation_size
    else:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        net = _resnet(
            backbone, FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d, stride_in_1x1, res5_dilation
        )
        anchors = AnchorGenerator((tuple(anchor_sizes),), ((0.5, 1.0, 2.0),))
        if head == "c4":  # bottom-up attention: C4 (stride 16) for RPN and RoI pooling, res5 is the box head
            body = IntermediateLayerGetter(net, {"layer3": "0"})
            body.out_channels = _stage_channels(net.layer3)
            roi_pool = MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0)
            box_head: nn.Module = Res5Head(net.layer4)
            feature_dim = _stage_channels(net.layer4)
        else:  # grid-feats-vqa: res5 without its stride (dilated) in the backbone; 1x1 RoIAlign + two FC
            block = net.layer4[0]
            for conv in (block.conv1, block.conv2, block.downsample[0]):
                conv.stride = (1, 1)
            body = IntermediateLayerGetter(net, {"layer4": "0"})
            body.out_channels = _stage_channels(net.layer4)
            roi_pool = MultiScaleRoIAlign(["0"], output_size=1, sampling_ratio=2)
            box_head = TwoMLPHead(body.out_channels, representation_size)
            feature_dim = representation_size
        width = rpn_channels or body.out_channels
        rpn_head = _single_level_rpn_head(body.out_channels, anchors.num_anchors_per_location()[0], width)
        model = FasterRCNN(
            body, rpn_anchor_generator=anchors, rpn_head=rpn_head, box_roi_pool=roi_pool, box_head=box_head, **common
        )
    model.roi_heads.box_predictor = FastRCNNPredictor(feature_dim, num_classes)
    model.attribute_head = AttributeHead(feature_dim, num_classes, num_attributes) if num_attributes else None
    model.feature_dim, model.head_kind = feature_dim, head
    return model


def select_boxes(scores: Tensor, score_threshold: float, min_boxes: int, max_boxes: int) -> Tensor:
    """Indices of the boxes kept for VQA (bottom-up rule): confident ones, clamped to [min, max] boxes.

    ``scores`` must be sorted in descending order.
    """
    confident = int((scores >= score_threshold).sum())
    keep = min(max(confident, min_boxes), max_boxes, scores.numel())
    return torch.arange(keep, device=scores.device)


def bottom_up_select(
    boxes: Tensor,
    class_scores: Tensor,
    score_threshold: float = 0.2,
    min_boxes: int = 10,
    max_boxes: int = 100,
    nms_threshold: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Bottom-up attention's choice of regions among the proposals (``tools/generate_tsv.py``).

    For every object class, NMS over the proposals scored by that class; a proposal's confidence is its best
    score in a class where it survives. Proposals with confidence >= ``score_threshold`` are kept, at least
    ``min_boxes`` and at most ``max_boxes`` of them, most confident first -- so each proposal appears at most
    once, labelled with its most confident class.

    Args:
        boxes: (P, 4) proposal boxes.
        class_scores: (P, C) softmax class probabilities, column 0 = background.

    Returns:
        (kept proposal indices, their confidence, their class) sorted by decreasing confidence.
    """
    confidence = class_scores.new_zeros(len(boxes))
    label = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
    for c in range(1, class_scores.shape[1]):
        scores = class_scores[:, c]
        if not bool((scores > confidence).any()):  # cannot raise any proposal's confidence: same result, faster
            continue
        keep = nms(boxes, scores, nms_threshold)
        better = keep[scores[keep] > confidence[keep]]
        confidence[better], label[better] = scores[better], c
    order = confidence.argsort(descending=True, stable=True)
    order = order[select_boxes(confidence[order], score_threshold, min_boxes, max_boxes)]
    return order, confidence[order], label[order]


def _normalise(boxes: Tensor, height: int, width: int) -> Tensor:
    scale = boxes.new_tensor([width, height, width, height])
    return (boxes / scale).clamp(0, 1)


class RegionFeatureExtractor(nn.Module):
    """Proposals (or given boxes) -> RoI pooling -> box head -> region features, kept by the bottom-up rule.

    ``forward`` takes RGB images as float tensors in [0, 1] (C, H, W; sizes may differ) and returns one
    ``(features (n, feature_dim), boxes (n, 4) as x1 y1 x2 y2 in [0, 1])`` per image; ``detect`` also returns
    each region's object class, confidence and attribute scores (when the detector has an attribute head).
    """

    def __init__(
        self,
        detector: FasterRCNN,
        min_boxes: int = 10,
        max_boxes: int = 100,
        score_threshold: float = 0.2,
        nms_threshold: float = 0.3,
    ) -> None:
        super().__init__()
        if not 1 <= min_boxes <= max_boxes:
            raise ValueError(f"need 1 <= min_boxes <= max_boxes, got {min_boxes}, {max_boxes}")
        self.detector = detector
        self.min_boxes, self.max_boxes = min_boxes, max_boxes
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.feature_dim = int(detector.roi_heads.box_predictor.cls_score.in_features)

    @torch.no_grad()
    def detect(self, images: list[Tensor], boxes: list[Tensor] | None = None) -> list[dict[str, Tensor | None]]:
        det = self.detector
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, _ = det.transform(images)
        features = det.backbone(batch.tensors)
        if boxes is None:
            candidates, _ = det.rpn(batch, features)  # every proposal is a candidate region (bottom-up)
            for k, (h, w) in enumerate(batch.image_sizes):  # no proposal at all: the whole image is the one region
                if not len(candidates[k]):
                    candidates[k] = candidates[k].new_tensor([[0.0, 0.0, float(w), float(h)]])
        else:  # given boxes (original pixel coordinates), e.g. ground truth: rescale like the images
            candidates = []
            for b, (h0, w0), (h, w) in zip(boxes, sizes, batch.image_sizes, strict=True):
                candidates.append(b.float() * b.new_tensor([w / w0, h / h0, w / w0, h / h0]).float())
        pooled = det.roi_heads.box_roi_pool(features, candidates, batch.image_sizes)
        rep = det.roi_heads.box_head(pooled)
        probs = det.roi_heads.box_predictor(rep)[0].softmax(-1)
        out, start = [], 0
        for c, (h, w) in zip(candidates, batch.image_sizes, strict=True):
            r, p = rep[start : start + len(c)], probs[start : start + len(c)]
            start += len(c)
            if boxes is None:
                keep, score, label = bottom_up_select(
                    c, p, self.score_threshold, self.min_boxes, self.max_boxes, self.nms_threshold
                )
            else:
                keep = torch.arange(len(c))
                score, label = p[:, 1:].max(-1)
                label = label + 1
            attributes = det.attribute_head(r[keep], label) if det.attribute_head is not None else None
            out.append(
                {
                    "features": r[keep],
                    "boxes": _normalise(c[keep], h, w),
                    "labels": label,
                    "scores": score,
                    "attributes": attributes,
                }
            )
        return out

    def forward(self, images: list[Tensor], boxes: list[Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
        return [(d["features"], d["boxes"]) for d in self.detect(images, boxes)]


def c5_features(detector: FasterRCNN, x: Tensor) -> Tensor:
    """The last backbone stage's map of a batch: FPN body ``layer4``; ``c4``: res5 (the box head's layers) on the
    whole C4 map, as grid-feats-vqa's ``Res5ROIHeads.get_conv5_features``; ``c5``: the dilated backbone output."""
    head = getattr(detector, "head_kind", "fpn")
    if head == "fpn":
        return detector.backbone.body(x)["3"]
    c = detector.backbone(x)["0"]
    return detector.roi_heads.box_head.res5(c) if head == "c4" else c


class GridFeatureExtractor(nn.Module):
    """The C5 map as grid features: every cell at the image's full resolution (``grid_size=0``, grid-feats-vqa)
    or average-pooled to ``grid_size`` x ``grid_size`` cells; one feature (and one cell box) per cell."""

    def __init__(self, detector: FasterRCNN, grid_size: int = 0) -> None:
        super().__init__()
        if grid_size < 0:
            raise ValueError(f"grid_size must be >= 0 (0 = full resolution), got {grid_size}")
        self.detector = detector
        self.grid_size = grid_size
        head = getattr(detector, "head_kind", "fpn")
        res5 = {"fpn": lambda: detector.backbone.body.layer4, "c4": lambda: detector.roi_heads.box_head.res5}
        self.feature_dim = _stage_channels(res5[head]()) if head in res5 else int(detector.backbone.out_channels)

    @torch.no_grad()
    def forward(self, images: list[Tensor], boxes: list[Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
        out: list[tuple[Tensor, Tensor] | None] = [None] * len(images)
        # Images of equal size run as one batch; different sizes never share a batch, so no padding
        # enters the cells.
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(k)
        for members in groups.values():
            batch, _ = self.detector.transform([images[k] for k in members])
            h, w = batch.image_sizes[0]
            c5 = c5_features(self.detector, batch.tensors[:, :, :h, :w])
            if self.grid_size:
                g = min(self.grid_size, c5.shape[-2], c5.shape[-1])
                c5 = nn.functional.adaptive_avg_pool2d(c5, g)  # (B, C, g, g)
            gh, gw = c5.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            cells = torch.stack([xs / gw, ys / gh, (xs + 1) / gw, (ys + 1) / gh], dim=-1).reshape(-1, 4).float()
            for j, k in enumerate(members):
                out[k] = (c5[j].flatten(1).T.contiguous(), cells)
        return [o for o in out if o is not None]


@torch.no_grad()
def coco_box_map(detector: FasterRCNN, instances_json: str | Path, image_dir: str | Path, batch_size: int = 8) -> dict:
    """COCO box mAP (pycocotools ``COCOeval``) of the detector's detections (torchvision post-processing: regressed
    class-specific boxes, score > 0.05, NMS 0.5, up to 100 per image) on a COCO instances file.

    Returns:
        ``{"mAP": AP@[.5:.95], "mAP50": AP@.5, "images": n}`` in percent.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from vislang.vqa_ensemble.data import load_rgb

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(instances_json))
    detector.eval()
    ids = sorted(gt.getImgIds())
    results = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        images = [load_rgb(Path(image_dir) / gt.imgs[i]["file_name"]) for i in chunk]
        for image_id, d in zip(chunk, detector(images), strict=True):
            xywh = torch.cat([d["boxes"][:, :2], d["boxes"][:, 2:] - d["boxes"][:, :2]], dim=1)
            results += [
                {"image_id": image_id, "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
                for b, c, s in zip(xywh, d["labels"], d["scores"], strict=True)
            ]
    if not results:
        return {"mAP": 0.0, "mAP50": 0.0, "images": len(ids)}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [round(100 * float(v), 2) for v in evaluation.stats[:2]]
    return {"mAP": stats[0], "mAP50": stats[1], "images": len(ids)}


def detector_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The ``build_detector`` arguments found in a DetectorModule checkpoint's ``hyper_parameters``."""
    import inspect

    names = inspect.signature(build_detector).parameters
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in hparams.items() if k in names}
