"""Importers of the published detector layouts, each fed a state dict with random values under the official
key names and shapes (written out here from the official module definitions, not from our model):

* bottom-up attention's Caffe ResNet-101 as ported by MILVLG/bottom-up-attention.pytorch @ 4dbce86
  (``bua/caffe/modeling/{backbone,rpn,roi_heads,fast_rcnn}.py``: detectron2 ResNet names, a 512-wide RPN with a
  two-way (background, object) softmax per anchor, a res5 box head, ``cls_embed`` / ``attr_linear1/2``);
* grid-feats-vqa @ 2677387 (``grid_feats/roi_heads.py``, ``configs/Base-RCNN-grid.yaml``): detectron2 ResNet with
  res5 in the backbone, ``box_head.fc1/fc2``, ``attribute_predictor.{obj_embed,fc.0,attr_score}``, background
  class last.
"""

from __future__ import annotations

import pytest
import torch

from vislang.vqa_ensemble.convert import (
    BOTTOM_UP_CAFFE_R101,
    GRID_FEATS,
    GRID_FEATS_COMMON,
    detector_from_bottom_up_caffe,
    detector_from_grid_feats,
    import_detector,
)
from vislang.vqa_ensemble.detector import GridFeatureExtractor, RegionFeatureExtractor, build_detector

BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


