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
`model.vision_tower.vision_tower.vision_model.*`       `vision.*` (positions interpolated if the grid differs)
`model.mm_projector.*`, `model.out_mm_projector.*`     `mm_projector.*`, `out_mm_projector.*`
`model.text_hidden_fcs.0.*`                            `text_hidden_fcs.*`
`model.image_feature_neck.*`                           `neck.*`
`model.prompt_encoder.no_mask_embed` / `.pe_layer`     `decoder.no_mask_embed` / `decoder.pe.0`
`model.mask_decoder.pe1`                               `decoder.pe.1`
`model.mask_decoder.transformer.{l}.*`                 `decoder.transformers.{l}.*`
`model.mask_decoder.upsample_2x.*`                     `decoder.level_upsample.1.*`
`model.mask_decoder.output_upscaling.*`, `level_embed`  `decoder.output_upscaling.*`, `decoder.level_embed`
`model.mask_decoder.output_hypernetworks_mlps.0.*`     `decoder.hypernetwork.*`
`model.mask_decoder.mask_tokens` (row 0)               `decoder.mask_token`
`iou_token`, `iou_prediction_head`, other mask tokens  dropped (unused: single-mask output)
=====================================================  ==========================================================

The release never saves the fusion weights and scale weights γ (unregistered lists, fixed at 1/N and
1/L): they keep this package's initial values, which equal those.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from vislang.pixellm.model import PixelLM, interpolate_clip_position_embeddings
from vislang.shared.checkpoint import LoadReport, load_into, load_state_dict, rename_keys

__all__ = [
    "PIXELLM_RULES",
    "load_clip_weights",
    "load_llava_weights",
    "load_pixellm_weights",
    "read_hf_directory",
]

_LLM_RULES: list[tuple[str, str | None]] = [
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
    (r"^model\.mask_decoder\.mask_tokens\.weight$", "decoder.mask_token.weight"),
    (r"^model\.mask_decoder\..*", None),  # iou token/head and the 3 multimask tokens: unused
]
_ALLOWED_MISSING = [r".*\.lora_[AB]\..*", r"fusion\..*", r"decoder\.scale_weights"]


def read_hf_directory(directory: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a Hugging Face model directory (single file or shards; `hf_model/` is looked into)."""
    path = Path(directory).expanduser()
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


def _fit_to_model(model: PixelLM, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adapt released shapes: LoRA base-layer names, vocab rows, CLIP position grid, mask-token row 0."""
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in own and key.endswith(".weight") and key.replace(".weight", ".base_layer.weight") in own:
            key = key.replace(".weight", ".base_layer.weight")
        elif key not in own and key.endswith(".bias") and key.replace(".bias", ".base_layer.bias") in own:
            key = key.replace(".bias", ".base_layer.bias")
        if key == "decoder.mask_token.weight":
            value = value[:1]
        if key == "vision.embeddings.position_embedding.weight" and key in own and value.shape != own[key].shape:
            value = interpolate_clip_position_embeddings(value, model.config.vision_grid)
        if key in ("llm.model.embed_tokens.weight", "llm.lm_head.weight") and key in own:
            rows = own[key].shape[0]
            if value.shape[0] > rows:
                raise ValueError(f"{key}: checkpoint vocabulary {value.shape[0]} > model vocabulary {rows}; "
                                 "use the checkpoint's tokenizer")  # fmt: skip
            if value.shape[0] < rows:  # base vocabulary only: the codebook and <image> rows keep their init
                value = torch.cat([value, own[key][value.shape[0] :].to(value.dtype)])
        out[key] = value
    return out


def load_pixellm_weights(model: PixelLM, directory: str | os.PathLike[str], strict: bool = True) -> LoadReport:
    """Released PixelLM weights (HF layout) into `model`; every kept key must fit (see the module table)."""
    state = _fit_to_model(model, rename_keys(read_hf_directory(directory), PIXELLM_RULES))
    return load_into(model, state, strict=strict, allowed_missing=_ALLOWED_MISSING)


def load_llava_weights(
    model: PixelLM, directory: str | os.PathLike[str], clip_directory: str | os.PathLike[str] | None = None
) -> LoadReport:
    """LLaVA base weights (the LLM; the vision tower if saved) and optionally CLIP from its own directory.

    LLaVA's linear `mm_projector` is not loaded: PixelLM's is a 2-layer MLP trained from scratch (released
    `separate_mm_projector`). The report lists what stayed at its initial values.
    """
    state = rename_keys(read_hf_directory(directory), [*_LLM_RULES, (r"^model\.mm_projector\..*", None)])
    state = {k: v for k, v in state.items() if k.startswith(("llm.", "vision."))}
    report = load_into(model, _fit_to_model(model, state))
    if clip_directory is not None:
        load_clip_weights(model, clip_directory)
        report.missing = [k for k in report.missing if not k.startswith("vision.")]
    return report


def load_clip_weights(model: PixelLM, directory: str | os.PathLike[str]) -> LoadReport:
    """An HF CLIP (`openai/clip-vit-large-patch14-336` layout) vision tower into `model.vision`."""
    state = rename_keys(read_hf_directory(directory), [(r"^(?!vision_model\.)", None), (r"^vision_model\.", "vision.")])
    return load_into(model, _fit_to_model(model, state), strict=True,
                     allowed_missing=[r"(?!vision\.).*"])  # fmt: skip
