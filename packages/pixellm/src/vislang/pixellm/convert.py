"""Load released PixelLM weights, LLaVA base weights and CLIP weights from local Hugging Face directories.

A Hugging Face directory holds `model.safetensors`, `pytorch_model.bin`, or shards listed in
`*.index.json`; the released PixelLM models keep them in an `hf_model/` subfolder (PixelLM #25), which is
found automatically. Reading goes through `vislang.shared.checkpoint` (no pickle code execution).

Key mapping of the released PixelLM (`PixelLMForCausalLM` after `merge_lora_weights_and_save_hf_model.py`):

=====================================================  ==========================================================
released key                                           this package
=====================================================  ==========================================================
`model.embed_tokens.*`, `model.layers.*`, `model.norm`  `llm.model.*` (q/v projections -> `*.base_layer.*`:
`lm_head.*`                                             LoRA is merged into them in the release)
(no `vision_tower` key: the merge script drops them)   `vision.*` from CLIP's own weights (`vision_weights`)
`model.mm_projector.*`, `model.out_mm_projector.*`     `mm_projector.*`, `out_mm_projector.*`
`model.text_hidden_fcs.0.*`                            `text_hidden_fcs.*`
`model.image_feature_neck.*`                           `neck.*`
`model.prompt_encoder.no_mask_embed` / `.pe_layer`     `decoder.no_mask_embed` / `decoder.pe.0`
`model.mask_decoder.pe1`                               `decoder.pe.1`
`model.mask_decoder.transformer.{l}.*`                 `decoder.transformers.{l}.*`
`model.mask_decoder.upsample_2x.*`                     `decoder.level_upsample.1.*`
`model.mask_decoder.output_upscaling.*`, `level_embed`  `decoder.output_upscaling.*`, `decoder.level_embed`
`model.mask_decoder.iou_token`, `.mask_tokens`         `decoder.iou_token`, `decoder.mask_tokens` (all attend)
`model.mask_decoder.output_hypernetworks_mlps.0.*`     `decoder.hypernetwork.*`
hypernetworks 1-3, `iou_prediction_head`, the prompt   dropped: their outputs are never read (single-mask
encoder's point / box / mask-input embeddings           output, no point, box or mask prompts)
=====================================================  ==========================================================

The release never saves the fusion weights and scale weights γ (unregistered lists, fixed at 1/N and
1/L): they keep this package's initial values, which equal those.

CLIP comes from its own checkpoint (`openai/clip-vit-large-patch14-336` in HF layout), as the released code
loads it: its 24x24 position grid is interpolated to 32x32 as `clip_encoder.py` did for the released model
(`clip_positions="official"`, see `interpolate_clip_position_embeddings`); `"fixed"` keeps CLS at index 0.

`apply_llava_delta` turns a released LLaVA *delta* (LLaVA-Lightning-7B-delta-v1-1) into the LLaVA weights by
adding the base LLaMA's tensors (`python -m vislang.pixellm.convert apply-delta --base ... --delta ...
--out ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from vislang.pixellm.model import PixelLM, interpolate_clip_position_embeddings
from vislang.shared.checkpoint import LoadReport, load_into, load_state_dict, rename_keys, save_state_dict

__all__ = [
    "PIXELLM_RULES",
    "apply_llava_delta",
    "load_clip_weights",
    "load_llava_weights",
    "load_pixellm_weights",
    "read_hf_directory",
]

_LLM_RULES: list[tuple[str, str | None]] = [
    (r"\.rotary_emb\.inv_freq$", None),  # a buffer older transformers saved; recomputed from the config
    (r"^model\.(embed_tokens|layers|norm)\.", r"llm.model.\1."),
    (r"^lm_head\.", "llm.lm_head."),
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "vision."),
]
PIXELLM_RULES: list[tuple[str, str | None]] = [
    *_LLM_RULES,
    (r"^model\.(mm_projector|out_mm_projector)\.", r"\1."),
    (r"^model\.text_hidden_fcs\.0\.", "text_hidden_fcs."),
    (r"^model\.image_feature_neck\.", "neck."),
    (r"^model\.prompt_encoder\.no_mask_embed\.", "decoder.no_mask_embed."),
    (r"^model\.prompt_encoder\.pe_layer\.", "decoder.pe.0."),
    (r"^model\.prompt_encoder\..*", None),  # point / box / mask-input embeddings: unused
    (r"^model\.mask_decoder\.pe1\.", "decoder.pe.1."),
    (r"^model\.mask_decoder\.transformer\.", "decoder.transformers."),
    (r"^model\.mask_decoder\.upsample_2x\.", "decoder.level_upsample.1."),
    (r"^model\.mask_decoder\.(output_upscaling|level_embed)\.", r"decoder.\1."),
    (r"^model\.mask_decoder\.output_hypernetworks_mlps\.0\.", "decoder.hypernetwork."),
    (r"^model\.mask_decoder\.(iou_token|mask_tokens)\.", r"decoder.\1."),
    (r"^model\.mask_decoder\.(output_hypernetworks_mlps|iou_prediction_head)\..*", None),  # outputs never read
]
_ALLOWED_MISSING = [r".*\.lora_[AB]\..*", r"fusion\..*", r"decoder\.scale_weights"]


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _from_hub(name: str) -> Path:
    """The local snapshot of a Hugging Face hub model (e.g. `openai/clip-vit-large-patch14-336`): taken from the
    cache, downloaded first when the machine is online (safetensors preferred)."""
    from huggingface_hub import snapshot_download

    for weights in ("*.safetensors", "pytorch_model*.bin"):
        path = Path(snapshot_download(name, allow_patterns=["*.json", weights]))
        if any(path.glob(weights)):
            return path
    raise FileNotFoundError(f"{name}: the hub snapshot holds no *.safetensors or pytorch_model*.bin")


def read_hf_directory(directory: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a Hugging Face model directory (single file or shards; `hf_model/` is looked into), or of
    a hub model name such as `openai/clip-vit-large-patch14-336` (from the local cache, or downloaded)."""
    path = Path(directory).expanduser()
    if not path.exists() and _HUB_NAME.match(str(directory)):
        path = _from_hub(str(directory))
    if not path.is_dir():
        raise FileNotFoundError(f"weights directory not found: {path}")
    for candidate in (path, path / "hf_model"):
        indices = sorted(candidate.glob("*.index.json"))
        if indices:
            shards = sorted(set(json.loads(indices[0].read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(load_state_dict(candidate / shard))
            return state
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (candidate / name).is_file():
                return load_state_dict(candidate / name)
    raise FileNotFoundError(f"{path}: no model.safetensors, pytorch_model.bin or *.index.json (also not in hf_model/)")


ClipPositions = Literal["official", "fixed"]


def _fit_to_model(
    model: PixelLM, state: dict[str, Tensor], clip_positions: ClipPositions = "official"
) -> dict[str, Tensor]:
    """Adapt released shapes: LoRA base-layer names, vocabulary rows, the CLIP position grid."""
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in own and key.endswith(".weight") and key.replace(".weight", ".base_layer.weight") in own:
            key = key.replace(".weight", ".base_layer.weight")
        elif key not in own and key.endswith(".bias") and key.replace(".bias", ".base_layer.bias") in own:
            key = key.replace(".bias", ".base_layer.bias")
        if key == "vision.embeddings.position_embedding.weight" and key in own and value.shape != own[key].shape:
            value = interpolate_clip_position_embeddings(value, model.config.vision_grid, clip_positions)
        if key in ("llm.model.embed_tokens.weight", "llm.lm_head.weight") and key in own:
            rows = own[key].shape[0]
            if value.shape[0] > rows:
                raise ValueError(
                    f"{key}: checkpoint vocabulary {value.shape[0]} > model vocabulary {rows}; "
                    "use the checkpoint's tokenizer"
                )
            if value.shape[0] < rows:  # rows the checkpoint lacks (e.g. <image>) keep their initial values
                value = torch.cat([value, own[key][value.shape[0] :].to(value.dtype)])
        out[key] = value
    return out


def load_pixellm_weights(
    model: PixelLM,
    directory: str | os.PathLike[str],
    strict: bool = True,
    vision_weights: str | os.PathLike[str] | None = None,
    clip_positions: ClipPositions = "official",
) -> LoadReport:
    """Released PixelLM weights (HF layout) into `model`; every kept key must fit (see the module table).

    The official merge script saves no `vision_tower` key, so CLIP comes from its own weights:
    `vision_weights` is a local HF CLIP directory (`openai/clip-vit-large-patch14-336`). Strict loading
    without it stops with one line naming what is missing.
    """
    state = _fit_to_model(model, rename_keys(read_hf_directory(directory), PIXELLM_RULES))
    has_vision = any(k.startswith("vision.") for k in state)
    if vision_weights is not None:
        load_clip_weights(model, vision_weights, clip_positions)
    elif strict and not has_vision:
        raise ValueError(
            f"{directory}: the release holds no vision tower (the official merge script drops every "
            "`vision_tower` key); give CLIP's own weights: `vision_weights: <local dir of "
            "openai/clip-vit-large-patch14-336>` (in a config: `model.init_args.clip_weights`)"
        )
    allowed = [*_ALLOWED_MISSING, r"vision\..*"] if vision_weights is not None else _ALLOWED_MISSING
    report = load_into(model, state, strict=strict, allowed_missing=allowed)
    if vision_weights is not None:  # loaded from CLIP's own weights above
        report.missing = [k for k in report.missing if not k.startswith("vision.")]
    return report


def load_llava_weights(
    model: PixelLM,
    directory: str | os.PathLike[str],
    clip_directory: str | os.PathLike[str] | None = None,
    clip_positions: ClipPositions = "official",
) -> LoadReport:
    """LLaVA base weights (the LLM; the vision tower if saved) and optionally CLIP from its own directory.

    LLaVA's linear `mm_projector` is not loaded: PixelLM's is a 2-layer MLP trained from scratch (released
    `separate_mm_projector`). The report lists what stayed at its initial values.
    """
    state = rename_keys(read_hf_directory(directory), [*_LLM_RULES, (r"^model\.mm_projector\..*", None)])
    state = {k: v for k, v in state.items() if k.startswith(("llm.", "vision."))}
    report = load_into(model, _fit_to_model(model, state, clip_positions))
    if clip_directory is not None:
        load_clip_weights(model, clip_directory, clip_positions)
        report.missing = [k for k in report.missing if not k.startswith("vision.")]
    return report


def load_clip_weights(
    model: PixelLM, directory: str | os.PathLike[str], clip_positions: ClipPositions = "official"
) -> LoadReport:
    """An HF CLIP (`openai/clip-vit-large-patch14-336` layout) vision tower into `model.vision`; its position grid
    is interpolated to the model's as the released code did (`official`) or with CLS at index 0 (`fixed`)."""
    state = rename_keys(read_hf_directory(directory), [(r"^(?!vision_model\.)", None), (r"^vision_model\.", "vision.")])
    return load_into(
        model, _fit_to_model(model, state, clip_positions), strict=True, allowed_missing=[r"(?!vision\.).*"]
    )


def apply_llava_delta(base: str | os.PathLike[str], delta: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """LLaVA weights = delta + base LLaMA (LLaVA's `apply_delta.py` rule), written as `out/model.safetensors`.

    Tensors the base lacks (the projector) are copied from the delta; embedding rows the delta adds (new
    tokens) are kept as in the delta, the base rows are added to the first rows. Tokenizer and config files of
    the delta directory are copied along.
    """
    base_state, delta_state = read_hf_directory(base), read_hf_directory(delta)
    merged: dict[str, Tensor] = {}
    for key, value in delta_state.items():
        if key not in base_state:
            merged[key] = value.clone()
            continue
        b = base_state[key].to(value.dtype)
        if b.shape == value.shape:
            merged[key] = value + b
        elif key.endswith(("embed_tokens.weight", "lm_head.weight")) and b.shape[1:] == value.shape[1:]:
            merged[key] = value.clone()
            merged[key][: b.shape[0]] += b
        else:
            raise ValueError(f"{key}: delta shape {tuple(value.shape)} does not fit base shape {tuple(b.shape)}")
    target = Path(out).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    save_state_dict({k: v.contiguous() for k, v in merged.items()}, target / "model.safetensors")
    delta_dir = Path(delta).expanduser()
    for extra in delta_dir.glob("*"):
        if extra.is_file() and extra.suffix in (".json", ".model") and "index" not in extra.name:
            (target / extra.name).write_bytes(extra.read_bytes())
    return target


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m vislang.pixellm.convert apply-delta --base LLAMA --delta DELTA --out DIR`."""
    parser = argparse.ArgumentParser(prog="python -m vislang.pixellm.convert")
    commands = parser.add_subparsers(dest="command", required=True)
    delta = commands.add_parser("apply-delta", help="LLaVA delta + base LLaMA -> LLaVA weights")
    delta.add_argument("--base", required=True, help="local HF directory of the base LLaMA (e.g. LLaMA-7B)")
    delta.add_argument("--delta", required=True, help="local HF directory of the delta (LLaVA-Lightning-7B-delta-v1-1)")
    delta.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    print(apply_llava_delta(args.base, args.delta, args.out))


if __name__ == "__main__":
    main()
