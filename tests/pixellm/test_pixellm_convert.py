"""Released PixelLM (HF layout), LLaVA base and CLIP weights load into the model, from fabricated tiny state dicts."""

from __future__ import annotations

import json
import re

import pytest
import torch

from vislang.pixellm.convert import load_clip_weights, load_llava_weights, load_pixellm_weights
from vislang.pixellm.model import build_pixellm, interpolate_clip_position_embeddings
from vislang.shared.checkpoint import save_state_dict

VOCAB = 434
BASE_VOCAB = 427  # the released embedding covers the base vocabulary only in the LLaVA case

_TO_RELEASED = [
    (r"^llm\.model\.", "model."),
    (r"^llm\.lm_head\.", "lm_head."),
    (r"\.base_layer\.", "."),
    (r"^vision\.", "model.vision_tower.vision_tower.vision_model."),
    (r"^(mm_projector|out_mm_projector)\.", r"model.\1."),
    (r"^text_hidden_fcs\.", "model.text_hidden_fcs.0."),
    (r"^neck\.", "model.image_feature_neck."),
    (r"^decoder\.no_mask_embed\.", "model.prompt_encoder.no_mask_embed."),
    (r"^decoder\.pe\.0\.", "model.prompt_encoder.pe_layer."),
    (r"^decoder\.pe\.1\.", "model.mask_decoder.pe1."),
    (r"^decoder\.transformers\.", "model.mask_decoder.transformer."),
    (r"^decoder\.level_upsample\.1\.", "model.mask_decoder.upsample_2x."),
    (r"^decoder\.hypernetwork\.", "model.mask_decoder.output_hypernetworks_mlps.0."),
    (r"^decoder\.mask_token\.", "model.mask_decoder.mask_tokens."),
    (r"^decoder\.", "model.mask_decoder."),
]


def _released(model) -> dict[str, torch.Tensor]:
    """The model's weights in the released layout, with the release's extra and reshaped tensors."""
    out = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key or key in ("fusion.weights", "decoder.scale_weights"):
            continue  # LoRA is merged in the release; fusion/scale weights are never saved
        for pattern, repl in _TO_RELEASED:
            key = re.sub(pattern, repl, key)
        out[key] = value.clone()
    out["model.mask_decoder.mask_tokens.weight"] = torch.cat([out["model.mask_decoder.mask_tokens.weight"],
                                                              torch.randn(3, 64)])  # fmt: skip
    out["model.mask_decoder.iou_token.weight"] = torch.randn(1, 64)
    out["model.mask_decoder.iou_prediction_head.layers.0.weight"] = torch.randn(64, 64)
    out["model.mask_decoder.output_hypernetworks_mlps.1.layers.0.weight"] = torch.randn(64, 64)
    out["model.prompt_encoder.point_embeddings.0.weight"] = torch.randn(1, 64)
    return out


def _save_sharded(state: dict[str, torch.Tensor], directory) -> None:
    directory.mkdir(parents=True)
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}  # fmt: skip
    for name, names in shards.items():
        save_state_dict({k: state[k].contiguous() for k in names}, directory / name)
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def test_released_pixellm_weights(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_pixellm("tiny", VOCAB)
    with torch.no_grad():  # non-trivial values everywhere (LayerNorms start at 1/0)
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = _released(source)
    _save_sharded(state, tmp_path / "PixelLM-tiny" / "hf_model")  # PixelLM #25: the hf_model/ subfolder

    torch.manual_seed(1)
    target = build_pixellm("tiny", VOCAB)
    report = load_pixellm_weights(target, tmp_path / "PixelLM-tiny")
    assert not report.unexpected and not report.mismatched
    assert all(".lora_" in k or k in ("fusion.weights", "decoder.scale_weights") for k in report.missing)
    own = target.state_dict()
    for key, value in source.state_dict().items():
        if ".lora_" in key or key in ("fusion.weights", "decoder.scale_weights"):
            continue
        assert torch.equal(own[key], value), key
    # unsaved fusion / scale weights keep the released code's fixed values
    assert torch.allclose(own["fusion.weights"], torch.full((3,), 1 / 3))
    assert torch.allclose(own["decoder.scale_weights"], torch.full((2,), 0.5))


def test_llava_base_and_clip_weights(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_pixellm("tiny", VOCAB, lora=False)
    llava = {}
    for key, value in source.state_dict().items():
        if key.startswith("llm."):
            llava[key.replace("llm.model.", "model.").replace("llm.lm_head.", "lm_head.")] = value[:BASE_VOCAB].clone() \
                if "embed_tokens" in key or "lm_head" in key else value.clone()  # fmt: skip
    llava["model.mm_projector.weight"] = torch.randn(96, 64)  # LLaVA-v1's linear projector: not loaded
    llava["model.mm_projector.bias"] = torch.randn(96)
    (tmp_path / "llava").mkdir()
    save_state_dict(llava, tmp_path / "llava" / "model.safetensors")
    # an HF CLIP at a smaller resolution (6x6 grid, 37 positions) with its text tower
    clip = {f"vision_model.{k.removeprefix('vision.')}": v.clone() for k, v in source.state_dict().items()
            if k.startswith("vision.")}  # fmt: skip
    positions = clip["vision_model.embeddings.position_embedding.weight"]
    small = interpolate_clip_position_embeddings(positions, 6)
    clip["vision_model.embeddings.position_embedding.weight"] = small
    clip["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 8)
    clip["logit_scale"] = torch.tensor(1.0)
    (tmp_path / "clip").mkdir()
    torch.save(clip, tmp_path / "clip" / "pytorch_model.bin")

    target = build_pixellm("tiny", VOCAB)
    before = target.state_dict()["llm.model.embed_tokens.weight"].clone()
    report = load_llava_weights(target, tmp_path / "llava", clip_directory=tmp_path / "clip")
    own = target.state_dict()
    assert "mm_projector.0.weight" in report.missing  # trained from scratch, as released
    assert not any(k.startswith("vision.") for k in report.missing)
    embed = own["llm.model.embed_tokens.weight"]
    assert torch.equal(embed[:BASE_VOCAB], llava["model.embed_tokens.weight"])
    assert torch.equal(embed[BASE_VOCAB:], before[BASE_VOCAB:])  # codebook rows keep their init
    q = "llm.model.layers.1.self_attn.q_proj.base_layer.weight"
    assert torch.equal(own[q], llava["model.layers.1.self_attn.q_proj.weight"])
    pos = own["vision.embeddings.position_embedding.weight"]
    assert torch.equal(pos, interpolate_clip_position_embeddings(small, 8))  # 6x6 -> 8x8, CLS at 0
    assert torch.equal(pos[0], positions[0])
    assert torch.equal(
        own["vision.encoder.layers.0.mlp.fc1.weight"], source.state_dict()["vision.encoder.layers.0.mlp.fc1.weight"]
    )

    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_clip_weights(target, tmp_path)
