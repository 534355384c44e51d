"""Checkpoint import: official MCAN weights (MILVLG/mcan-vqa) onto ``model.MCAN``, and the published detectors
(bottom-up attention's Caffe ResNet-101, grid-feats-vqa's detectron2 models) onto ``detector.build_detector``.

    python -m vislang.vqa_ensemble.convert --layout bottom_up_caffe_r101 \
        --checkpoint bua-caffe-frcn-r101_with_attributes.pth --out checkpoints/detector_bua_r101.ckpt
    python -m vislang.vqa_ensemble.convert --layout grid_feats_X-152 --checkpoint X-152.pth --out ...

MCAN's checkpoints (``ckpts/ckpt_<version>/epoch13.pkl``) hold ``{"state_dict": net.state_dict(), ...}``, keys
prefixed with ``module.`` when trained under ``nn.DataParallel``. The co-attention network maps one to one:

=====================================================  ===============================================
official (``core/model/{net,mca,net_utils}.py``)       here (``model.MCAN``)
=====================================================  ===============================================
``img_feat_linear``                                    ``visual_proj``
``backbone.enc_list.i.mhatt.linear_{q,k,v}``           ``encoder.i.att.in_proj_{weight,bias}`` (q, k, v stacked)
``backbone.enc_list.i.mhatt.linear_merge``             ``encoder.i.att.out_proj``
``backbone.enc_list.i.ffn.mlp.{fc.linear,linear}``     ``encoder.i.ffn.net.{0,3}``
``backbone.enc_list.i.norm{1,2}.{a_2,b_2}``            ``encoder.i.norm{1,2}.{weight,bias}``
``backbone.dec_list.i.mhatt{1,2}``                     ``decoder.i.{self_att,guided_att}``
``backbone.dec_list.i.norm{1,2,3}``                    ``decoder.i.norms.{0,1,2}``
``attflat_{lang,img}.mlp.{fc.linear,linear}``          ``flat_{text,image}.score.{0,3}``
``attflat_{lang,img}.linear_merge``                    ``flat_{text,image}.merge``
``proj_norm``, ``proj``                                ``norm``, ``classifier``
=====================================================  ===============================================

MCAN's GloVe ``embedding`` and ``lstm`` have no counterpart: the entry encodes the question with BERT
(``bert`` + ``text_proj`` keep their own weights). ``box_proj`` does not exist in MCAN (build with
``use_boxes=False`` for the official network).
"""

from __future__ import annotations

import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, cat

from vislang.shared.checkpoint import load_checkpoint

__all__ = [
    "BOTTOM_UP_CAFFE_R101",
    "GRID_FEATS",
    "GRID_FEATS_COMMON",
    "MCAN_TEXT_ENCODER_KEYS",
    "detector_from_bottom_up_caffe",
    "detector_from_grid_feats",
    "import_detector",
    "mcan_from_official",
]

MCAN_TEXT_ENCODER_KEYS = ("embedding.", "lstm.")
"""Official MCAN keys replaced by BERT in the entry (not converted)."""

_NORM = {"a_2": "weight", "b_2": "bias"}
_FLAT = {"mlp.fc.linear": "score.0", "mlp.linear": "score.3", "linear_merge": "merge"}
_FFN = {"ffn.mlp.fc.linear": "ffn.net.0", "ffn.mlp.linear": "ffn.net.3"}


def _attention(sd: Mapping[str, Tensor], src: str, dst: str, out: dict[str, Tensor]) -> None:
    """MCAN's four Linears of one MHAtt -> ``nn.MultiheadAttention`` (stacked q, k, v input projection)."""
    for kind in ("weight", "bias"):
        out[f"{dst}.in_proj_{kind}"] = cat([_get(sd, f"{src}.linear_{p}.{kind}") for p in ("q", "k", "v")])
        out[f"{dst}.out_proj.{kind}"] = _get(sd, f"{src}.linear_merge.{kind}")


