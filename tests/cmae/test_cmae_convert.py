"""Checkpoint conversion: timm/MAE, official CMAE (mm names, `encoder_s.`), VideoMAE -> our encoder."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from vislang.cmae.convert import detect_layout, export_timm, load_encoder, main, to_timm
from vislang.cmae.model import build_classifier, build_encoder, get_config
from vislang.shared.checkpoint import load_state_dict, save_state_dict

# timm name -> official CMAE mm name (the converter's table, run backwards)
TIMM_TO_MM = [
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."),
    (r"^blocks\.(\d+)\.", r"layers.\1."),
    (r"^norm\.", "ln1."),
]


def to_mm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in TIMM_TO_MM:
            new = re.sub(pattern, replacement, key)
            if new != key:
                key = new
                break
        out[key] = value
    return out


@pytest.fixture(scope="module")
def vit_base() -> VisionTransformer:
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()
    with torch.no_grad():  # random, non-trivial values everywhere (timm zero-initialises biases and pos_embed)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _reference(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)


def test_timm_vit_base_state_dict_loads_and_matches_timm(vit_base, image) -> None:
    state = vit_base.state_dict()
    assert detect_layout(state) == "timm"
    encoder = build_encoder(get_config("vit_base")).eval()
    report = load_encoder(encoder, state)
    assert report.ok, str(report)
    with torch.no_grad():
        ours = encoder(image)
    torch.testing.assert_close(ours, _reference(vit_base, image), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["cmae_pt", "cmae_runner", "cmae_encoder_s"])
def test_official_cmae_layouts_load_and_match_timm(vit_base, image, layout, tmp_path) -> None:
    state = vit_base.state_dict()
    if layout == "cmae_pt":  # released PT file: backbone only, `backbone.` stripped, {'state_dict': ..., 'author'}
        converted = to_mm(state)
        path = tmp_path / "cmae_vit-base-p16_32xb128-coslr-1600e_in1k.pth"
        torch.save({"state_dict": converted, "author": "CMAE"}, path)
    elif layout == "cmae_runner":  # full pre-training checkpoint: online + target branches, decoders, necks
        converted = {f"backbone.{k}": v for k, v in to_mm(state).items()}
        converted.update({f"target_backbone.{k}": v + 1 for k, v in to_mm(state).items() if not k.startswith("ln1")})
        converted["pixel_decoder.mask_token"] = torch.zeros(1, 1, 512)
        converted["projector.fc0.weight"] = torch.zeros(1536, 768)
        converted["head.predictor.fc0.weight"] = torch.zeros(1536, 256)
        path = tmp_path / "epoch_1600.pth"
        torch.save({"meta": {"epoch": 1600}, "state_dict": converted}, path)
    else:  # pre-release cmae_vit_b16.pth: timm names under `encoder_s.`
        path = tmp_path / "cmae_vit_b16.pth"
        torch.save({"state_dict": {f"encoder_s.{k}": v for k, v in state.items()}}, path)
    encoder = build_encoder(get_config("vit_base")).eval()
    report = load_encoder(encoder, path)
    assert report.ok, str(report)
    with torch.no_grad():
        ours = encoder(image)
    torch.testing.assert_close(ours, _reference(vit_base, image), atol=1e-5, rtol=0)


def test_export_is_loadable_by_timm_with_avg_pool(tmp_path) -> None:
    torch.manual_seed(0)
    classifier = build_classifier("tiny", num_classes=5).eval()
    with torch.no_grad():
        classifier.head.weight.normal_()
    path = export_timm(classifier, tmp_path / "tiny.safetensors")
    config = classifier.config
    reference = VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
                                  depth=config.depth, num_heads=config.num_heads, num_classes=5,
                                  global_pool="avg").eval()  # fmt: skip
    reference.load_state_dict(load_state_dict(path), strict=True)
    x = torch.randn(3, 3, config.img_size, config.img_size)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), reference(x), atol=1e-5, rtol=0)


def test_videomae_qv_bias_is_folded_into_qkv() -> None:
    config = get_config("video_tiny")
    encoder = build_encoder(config)
    state = {f"encoder.{k}": v.clone() for k, v in encoder.state_dict().items() if k != "pos_embed"}
    dim = config.embed_dim
    for i in range(config.depth):
        del state[f"encoder.blocks.{i}.attn.qkv.bias"]
        state[f"encoder.blocks.{i}.attn.q_bias"] = torch.full((dim,), 1.0 + i)
        state[f"encoder.blocks.{i}.attn.v_bias"] = torch.full((dim,), -1.0 - i)
    state["encoder_to_decoder.weight"] = torch.zeros(4, dim)
    state["decoder.head.weight"] = torch.zeros(4, 4)
    state["mask_token"] = torch.zeros(1, 1, 4)
    assert detect_layout(state) == "videomae"
    report = load_encoder(encoder, state)
    assert report.missing == ["pos_embed"] and not report.unexpected
    bias = encoder.blocks[1].attn.qkv.bias
    assert torch.equal(bias[:dim], torch.full((dim,), 2.0))
    assert torch.equal(bias[dim : 2 * dim], torch.zeros(dim))
    assert torch.equal(bias[2 * dim :], torch.full((dim,), -2.0))


def test_unknown_layout_and_wrong_size_fail_with_one_line() -> None:
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        detect_layout({"foo.weight": torch.zeros(1)})
    encoder = build_encoder(get_config("tiny"))
    state = to_timm(build_encoder(get_config("tiny", img_size=64)).state_dict())
    with pytest.raises(ValueError, match="pos_embed of the checkpoint"):
        load_encoder(encoder, state)


def test_command_line_converts_to_safetensors(tmp_path, capsys) -> None:
    encoder = build_encoder(get_config("tiny"))
    src = tmp_path / "cmae.pth"
    torch.save({"state_dict": to_mm(dict(encoder.state_dict()))}, src)
    main([str(src), str(tmp_path / "out.safetensors")])
    assert "wrote" in capsys.readouterr().out
    loaded = load_state_dict(tmp_path / "out.safetensors")
    assert set(loaded) == set(encoder.state_dict())
    save_state_dict(loaded, tmp_path / "again.safetensors")
