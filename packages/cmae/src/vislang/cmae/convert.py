"""Checkpoint import and export for CMAE encoders.

Every layout is renamed to timm's ``VisionTransformer`` names, which is what ``ViTEncoder`` uses:

========================  =====================================================================
layout                    recognised by / renamed how
========================  =====================================================================
``timm`` / MAE            ``blocks.0.norm1.weight``; MAE's ``{'model': ...}`` and timm's files as they are
                          (MAE ``_full`` files: ``decoder_*`` and ``mask_token`` dropped)
``cmae`` (official, mm)   ``layers.0.ln1.weight`` under ``backbone.`` (runner ckpt) or bare (released PT
                          file): ``patch_embed.projection`` -> ``patch_embed.proj``, ``layers`` -> ``blocks``,
                          ``ln1/ln2`` -> ``norm1/norm2``, ``ffn.layers.0.0`` -> ``mlp.fc1``,
                          ``ffn.layers.1`` -> ``mlp.fc2``, top-level ``ln1`` -> ``norm``, ``head.head`` -> ``head``
``cmae_encoder_s``        the pre-release ``cmae_vit_b16.pth``: timm names under ``encoder_s.``
``convmae`` / VideoConvMAE ``blocks3.0.attn.qkv.weight``, ``patch_embed1.proj``: ConvMAE's names are ours except
                          ``blocks3`` -> ``blocks``; its decoder (``decoder_*``, ``mask_token``) is dropped
``videomae``              ``encoder.blocks.0.attn.q_bias``: ``encoder.`` stripped, ``qkv.bias`` =
                          cat(q_bias, 0, v_bias), decoder / ``encoder_to_decoder`` / ``mask_token`` dropped
``vislang``               our own Lightning checkpoints (``model.encoder.*`` / ``model.target_encoder.*``)
========================  =====================================================================

Three entry points, by what the weights go into:

* ``load_encoder`` -- an encoder (``ViTEncoder`` / ``ConvViTEncoder``) from any layout.
* ``load_classifier`` -- a ``CMAEClassifier``: the encoder plus the fine-tuned ``fc_norm`` and ``head`` when the
  file has them (CMAE's ``backbone.fc_norm`` / ``head.head``, MAE's / VideoMAE's / ConvMAE's ``fc_norm`` /
  ``head``), so a released fine-tuned model evaluates as it did officially.
* ``load_cmae`` -- a whole ``CMAE`` to continue pre-training: an official CMAE runner checkpoint fills every
  module (encoder, target encoder, both decoders, projector, target projector, predictor), as does one of
  ours; an MAE ``_full`` / ConvMAE pre-training file fills the encoder (copied to the target) and the pixel
  decoder; an encoder-only file fills the encoder and the target.

CMAE's ``pos_embed`` follows mmselfsup's sin-cos layout (halves swapped w.r.t. MAE), so it is loaded from
the checkpoint, never regenerated. Reading goes through ``vislang.shared.checkpoint`` (``weights_only``
loading with an allow-list of inert metadata types; no pickle code runs).

Command line::

    python -m vislang.cmae.convert cmae_vit-base-p16_32xb128-coslr-1600e_in1k.pth cmae_vit_base.safetensors
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from vislang.shared.checkpoint import LoadReport, load_into, load_state_dict, rename_keys, save_state_dict

__all__ = [
    "Layout",
    "detect_layout",
    "export_timm",
    "load_classifier",
    "load_cmae",
    "load_encoder",
    "main",
    "to_timm",
]

Layout = Literal["timm", "cmae", "cmae_encoder_s", "convmae", "videomae", "vislang"]
LAYOUTS = ("timm", "cmae", "cmae_encoder_s", "convmae", "videomae", "vislang")

# official mmengine names -> timm names (CMAE tools/extract_backbone_weights + mmcv module names)
_MM_RULES: list[tuple[str, str | None]] = [
    (r"^(target_backbone|pixel_decoder|feature_decoder|projector|target_projector|head\.predictor)\.", None),
    (r"^backbone\.", ""),
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.", r"blocks.\1."),
    (r"^(blocks\.\d+)\.ln1\.", r"\1.norm1."),
    (r"^(blocks\.\d+)\.ln2\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.ffn\.layers\.0\.0\.", r"\1.mlp.fc1."),
    (r"^(blocks\.\d+)\.ffn\.layers\.1\.", r"\1.mlp.fc2."),
    (r"^ln1\.", "norm."),
    (r"^ln2\.", "fc_norm."),  # mmpretrain's post-pool norm with out_type='avg_featmap'
    (r"^head\.head\.", "head."),
]

# a whole official CMAE runner state dict -> our CMAE's module names (cmae/models/algorithms/cmae.py)
_RUNNER_RULES: list[tuple[str, str | None]] = [
    (r"^data_preprocessor\.", None),
    (r"^head\.predictor\.", "predictor."),
    (r"^backbone\.", "encoder."),
    (r"^target_backbone\.", "target_encoder."),
    (r"^(encoder|target_encoder)\.patch_embed\.projection\.", r"\1.patch_embed.proj."),
    (r"^(encoder|target_encoder)\.layers\.(\d+)\.", r"\1.blocks.\2."),
    (r"^(encoder|target_encoder)\.ln1\.", r"\1.norm."),  # final LN of the online encoder
    (r"^(pixel_decoder|feature_decoder)\.ln1\.", r"\1.decoder_norm."),
    (r"\.(blocks|decoder_blocks)\.(\d+)\.ln1\.", r".\1.\2.norm1."),
    (r"\.(blocks|decoder_blocks)\.(\d+)\.ln2\.", r".\1.\2.norm2."),
    (r"\.ffn\.layers\.0\.0\.", ".mlp.fc1."),
    (r"\.ffn\.layers\.1\.", ".mlp.fc2."),
]
_CMAE_MODULES = (
    "backbone.",
    "target_backbone.",
    "pixel_decoder.",
    "feature_decoder.",
    "projector.",
    "target_projector.",
    "head.predictor.",
)
# MAE (`_full`, `visualize`) and ConvMAE pre-training files: the pixel decoder under MAE's names, which are ours
_MAE_DECODER = re.compile(r"^(decoder_embed|decoder_blocks|decoder_norm|decoder_pred|decoder_pos_embed|mask_token)\b")


def _strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {re.sub(r"^(module\.)+", "", k): v for k, v in state.items()}


def detect_layout(state: Mapping[str, Tensor]) -> Layout:
    """Which checkpoint family a state dict comes from (see the module docstring)."""
    keys = list(_strip_wrappers(state))
    if any(k.startswith(("model.encoder.", "model.target_encoder.")) for k in keys):
        return "vislang"
    if any(k.startswith("encoder_s.") for k in keys):
        return "cmae_encoder_s"
    if any(re.search(r"(^|\.)layers\.\d+\.ln1\.", k) or "patch_embed.projection" in k for k in keys):
        return "cmae"
    if any(re.match(r"^(backbone\.)?(blocks3\.|patch_embed1\.)", k) for k in keys):
        return "convmae"
    if any(k.endswith("attn.q_bias") for k in keys) or any(k.startswith("encoder.blocks.") for k in keys):
        return "videomae"
    if any(re.match(r"^blocks\.\d+\.norm1\.", k) for k in keys):
        return "timm"
    raise ValueError(
        f"unrecognised checkpoint layout (first keys {keys[:5]}); expected timm/MAE ('blocks.0.norm1.weight'), "
        "official CMAE ('layers.0.ln1.weight'), 'encoder_s.', ConvMAE ('blocks3.0.norm1.weight') or VideoMAE "
        "('encoder.blocks.0.attn.q_bias'); pass layout= to force one"
    )


def _fold_qv_bias(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """VideoMAE/BEiT keep q and v biases apart and no k bias; timm's ``qkv.bias`` = cat(q, 0, v)."""
    out = {}
    for key, value in state.items():
        if key.endswith("attn.q_bias"):
            prefix = key[: -len("q_bias")]
            v_bias = state[prefix + "v_bias"]
            out[prefix + "qkv.bias"] = torch.cat([value, torch.zeros_like(v_bias), v_bias])
        elif not key.endswith("attn.v_bias"):
            out[key] = value
    return out


