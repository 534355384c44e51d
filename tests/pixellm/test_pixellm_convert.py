"""Released PixelLM (the official code's own release layout, golden fixture), LLaVA delta / base and CLIP weights load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vislang.pixellm.convert import load_clip_weights, load_llava_weights, load_pixellm_weights, main
from vislang.pixellm.model import build_pixellm, interpolate_clip_position_embeddings
from vislang.shared.checkpoint import load_state_dict, save_state_dict

VOCAB = 434
BASE_VOCAB = 427  # the released embedding covers the base vocabulary only in the LLaVA case
GOLDEN = Path(__file__).parent / "golden" / "model"


def test_official_release_loads_strictly_from_shards_in_hf_model(tmp_path, golden_layout_model) -> None:
    """The release the official code saved (golden fixture), re-saved as two shards under `hf_model/` (PixelLM
    #25), loads strictly once CLIP comes from its own weights; every released key lands somewhere."""
    state = load_state_dict(GOLDEN / "release" / "model.safetensors")
    directory = tmp_path / "PixelLM-small" / "hf_model"
    directory.mkdir(parents=True)
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, names in shards.items():
        save_state_dict({k: state[k] for k in names}, directory / name)
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))

    model, _ = golden_layout_model()
    report = load_pixellm_weights(model, tmp_path / "PixelLM-small", vision_weights=GOLDEN / "clip")
    assert not report.unexpected and not report.mismatched
    assert all(".lora_" in k or k in ("fusion.weights", "decoder.scale_weights") for k in report.missing)
    own = model.state_dict()
    assert torch.equal(own["decoder.mask_tokens.weight"], state["model.mask_decoder.mask_tokens.weight"])
    assert torch.equal(own["decoder.iou_token.weight"], state["model.mask_decoder.iou_token.weight"])
    # unsaved fusion / scale weights keep the released code's fixed values: 1/(N·L) per token, 1/L per scale
    assert torch.allclose(own["fusion.weights"], torch.full((3,), 1 / 6))
    assert torch.allclose(own["decoder.scale_weights"], torch.full((2,), 0.5))


def test_official_clip_position_layout() -> None:
    """`official`: the last row is treated as CLS and appended after the grid interpolated from rows 0..g²-1."""
    grid = torch.arange(4 * 4, dtype=torch.float32)[:, None].expand(-1, 2)
    weight = torch.cat([torch.full((1, 2), -7.0), grid])  # HF layout: CLS first, then the 4x4 patches
    out = interpolate_clip_position_embeddings(weight, 6, "official")
    assert out.shape == (37, 2)
    assert torch.equal(out[-1], weight[-1])  # the last patch's embedding becomes "CLS"
    expected = F.interpolate(weight[:-1, 0].reshape(1, 1, 4, 4), size=(6, 6), mode="bilinear").flatten()
    assert torch.allclose(out[:-1, 0], expected)
    fixed = interpolate_clip_position_embeddings(weight, 6, "fixed")
    assert torch.equal(fixed[0], weight[0])
    with pytest.raises(ValueError, match="'official' or 'fixed'"):
        interpolate_clip_position_embeddings(weight, 6, "cls_last")