def _d2_resnet(depth: int, stages: tuple[int, ...], prefix: dict[int, str]) -> dict[str, tuple[int, ...]]:
    """detectron2 ``ResNet`` / ``BottleneckBlock`` parameter names and shapes (``stem.conv1``, ``res<n>.<b>.
    {conv1,conv2,conv3,shortcut}`` each with a ``.norm`` FrozenBatchNorm: weight, bias, running_mean, running_var)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        shapes[f"{name}.weight"] = (out, inp, k, k)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.norm.{leaf}"] = (out,)

    if 2 in stages:
        conv(f"{prefix[1]}stem.conv1", 64, 3, 7)
    for stage in stages:
        width, out = 64 * 2 ** (stage - 2), 256 * 2 ** (stage - 2)
        for b in range(BLOCKS[depth][stage - 2]):
            inp = (out // 2 if stage > 2 else 64) if b == 0 else out
            name = f"{prefix[stage]}res{stage}.{b}"
            conv(f"{name}.conv1", width, inp, 1)
            conv(f"{name}.conv2", width, width, 3)
            conv(f"{name}.conv3", out, width, 1)
            if b == 0:
                conv(f"{name}.shortcut", out, inp, 1)
    return shapes


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
    return {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in out.items()}  # variances are positive


def test_bottom_up_caffe_r101_layout(tmp_path) -> None:
    anchors, classes = 4 * 3, 1601
    shapes = _d2_resnet(101, (2, 3, 4), {1: "backbone.", 2: "backbone.", 3: "backbone.", 4: "backbone."})
    shapes |= _d2_resnet(101, (5,), {5: "roi_heads."})
    shapes |= {
        "proposal_generator.rpn_head.conv.weight": (512, 1024, 3, 3),
        "proposal_generator.rpn_head.conv.bias": (512,),
        "proposal_generator.rpn_head.objectness_logits.weight": (2 * anchors, 512, 1, 1),
        "proposal_generator.rpn_head.objectness_logits.bias": (2 * anchors,),
        "proposal_generator.rpn_head.anchor_deltas.weight": (4 * anchors, 512, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.bias": (4 * anchors,),
        "roi_heads.box_predictor.cls_score.weight": (classes, 2048),
        "roi_heads.box_predictor.cls_score.bias": (classes,),
        "roi_heads.box_predictor.bbox_pred.weight": (4 * classes, 2048),
        "roi_heads.box_predictor.bbox_pred.bias": (4 * classes,),
        "roi_heads.box_predictor.cls_embed.weight": (classes, 256),
        "roi_heads.box_predictor.attr_linear1.weight": (512, 2048 + 256),
        "roi_heads.box_predictor.attr_linear1.bias": (512,),
        "roi_heads.box_predictor.attr_linear2.weight": (401, 512),
        "roi_heads.box_predictor.attr_linear2.bias": (401,),
    }
    official = _random(shapes, 0)
    official["backbone.res2.0.conv1.norm.num_batches_tracked"] = torch.tensor(0)  # BN bookkeeping is dropped
    converted = detector_from_bottom_up_caffe({"model": official})
    with torch.device("meta"):
        detector = build_detector(**BOTTOM_UP_CAFFE_R101)
    detector.load_state_dict(converted, strict=True, assign=True)  # every parameter and buffer, nothing left over
    detector.eval()

    # the RPN: Caffe's softmax over (background, object) per anchor == sigmoid of the converted logit, with
    # detectron2's anchor a = size * 3 + ratio at torchvision's ratio * 4 + size
    x = torch.randn(1, 1024, 3, 3)
    hidden = torch.relu(detector.rpn.head.conv(x))
    ours = torch.sigmoid(detector.rpn.head.cls_logits(hidden))
    logits = torch.nn.functional.conv2d(
        hidden,
        official["proposal_generator.rpn_head.objectness_logits.weight"],
        official["proposal_generator.rpn_head.objectness_logits.bias"],
    )
    theirs = logits.view(1, 2, anchors, 3, 3).softmax(1)[:, 1]
    for size in range(4):
        for ratio in range(3):
            torch.testing.assert_close(ours[:, ratio * 4 + size], theirs[:, size * 3 + ratio], atol=1e-6, rtol=1e-5)
    # box deltas regressed with weights (1, 1, 1, 1) there decode identically with torchvision's (10, 10, 5, 5)
    raw = official["roi_heads.box_predictor.bbox_pred.weight"].view(classes, 4, -1)
    scaled = detector.roi_heads.box_predictor.bbox_pred.weight.view(classes, 4, -1)
    torch.testing.assert_close(scaled / scaled.new_tensor([10, 10, 5, 5]).view(1, 4, 1), raw)

    # end to end: 2,048-d res5 region features, one box per proposal, 401 attribute scores (on a small image)
    detector.transform.min_size, detector.transform.max_size = (96,), 128
    detector.rpn._post_nms_top_n["testing"] = 30  # res5 on 300 proposals takes ~10 s on one CPU thread
    regions = RegionFeatureExtractor(detector, min_boxes=10, max_boxes=100).detect([torch.rand(3, 96, 128)])[0]
    assert regions["features"].shape[1] == 2048 and regions["attributes"].shape == (len(regions["features"]), 401)
    assert 10 <= len(regions["features"]) <= 100 and torch.isfinite(regions["features"]).all()

    # the command-line import writes a checkpoint the extractor loads
    torch.save({"model": official}, tmp_path / "bua.pth")
    saved = torch.load(import_detector("bottom_up_caffe_r101", tmp_path / "bua.pth", tmp_path / "bua.ckpt"))
    assert saved["hyper_parameters"]["head"] == "c4" and len(saved["state_dict"]) == len(converted)


def test_grid_feats_r50_layout() -> None:
    anchors, classes = 5 * 3, 1600
    shapes = _d2_resnet(50, (2, 3, 4, 5), dict.fromkeys(range(1, 6), "backbone."))
    shapes |= {
        "proposal_generator.rpn_head.conv.weight": (2048, 2048, 3, 3),
        "proposal_generator.rpn_head.conv.bias": (2048,),
        "proposal_generator.rpn_head.objectness_logits.weight": (anchors, 2048, 1, 1),
        "proposal_generator.rpn_head.objectness_logits.bias": (anchors,),
        "proposal_generator.rpn_head.anchor_deltas.weight": (4 * anchors, 2048, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.bias": (4 * anchors,),
        "roi_heads.box_head.fc1.weight": (1024, 2048),
        "roi_heads.box_head.fc1.bias": (1024,),
        "roi_heads.box_head.fc2.weight": (1024, 1024),
        "roi_heads.box_head.fc2.bias": (1024,),
        "roi_heads.box_predictor.cls_score.weight": (classes + 1, 1024),
        "roi_heads.box_predictor.cls_score.bias": (classes + 1,),
        "roi_heads.box_predictor.bbox_pred.weight": (4 * classes, 1024),
        "roi_heads.box_predictor.bbox_pred.bias": (4 * classes,),
        "roi_heads.attribute_predictor.obj_embed.weight": (classes + 1, 256),
        "roi_heads.attribute_predictor.fc.0.weight": (512, 1024 + 256),
        "roi_heads.attribute_predictor.fc.0.bias": (512,),
        "roi_heads.attribute_predictor.attr_score.weight": (400, 512),
        "roi_heads.attribute_predictor.attr_score.bias": (400,),
    }
    official = {k: v.numpy() for k, v in _random(shapes, 1).items()}  # detectron2 .pkl files hold numpy arrays
    converted = detector_from_grid_feats({"model": official, "__author__": "FAIR"})
    with torch.device("meta"):
        detector = build_detector(**GRID_FEATS_COMMON, **GRID_FEATS["R-50"])
    detector.load_state_dict(converted, strict=True, assign=True)
    detector.eval()

    # class probabilities: detectron2's class k (< 1600) is ours k + 1, its background (last) is our 0
    feats = torch.randn(5, 1024)
    ours = detector.roi_heads.box_predictor(feats)[0].softmax(-1)
    w, b = (torch.from_numpy(official[f"roi_heads.box_predictor.cls_score.{k}"]) for k in ("weight", "bias"))
    theirs = (feats @ w.T + b).softmax(-1)
    torch.testing.assert_close(ours[:, 1:], theirs[:, :-1]) and torch.testing.assert_close(ours[:, 0], theirs[:, -1])
    # the attribute head sees the same class embedding for the same object
    embed = torch.from_numpy(official["roi_heads.attribute_predictor.obj_embed.weight"])
    torch.testing.assert_close(detector.attribute_head.embed.weight[1:], embed[:-1])

    # full-resolution grid features: the dilated C5 map at stride 16, 2,048-d
    detector.transform.min_size, detector.transform.max_size = (64,), 96
    features, cells = GridFeatureExtractor(detector, grid_size=0)([torch.rand(3, 64, 96)])[0]
    assert features.shape == (4 * 6, 2048) and cells[-1].tolist() == pytest.approx([5 / 6, 3 / 4, 1.0, 1.0])


def test_importers_name_what_they_cannot_map() -> None:
    with pytest.raises(KeyError, match="proposal_generator.rpn_head.conv.weight"):
        detector_from_grid_feats({"model": {"backbone.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}})
    with pytest.raises(KeyError, match="'head.extra' is not a detectron2 ResNet parameter"):
        detector_from_bottom_up_caffe({"backbone.head.extra": torch.zeros(1)})