def to_timm(state: Mapping[str, Tensor], layout: Layout | None = None, branch: str = "encoder") -> dict[str, Tensor]:
    """Rename an encoder state dict of any supported layout to timm ViT names (encoder keys only, plus
    ``fc_norm``/``head`` of fine-tuned files).

    Args:
        state: the loaded tensors.
        layout: force a layout instead of ``detect_layout``.
        branch: for our own checkpoints, ``encoder`` (online) or ``target_encoder`` (momentum).
    """
    state = _strip_wrappers(state)
    layout = layout or detect_layout(state)
    if layout == "vislang":
        prefix = f"model.{branch}."
        out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if branch == "encoder":  # a fine-tuning checkpoint of ours: its classifier too
            out.update({k[len("model.") :]: v for k, v in state.items() if k.startswith(_CLASSIFIER_PREFIXES)})
        return out
    if layout == "cmae_encoder_s":
        state = {k[len("encoder_s.") :]: v for k, v in state.items() if k.startswith("encoder_s.")}
        layout = "timm"
    if layout == "cmae":
        if any(k.startswith("backbone.") for k in state):  # runner checkpoint: keep the online backbone + head
            state = {k: v for k, v in state.items() if k.startswith(("backbone.", "head.head."))}
        return rename_keys(state, _MM_RULES)
    if layout == "convmae":
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
        state = {re.sub(r"^blocks3\.", "blocks.", k): v for k, v in state.items() if not _MAE_DECODER.match(k)}
        return state
    if layout == "videomae":
        state = {
            k.removeprefix("encoder."): v for k, v in state.items() if not k.startswith(("decoder.", "encoder_to"))
        }
        state = {k: v for k, v in state.items() if k != "mask_token"}
        return _fold_qv_bias(state)
    # timm / MAE: drop an MAE `_full` file's decoder
    return {k: v for k, v in state.items() if not _MAE_DECODER.match(k)}