def test_apply_llava_delta_command(tmp_path) -> None:
    """LLaVA = delta + base LLaMA, tensor by tensor; rows the delta adds (new tokens) and the projector are kept."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=20,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).state_dict()
    (tmp_path / "base").mkdir()
    save_state_dict({k: v.contiguous() for k, v in base.items()}, tmp_path / "base" / "model.safetensors")
    delta = {k: torch.randn_like(v) for k, v in base.items()}
    delta["model.embed_tokens.weight"] = torch.randn(23, 16)  # 3 tokens added by LLaVA
    delta["lm_head.weight"] = torch.randn(23, 16)
    delta["model.mm_projector.weight"] = torch.randn(16, 8)
    (tmp_path / "delta").mkdir()
    save_state_dict(delta, tmp_path / "delta" / "model.safetensors")
    (tmp_path / "delta" / "config.json").write_text("{}")
    main(
        [
            "apply-delta",
            "--base",
            str(tmp_path / "base"),
            "--delta",
            str(tmp_path / "delta"),
            "--out",
            str(tmp_path / "llava"),
        ]
    )
    merged = load_state_dict(tmp_path / "llava" / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[q], delta[q] + base[q])
    embed = merged["model.embed_tokens.weight"]
    torch.testing.assert_close(embed[:20], delta["model.embed_tokens.weight"][:20] + base["model.embed_tokens.weight"])
    assert torch.equal(embed[20:], delta["model.embed_tokens.weight"][20:])
    assert torch.equal(merged["model.mm_projector.weight"], delta["model.mm_projector.weight"])
    assert (tmp_path / "llava" / "config.json").is_file()
    # the merged directory loads as LLaVA weights
    loaded = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "vocab_size": 23}))
    missing = loaded.load_state_dict({k: v for k, v in merged.items() if "mm_projector" not in k}, strict=False)
    assert not missing.missing_keys


def test_llava_base_and_clip_weights(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_pixellm("tiny", VOCAB, lora=False)
    llava = {}
    for key, value in source.state_dict().items():
        if key.startswith("llm."):
            llava[key.replace("llm.model.", "model.").replace("llm.lm_head.", "lm_head.")] = (
                value[:BASE_VOCAB].clone() if "embed_tokens" in key or "lm_head" in key else value.clone()
            )
    llava["model.mm_projector.weight"] = torch.randn(96, 64)  # LLaVA-v1's linear projector: not loaded
    llava["model.mm_projector.bias"] = torch.randn(96)
    (tmp_path / "llava").mkdir()
    save_state_dict(llava, tmp_path / "llava" / "model.safetensors")
    # an HF CLIP at a smaller resolution (6x6 grid, 37 positions) with its text tower
    clip = {
        f"vision_model.{k.removeprefix('vision.')}": v.clone()
        for k, v in source.state_dict().items()
        if k.startswith("vision.")
    }
    positions = clip["vision_model.embeddings.position_embedding.weight"]
    small = interpolate_clip_position_embeddings(positions, 6, "fixed")
    clip["vision_model.embeddings.position_embedding.weight"] = small
    clip["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 8)
    clip["logit_scale"] = torch.tensor(1.0)
    (tmp_path / "clip").mkdir()
    torch.save(clip, tmp_path / "clip" / "pytorch_model.bin")

    target = build_pixellm("tiny", VOCAB)
    before = target.state_dict()["llm.model.embed_tokens.weight"].clone()
    report = load_llava_weights(target, tmp_path / "llava", clip_directory=tmp_path / "clip", clip_positions="fixed")
    own = target.state_dict()
    assert "mm_projector.0.weight" in report.missing  # trained from scratch, as released
    assert not any(k.startswith("vision.") for k in report.missing)
    embed = own["llm.model.embed_tokens.weight"]
    assert torch.equal(embed[:BASE_VOCAB], llava["model.embed_tokens.weight"])
    assert torch.equal(embed[BASE_VOCAB:], before[BASE_VOCAB:])  # codebook rows keep their init
    q = "llm.model.layers.1.self_attn.q_proj.base_layer.weight"
    assert torch.equal(own[q], llava["model.layers.1.self_attn.q_proj.weight"])
    pos = own["vision.embeddings.position_embedding.weight"]
    assert torch.equal(pos, interpolate_clip_position_embeddings(small, 8, "fixed"))  # 6x6 -> 8x8, CLS at 0
    assert torch.equal(pos[0], positions[0])
    assert torch.equal(
        own["vision.encoder.layers.0.mlp.fc1.weight"], source.state_dict()["vision.encoder.layers.0.mlp.fc1.weight"]
    )

    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_clip_weights(target, tmp_path)


def test_clip_weights_by_hub_name_from_the_local_cache(tmp_path, monkeypatch, golden_layout_model) -> None:
    """`clip_weights: openai/clip-vit-large-patch14-336` resolves through the Hugging Face cache (offline here)."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--openai--clip-vit-large-patch14-336" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (snapshot / name).write_bytes((GOLDEN / "clip" / name).read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model, _ = golden_layout_model()
    report = load_pixellm_weights(model, GOLDEN / "release", vision_weights="openai/clip-vit-large-patch14-336")
    assert not report.unexpected and not report.mismatched
    clip = load_state_dict(GOLDEN / "clip" / "model.safetensors")
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(model.state_dict()["vision.encoder.layers.0.mlp.fc1.weight"], clip[key])