def _get(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise KeyError(f"official MCAN state dict has no {key!r}: not a mcan-vqa Net checkpoint (or another LAYER)")
    return sd[key]


def _copy(sd: Mapping[str, Tensor], src: str, dst: str, out: dict[str, Tensor], names=("weight", "bias")) -> None:
    for name in names:
        out[f"{dst}.{_NORM.get(name, name)}"] = _get(sd, f"{src}.{name}")


def mcan_from_official(checkpoint: Mapping[str, object]) -> dict[str, Tensor]:
    """``model.MCAN`` state-dict entries (co-attention, AttFlat, classifier) from an official MCAN checkpoint.

    Args:
        checkpoint: ``torch.load(epochN.pkl)`` (a dict with ``state_dict``) or the state dict itself; a
            ``module.`` prefix (DataParallel) is removed.

    Returns:
        The converted entries; load them with ``model.load_state_dict(out, strict=False)`` -- the BERT
        encoder, ``text_proj`` and ``box_proj`` are not part of MCAN.
    """
    sd = checkpoint.get("state_dict", checkpoint)
    if not isinstance(sd, Mapping):
        raise TypeError("checkpoint['state_dict'] is not a mapping: not a mcan-vqa checkpoint")
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.enc_list\.(\d+)\.", k))}
    if not layers:
        raise KeyError("official MCAN state dict has no 'backbone.enc_list.*' keys: not a mcan-vqa Net checkpoint")
    out: dict[str, Tensor] = {}
    _copy(sd, "img_feat_linear", "visual_proj", out)
    for i in range(max(layers) + 1):
        enc, dec = f"backbone.enc_list.{i}", f"backbone.dec_list.{i}"
        _attention(sd, f"{enc}.mhatt", f"encoder.{i}.att", out)
        _attention(sd, f"{dec}.mhatt1", f"decoder.{i}.self_att", out)
        _attention(sd, f"{dec}.mhatt2", f"decoder.{i}.guided_att", out)
        for src, dst in _FFN.items():
            _copy(sd, f"{enc}.{src}", f"encoder.{i}.{dst}", out)
            _copy(sd, f"{dec}.{src}", f"decoder.{i}.{dst}", out)
        for n in (1, 2):
            _copy(sd, f"{enc}.norm{n}", f"encoder.{i}.norm{n}", out, ("a_2", "b_2"))
        for n in (1, 2, 3):
            _copy(sd, f"{dec}.norm{n}", f"decoder.{i}.norms.{n - 1}", out, ("a_2", "b_2"))
    for src, dst in (("attflat_lang", "flat_text"), ("attflat_img", "flat_image")):
        for a, b in _FLAT.items():
            _copy(sd, f"{src}.{a}", f"{dst}.{b}", out)
    _copy(sd, "proj_norm", "norm", out, ("a_2", "b_2"))
    _copy(sd, "proj", "classifier", out)
    used = sum(v.numel() for v in out.values())
    expected = sum(v.numel() for k, v in sd.items() if not k.startswith(MCAN_TEXT_ENCODER_KEYS))
    if used != expected:  # a key this mapping does not know (another MCAN variant) must not be dropped silently
        raise KeyError(f"official MCAN state dict has {expected - used} values this converter does not map")
    return out


# ---- detectors: bottom-up attention (Caffe model, PyTorch port) and grid-feats-vqa (detectron2) ---------------

BOTTOM_UP_CAFFE_R101 = {
    "backbone": "resnet101",
    "head": "c4",
    "num_classes": 1601,
    "num_attributes": 401,
    "min_size": [600],
    "max_size": 1000,
    "anchor_sizes": [64, 128, 256, 512],
    "rpn_channels": 512,
    "stride_in_1x1": True,
    "res5_dilation": 2,
    "rpn_proposals": 300,
    "norm": "frozen_bn",
}
"""``build_detector`` arguments of bottom-up attention's Visual Genome ResNet-101 (Caffe ``test.prototxt``;
MILVLG/bottom-up-attention.pytorch ``configs/caffe/test-caffe-r101.yaml``): C4 RPN with 512 hidden channels,
anchors 4/8/16/32 x stride 16, RoI pooling 14x14 on C4, res5 head (stride in the 1x1 conv, dilation 2), 1600
objects + background, 400 attributes + "no attribute", 300 proposals at test time, 600 / 1000 px images."""

GRID_FEATS = {
    "R-50": {"backbone": "resnet50", "stride_in_1x1": True},
    "X-101": {"backbone": "resnext101_32x8d", "stride_in_1x1": False},
    "X-152": {"backbone": "resnext152_32x8d", "stride_in_1x1": False},
}
"""grid-feats-vqa's models (``configs/{R-50,X-101,X-152}-grid.yaml`` over ``Base-RCNN-grid.yaml``)."""

GRID_FEATS_COMMON = {
    "head": "c5",
    "num_classes": 1601,
    "num_attributes": 400,
    "min_size": [600],
    "max_size": 1000,
    "anchor_sizes": [32, 64, 128, 256, 512],
    "res5_dilation": 2,
    "representation_size": 1024,
    "rpn_proposals": 1000,
    "norm": "frozen_bn",
}
"""``Base-RCNN-grid.yaml``: res5 dilated in the backbone (stride 16), RPN and a 1x1 RoIAlign + two-FC (1024) head
on it, 1600 VG objects (+ background), 400 attributes, detectron2's default anchors (32-512, 3 ratios)."""

_RATIOS = 3  # aspect ratios per anchor size in both layouts (0.5, 1, 2)


def _weights_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """detectron2 / bottom-up-attention.pytorch checkpoints hold ``{"model": state_dict}`` (numpy arrays in
    detectron2's ``.pkl`` files); a bare state dict is accepted too."""
    sd = checkpoint.get("model", checkpoint)
    if not isinstance(sd, Mapping):
        raise TypeError("checkpoint['model'] is not a mapping: not a detectron2-style checkpoint")
    return {k: torch.as_tensor(v) for k, v in sd.items() if not k.endswith("num_batches_tracked")}


_D2_BLOCK = re.compile(r"res(\d)\.(\d+)\.(conv\d|shortcut)\.(norm\.)?(\w+)$")


def _resnet_name(name: str) -> str:
    """detectron2 ResNet names -> torchvision's: ``stem.conv1(.norm)`` -> ``conv1`` / ``bn1``; ``res<n>.<b>.conv<k>
    (.norm)`` -> ``layer<n-1>.<b>.conv<k>`` / ``bn<k>``; ``shortcut(.norm)`` -> ``downsample.0`` / ``downsample.1``."""
    if name.startswith("stem.conv1."):
        rest = name[len("stem.conv1.") :]
        return f"bn1.{rest[len('norm.') :]}" if rest.startswith("norm.") else f"conv1.{rest}"
    m = _D2_BLOCK.match(name)
    if m is None:
        raise KeyError(f"{name!r} is not a detectron2 ResNet parameter")
    stage, block, conv, norm, leaf = m.groups()
    if conv == "shortcut":
        return f"layer{int(stage) - 1}.{block}.downsample.{1 if norm else 0}.{leaf}"
    return f"layer{int(stage) - 1}.{block}.{conv.replace('conv', 'bn') if norm else conv}.{leaf}"


def _size_major_to_ratio_major(t: Tensor, per_anchor: int) -> Tensor:
    """RPN output channels from detectron2's anchor order (size-major) to torchvision's (ratio-major)."""
    sizes = t.shape[0] // (per_anchor * _RATIOS)
    grouped = t.reshape(sizes, _RATIOS, per_anchor, *t.shape[1:])
    return grouped.transpose(0, 1).reshape(t.shape)


def _take(sd: dict[str, Tensor], key: str, layout: str) -> Tensor:
    if key not in sd:
        raise KeyError(f"{layout} checkpoint has no {key!r}: not that layout (or another model size)")
    return sd.pop(key)


def detector_from_bottom_up_caffe(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """bottom-up attention's Caffe ResNet-101 as ported by MILVLG/bottom-up-attention.pytorch
    (``bua-caffe-frcn-r101_with_attributes.pth``: ``backbone.{stem,res2-4}``, ``proposal_generator.rpn_head``,
    ``roi_heads.res5``, ``roi_heads.box_predictor.{cls_score,bbox_pred,cls_embed,attr_linear1,attr_linear2}``)
    -> the state dict of ``build_detector(**BOTTOM_UP_CAFFE_R101)``.

    Two Caffe conventions are folded into the weights so torchvision's code computes the same numbers: the RPN's
    two-way softmax (background, object) becomes one logit (softmax_fg = sigmoid(fg - bg)), and the box deltas,
    regressed with weights (1, 1, 1, 1) there, are scaled to torchvision's (10, 10, 5, 5).
    """
    layout = "bottom-up-attention (Caffe R101)"
    sd = _weights_dict(checkpoint)
    out = {}
    for key in [k for k in sd if k.startswith("backbone.")]:
        out["backbone." + _resnet_name(key[len("backbone.") :])] = sd.pop(key)
    for key in [k for k in sd if k.startswith("roi_heads.res5.")]:
        name = _resnet_name("res5." + key[len("roi_heads.res5.") :])
        out["roi_heads.box_head.res5." + name[len("layer4.") :]] = sd.pop(key)
    rpn = "proposal_generator.rpn_head"
    for kind in ("weight", "bias"):
        out[f"rpn.head.conv.0.{kind}"] = _take(sd, f"{rpn}.conv.{kind}", layout)
        background, objectness = _take(sd, f"{rpn}.objectness_logits.{kind}", layout).chunk(2)
        out[f"rpn.head.cls_logits.{kind}"] = _size_major_to_ratio_major(objectness - background, 1)
        out[f"rpn.head.bbox_pred.{kind}"] = _size_major_to_ratio_major(
            _take(sd, f"{rpn}.anchor_deltas.{kind}", layout), 4
        )
        out[f"roi_heads.box_predictor.cls_score.{kind}"] = _take(
            sd, f"roi_heads.box_predictor.cls_score.{kind}", layout
        )
        deltas = _take(sd, f"roi_heads.box_predictor.bbox_pred.{kind}", layout)
        scale = deltas.new_tensor([10.0, 10.0, 5.0, 5.0]).repeat(deltas.shape[0] // 4)
        out[f"roi_heads.box_predictor.bbox_pred.{kind}"] = deltas * scale.view(-1, *[1] * (deltas.dim() - 1))
        out[f"attribute_head.fc.{kind}"] = _take(sd, f"roi_heads.box_predictor.attr_linear1.{kind}", layout)
        out[f"attribute_head.score.{kind}"] = _take(sd, f"roi_heads.box_predictor.attr_linear2.{kind}", layout)
    out["attribute_head.embed.weight"] = _take(sd, "roi_heads.box_predictor.cls_embed.weight", layout)
    if sd:
        raise KeyError(f"{layout} checkpoint has keys this importer does not map, e.g. {sorted(sd)[0]!r}")
    return out


def _background_first(t: Tensor) -> Tensor:
    """detectron2 puts the background class last, torchvision first."""
    return torch.cat([t[-1:], t[:-1]])


def detector_from_grid_feats(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """A grid-feats-vqa detector (detectron2 ``GeneralizedRCNN`` + ``AttributeStandardROIHeads``: ``backbone.
    {stem,res2-5}``, ``proposal_generator.rpn_head``, ``roi_heads.box_head.fc{1,2}``, ``roi_heads.box_predictor``,
    ``roi_heads.attribute_predictor.{obj_embed,fc.0,attr_score}``) -> the state dict of
    ``build_detector(**GRID_FEATS_COMMON, **GRID_FEATS[name])``.

    detectron2's background class is moved from last to first, its class-specific box deltas (no background
    row) get a zero background row, and the RPN's size-major anchor channels become torchvision's ratio-major ones.
    """
    layout = "grid-feats-vqa (detectron2)"
    sd = _weights_dict(checkpoint)
    out = {}
    for key in [k for k in sd if k.startswith("backbone.")]:
        out["backbone." + _resnet_name(key[len("backbone.") :])] = sd.pop(key)
    rpn = "proposal_generator.rpn_head"
    for kind in ("weight", "bias"):
        out[f"rpn.head.conv.0.{kind}"] = _take(sd, f"{rpn}.conv.{kind}", layout)
        out[f"rpn.head.cls_logits.{kind}"] = _size_major_to_ratio_major(
            _take(sd, f"{rpn}.objectness_logits.{kind}", layout), 1
        )
        out[f"rpn.head.bbox_pred.{kind}"] = _size_major_to_ratio_major(
            _take(sd, f"{rpn}.anchor_deltas.{kind}", layout), 4
        )
        for ours, theirs in (("fc6", "fc1"), ("fc7", "fc2")):
            out[f"roi_heads.box_head.{ours}.{kind}"] = _take(sd, f"roi_heads.box_head.{theirs}.{kind}", layout)
        out[f"roi_heads.box_predictor.cls_score.{kind}"] = _background_first(
            _take(sd, f"roi_heads.box_predictor.cls_score.{kind}", layout)
        )
        deltas = _take(sd, f"roi_heads.box_predictor.bbox_pred.{kind}", layout)
        out[f"roi_heads.box_predictor.bbox_pred.{kind}"] = torch.cat([deltas.new_zeros(4, *deltas.shape[1:]), deltas])
        out[f"attribute_head.fc.{kind}"] = _take(sd, f"roi_heads.attribute_predictor.fc.0.{kind}", layout)
        out[f"attribute_head.score.{kind}"] = _take(sd, f"roi_heads.attribute_predictor.attr_score.{kind}", layout)
    out["attribute_head.embed.weight"] = _background_first(
        _take(sd, "roi_heads.attribute_predictor.obj_embed.weight", layout)
    )
    if sd:
        raise KeyError(f"{layout} checkpoint has keys this importer does not map, e.g. {sorted(sd)[0]!r}")
    return out


def import_detector(layout: str, source: str | Path, out: str | Path) -> Path:
    """Convert a published detector checkpoint into a ``DetectorModule``-style checkpoint that
    ``python -m vislang.vqa_ensemble.extract --detector`` reads (``hyper_parameters`` = ``build_detector`` args).

    Args:
        layout: ``bottom_up_caffe_r101`` or ``grid_feats_{R-50,X-101,X-152}``.
    """
    from vislang.vqa_ensemble.detector import build_detector

    if layout == "bottom_up_caffe_r101":
        args, convert = dict(BOTTOM_UP_CAFFE_R101), detector_from_bottom_up_caffe
    elif layout.startswith("grid_feats_") and layout[len("grid_feats_") :] in GRID_FEATS:
        args, convert = {**GRID_FEATS_COMMON, **GRID_FEATS[layout[len("grid_feats_") :]]}, detector_from_grid_feats
    else:
        raise ValueError(
            f"layout must be bottom_up_caffe_r101 or grid_feats_{{{','.join(GRID_FEATS)}}}, got {layout!r}"
        )
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: checkpoint not found")
    if source.suffix == ".pkl":  # detectron2 model-zoo pickles hold numpy arrays
        with open(source, "rb") as f:
            checkpoint = pickle.load(f, encoding="latin1")  # noqa: S301 (the user's own download)
    else:
        checkpoint = load_checkpoint(source)
    state = convert(checkpoint)
    with torch.device("meta"):
        detector = build_detector(**args)
    detector.load_state_dict(state, strict=True, assign=True)  # every parameter and buffer, nothing left over
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": args, "state_dict": {f"detector.{k}": v for k, v in state.items()}}, out)
    return out


def main(argv: list[str] | None = None) -> Path:
    import argparse

    p = argparse.ArgumentParser(prog="python -m vislang.vqa_ensemble.convert", description=import_detector.__doc__)
    p.add_argument("--layout", required=True, help="bottom_up_caffe_r101 | grid_feats_R-50 | grid_feats_X-101 | ...")
    p.add_argument("--checkpoint", required=True, help="the published .pth / .pkl")
    p.add_argument("--out", required=True, help="where the converted detector checkpoint is written")
    args = p.parse_args(argv)
    return import_detector(args.layout, args.checkpoint, args.out)


if __name__ == "__main__":
    try:
        print(main())
    except (FileNotFoundError, KeyError, ValueError, TypeError) as error:
        sys.exit(f"error: {error}")