_CLASSIFIER_PREFIXES = ("model.fc_norm.", "model.head.", "model.head_norm.")
_HEAD = re.compile(r"^(fc_norm|head|head_norm)\.")


def _read(path_or_state: str | os.PathLike[str] | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(path_or_state, (str, os.PathLike)):
        return load_state_dict(path_or_state)
    return dict(path_or_state)


def load_encoder(
    encoder: nn.Module,
    path_or_state: str | os.PathLike[str] | Mapping[str, Tensor],
    layout: Layout | None = None,
    strict: bool = True,
    branch: str = "encoder",
) -> LoadReport:
    """Load MAE / timm / official CMAE / VideoMAE / vislang weights into a ``ViTEncoder``.

    A checkpoint without ``pos_embed`` (VideoMAE) keeps the encoder's fixed sinusoid table; one without
    the final ``norm`` (fine-tuned files) keeps the encoder's initial norm. Everything else must match.

    Returns:
        The ``LoadReport`` (``fc_norm``/``head`` of fine-tuned files are reported as unexpected).
    """
    state = to_timm(_read(path_or_state), layout, branch)
    if "pos_embed" in state and hasattr(encoder, "pos_embed") and state["pos_embed"].shape != encoder.pos_embed.shape:
        raise ValueError(
            f"pos_embed of the checkpoint has shape {tuple(state['pos_embed'].shape)}, the encoder "
            f"{tuple(encoder.pos_embed.shape)}: build the preset with the checkpoint's img_size/patch_size"
        )
    return load_into(
        encoder,
        state,
        strict=strict,
        allowed_missing=[r"pos_embed", r"norm\.(weight|bias)"],
        # fine-tuned files carry fc_norm/head; a classifier's encoder has no final norm (global pooling) and
        # the hybrid's fine-tuning encoder no fusion convs
        allowed_unexpected=[r"fc_norm\..*", r"head\..*", r"head_norm\..*"]
        + ([r"norm\..*"] if isinstance(encoder.norm, nn.Identity) else [])
        + ([r"stage[12]_output_decode\..*"] if getattr(encoder, "fuse", True) is False else []),
    )


def load_classifier(
    classifier: nn.Module,
    path_or_state: str | os.PathLike[str] | Mapping[str, Tensor],
    layout: Layout | None = None,
    strict: bool = True,
) -> LoadReport:
    """Load a pre-trained or fine-tuned checkpoint into a ``CMAEClassifier`` (encoder, ``fc_norm``, ``head``).

    A fine-tuned file (CMAE's ``backbone.fc_norm`` + ``head.head``; MAE / VideoMAE / ConvMAE ``fc_norm`` +
    ``head``; ours) fills the classifier completely, so it evaluates as the official model does (mean of the
    patch tokens -> ``fc_norm`` -> ``head``). A pre-trained file fills the encoder; ``fc_norm`` and ``head``
    keep their initialisation (reported missing), as do a head of another class count (reported
    shape-mismatched).

    Returns:
        One ``LoadReport`` for the whole classifier (keys prefixed ``encoder.`` for the encoder).
    """
    state = to_timm(_read(path_or_state), layout)
    head = {k: v for k, v in state.items() if _HEAD.match(k)}
    encoder_report = load_encoder(
        classifier.encoder, {k: v for k, v in state.items() if not _HEAD.match(k)}, layout="timm", strict=strict
    )
    # the encoder is loaded above; fc_norm / head may be absent (pre-trained file) or of another class count
    head_report = load_into(classifier, head, strict=strict, allowed_missing=[r".*"])
    return LoadReport(
        missing=[f"encoder.{k}" for k in encoder_report.missing]
        + [k for k in head_report.missing if not k.startswith("encoder.")],
        unexpected=[f"encoder.{k}" for k in encoder_report.unexpected] + head_report.unexpected,
        mismatched=[(f"encoder.{k}", a, b) for k, a, b in encoder_report.mismatched] + head_report.mismatched,
    )


def load_cmae(
    model: nn.Module,
    path_or_state: str | os.PathLike[str] | Mapping[str, Tensor],
    layout: Layout | None = None,
    strict: bool = True,
) -> LoadReport:
    """Load a checkpoint into a whole ``CMAE`` to continue pre-training.

    * An official CMAE runner checkpoint (``backbone.*`` with ``target_backbone.*``, decoders, projectors,
      ``head.predictor.*``) or one of ours (``model.*``): every module; the official target encoder has no
      final LayerNorm (ours has one it never applies), which is the only key allowed to be missing.
    * An MAE ``_full`` / ConvMAE / VideoMAE pre-training file: the encoder (also copied into the target encoder,
      as the official ``init_weights`` does) and the pixel decoder (MAE's names in the first two; VideoMAE's
      renamed by ``_videomae_decoder``).
    * Any encoder-only file ``load_encoder`` reads: the encoder, copied into the target encoder.

    Returns:
        The ``LoadReport`` over the whole model (what stayed at its initial values is ``missing``).
    """
    raw = _strip_wrappers(_read(path_or_state))
    layout = layout or detect_layout(raw)
    if layout == "vislang" and any(k.startswith("model.target_encoder.") for k in raw):
        state = {k[len("model.") :]: v for k, v in raw.items() if k.startswith("model.")}
        return load_into(model, state, strict=strict)
    if layout == "cmae" and any(k.startswith(_CMAE_MODULES[1:]) for k in raw):
        state = rename_keys({k: v for k, v in raw.items() if k.startswith(_CMAE_MODULES)}, _RUNNER_RULES)
        return load_into(model, state, strict=strict, allowed_missing=[r"target_encoder\.norm\.(weight|bias)"])
    encoder_report = load_encoder(model.encoder, raw, layout, strict=strict)
    model.target_encoder.load_state_dict(model.encoder.state_dict())
    decoder = {k: v for k, v in raw.items() if _MAE_DECODER.match(k)} if layout in ("timm", "convmae") else {}
    if layout == "videomae" and "encoder_to_decoder.weight" in raw:
        decoder = _videomae_decoder(raw)
    loaded = {f"encoder.{k}" for k in model.encoder.state_dict()} - {f"encoder.{k}" for k in encoder_report.missing}
    loaded |= {k.replace("encoder.", "target_encoder.", 1) for k in loaded}
    if decoder:  # VideoMAE's decoder table is not stored: ours is the same sinusoid
        load_into(model.pixel_decoder, decoder, strict=strict, allowed_missing=[r"decoder_pos_embed"])
        loaded |= {f"pixel_decoder.{k}" for k in decoder}
    return LoadReport(
        missing=[k for k in model.state_dict() if k not in loaded],
        unexpected=[f"encoder.{k}" for k in encoder_report.unexpected],
        mismatched=[(f"encoder.{k}", a, b) for k, a, b in encoder_report.mismatched],
    )


def _videomae_decoder(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """VideoMAE's pre-training decoder under our ``MaskedDecoder`` names: ``encoder_to_decoder`` (no bias) ->
    ``decoder_embed`` (zero bias), ``decoder.blocks`` (q/v biases folded) -> ``decoder_blocks``, ``decoder.norm``
    -> ``decoder_norm``, ``decoder.head`` -> ``decoder_pred``. Its decoder predicts only the masked tokens;
    attention does not depend on the token order, so ours, which predicts every position, agrees on them."""
    weight = state["encoder_to_decoder.weight"]
    out = {
        "decoder_embed.weight": weight,
        "decoder_embed.bias": weight.new_zeros(weight.shape[0]),
        "mask_token": state["mask_token"],
    }
    blocks = _fold_qv_bias({k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")})
    rules = [(r"^blocks\.", "decoder_blocks."), (r"^norm\.", "decoder_norm."), (r"^head\.", "decoder_pred.")]
    return {**out, **rename_keys(blocks, rules)}


def export_timm(model: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> Path:
    """Write an encoder (``ViTEncoder``, ``CMAE`` -> its online encoder, or ``CMAEClassifier`` with its
    ``fc_norm``/``head``) as timm-compatible safetensors: ``timm.create_model('vit_base_patch16_224',
    pretrained_cfg_overlay=dict(file=path))`` or ``load_state_dict`` on a ``VisionTransformer`` read it."""
    if hasattr(model, "fc_norm") and hasattr(model, "head"):  # classifier: timm global_pool='avg' layout
        state = {f"{k}": v for k, v in model.encoder.state_dict().items() if not k.startswith("norm.")}
        state.update({f"fc_norm.{k}": v for k, v in model.fc_norm.state_dict().items()})
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    else:
        encoder = model.encoder if hasattr(model, "target_encoder") else model
        state = dict(encoder.state_dict())
    return save_state_dict(state, path, metadata={"format": "timm", **(metadata or {})})


def main(argv: list[str] | None = None) -> None:
    """``python -m vislang.cmae.convert SRC DST [--layout L] [--branch target_encoder]``."""
    parser = argparse.ArgumentParser(description="Convert a CMAE/MAE/VideoMAE encoder checkpoint to timm safetensors")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--layout", choices=LAYOUTS)
    parser.add_argument("--branch", default="encoder", help="for vislang checkpoints: encoder or target_encoder")
    args = parser.parse_args(argv)
    state = to_timm(load_state_dict(args.src), args.layout, args.branch)
    save_state_dict(state, args.dst, metadata={"format": "timm", "source": Path(args.src).name})
    print(f"wrote {len(state)} tensors to {args.dst}")


if __name__ == "__main__":
    main()
