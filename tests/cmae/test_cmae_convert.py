"""Checkpoint conversion: timm/MAE, official CMAE (mm names, `encoder_s.`), VideoMAE -> our encoder."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from vislang.cmae.convert import detect_layout, export_timm, load_classifier, load_cmae, load_encoder, main, to_timm
from vislang.cmae.model import CMAE, CMAEClassifier, CMAEConfig, build_classifier, build_encoder, get_config
from vislang.cmae.module import CMAEClassificationModule
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
    reference = VisionTransformer(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        num_classes=5,
        global_pool="avg",
    ).eval()
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


# ---- every checkpoint a user brings (official layouts from the golden fixtures, files as their code writes them)

GOLDEN = Path(__file__).parent / "golden"


def _golden_cmae() -> tuple[dict[str, torch.Tensor], CMAEConfig]:
    meta = json.loads((GOLDEN / "cmae_vit.json").read_text())
    keys = (
        "img_size",
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "decoder_dim",
        "decoder_depth",
        "decoder_heads",
        "feature_decoder_depth",
        "proj_hidden_dim",
        "proj_dim",
    )
    return load_file(GOLDEN / "cmae_vit.safetensors"), CMAEConfig(**{k: meta[k] for k in keys})


def test_official_runner_checkpoint_fills_every_module_to_continue_pretraining(tmp_path) -> None:
    """An mmengine runner file (meta with NumPy values, message hub, optimizer, schedulers) -> whole CMAE."""
    weights, config = _golden_cmae()
    path = tmp_path / "epoch_1600.pth"
    torch.save(
        {
            "meta": {
                "epoch": 1600,
                "iter": 500000,
                "seed": np.int64(60),
                "time": np.str_("20240101_000000"),
                "mmengine_version": "0.10.7",
                "cfg": "model = dict(type='CMAE')",
            },
            "state_dict": weights,
            "message_hub": {"runtime_info": {"epoch": 1600, "iter": 500000}, "resumed_keys": {"epoch": True}},
            "optimizer": {"state": {}, "param_groups": [{"lr": 2.4e-3, "betas": (0.9, 0.95), "params": []}]},
            "param_schedulers": [{"base_lrs": [2.4e-3], "last_step": 40}],
        },
        path,
    )
    model = CMAE(config)
    report = load_cmae(model, path)
    assert report.missing == ["target_encoder.norm.weight", "target_encoder.norm.bias"]
    assert not report.unexpected and not report.mismatched
    loaded = model.state_dict()
    pairs = {  # official name -> ours, one per module
        "backbone.layers.1.ffn.layers.1.bias": "encoder.blocks.1.mlp.fc2.bias",
        "target_backbone.layers.0.ln2.weight": "target_encoder.blocks.0.norm2.weight",
        "pixel_decoder.ln1.weight": "pixel_decoder.decoder_norm.weight",
        "feature_decoder.decoder_blocks.0.attn.qkv.weight": "feature_decoder.decoder_blocks.0.attn.qkv.weight",
        "projector.bn0.running_var": "projector.bn0.running_var",
        "target_projector.fc1.weight": "target_projector.fc1.weight",
        "head.predictor.fc0.bias": "predictor.fc0.bias",
    }
    for official, ours in pairs.items():
        assert torch.equal(loaded[ours], weights[official]), official
    # our own pre-training checkpoint round-trips into every module as well
    ours_path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in loaded.items()}, "epoch": 3}, ours_path)
    again = CMAE(config)
    assert load_cmae(again, ours_path).ok
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), loaded.values(), strict=True))


def test_released_pretraining_file_is_the_runners_backbone(tmp_path) -> None:
    """``tools/extract_backbone_weights.py``'s output (``backbone.`` stripped, ``{'state_dict', 'author'}``) loads
    the online encoder exactly as the runner checkpoint does; the target encoder starts as its copy."""
    weights, config = _golden_cmae()
    path = tmp_path / "cmae_vit-base-p16_32xb128-coslr-1600e_in1k.pth"
    backbone = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    torch.save({"state_dict": backbone, "author": "CMAE"}, path)
    full, released = CMAE(config), CMAE(config)
    load_cmae(full, weights)
    report = load_cmae(released, path)
    assert not any(k.startswith(("encoder.", "target_encoder.")) for k in report.missing)
    for ours, reference in zip(released.encoder.state_dict().values(), full.encoder.state_dict().values(), strict=True):
        assert torch.equal(ours, reference)
    assert all(
        torch.equal(a, b)
        for a, b in zip(released.target_encoder.parameters(), released.encoder.parameters(), strict=True)
    )


def test_finetuned_files_load_fc_norm_and_head_into_the_classifier_module(tmp_path) -> None:
    """An MAE-style fine-tuned file (``{'model', ..., 'args': Namespace}``, timm names with ``fc_norm`` and
    ``head``) fills the whole classifier of ``CMAEClassificationModule``; a head of another class count is kept."""
    torch.manual_seed(0)
    source = build_classifier("tiny", num_classes=5)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    state = load_state_dict(export_timm(source, tmp_path / "ft.safetensors"))
    path = tmp_path / "checkpoint-99.pth"
    torch.save({"model": state, "epoch": 99, "args": argparse.Namespace(model="vit_tiny", nb_classes=5)}, path)
    module = CMAEClassificationModule(preset="tiny", num_classes=5, init_weights=str(path), mixup=0, cutmix=0)
    assert torch.equal(module.model.head.weight, source.head.weight)
    assert torch.equal(module.model.fc_norm.bias, source.fc_norm.bias)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module.model.eval()(x), source.eval()(x), atol=1e-6, rtol=0)
    other = build_classifier("tiny", num_classes=7)
    report = load_classifier(other, path)
    assert sorted(k for k, _, _ in report.mismatched) == ["head.bias", "head.weight"] and not report.missing


def test_videomae_finetuned_file_loads_into_the_video_classifier() -> None:
    """VideoMAE's fine-tuning layout: ``module`` wrapper (DeepSpeed), q/v biases, ``fc_norm`` + ``head``."""
    config = get_config("video_tiny")
    torch.manual_seed(0)
    source = CMAEClassifier(config, num_classes=3)
    state = {k.removeprefix("encoder."): v.clone() for k, v in source.state_dict().items() if k != "encoder.pos_embed"}
    for i in range(config.depth):
        q, _, v = state.pop(f"blocks.{i}.attn.qkv.bias").chunk(3)
        state[f"blocks.{i}.attn.q_bias"], state[f"blocks.{i}.attn.v_bias"] = q + 1, v - 1
    target = CMAEClassifier(config, num_classes=3)
    report = load_classifier(target, {f"module.{k}": v for k, v in state.items()})
    assert report.missing == ["encoder.pos_embed"] and not report.unexpected  # VideoMAE's table is not stored
    assert torch.equal(target.head.weight, source.head.weight) and torch.equal(
        target.fc_norm.weight, state["fc_norm.weight"]
    )
    bias = target.encoder.blocks[0].attn.qkv.bias.chunk(3)
    assert torch.equal(bias[1], torch.zeros_like(bias[1])) and torch.equal(bias[0], state["blocks.0.attn.q_bias"])


def test_videoconvmae_layout_loads_the_video_hybrid(tmp_path) -> None:
    """VideoConvMAE keeps ConvMAE's names (``blocks3``, ``patch_embed1..4``, fusion convs) with 3-D kernels."""
    config = get_config(
        "video_convvit_base", conv_dims=(8, 8), embed_dim=16, depth=1, num_heads=2, img_size=64, num_frames=4
    )
    torch.manual_seed(0)
    source = build_encoder(config)
    state = {re.sub(r"^blocks\.", "blocks3.", k): v for k, v in source.state_dict().items()}
    state.update({"mask_token": torch.zeros(1, 1, 8), "decoder_pred.weight": torch.zeros(4, 8)})
    torch.save({"model": state, "epoch": 800, "args": argparse.Namespace(num_frames=4)}, tmp_path / "vcm.pth")
    assert detect_layout(state) == "convmae"
    target = build_encoder(config)
    assert load_encoder(target, tmp_path / "vcm.pth").ok
    assert all(
        torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values(), strict=True)
    )


def test_pretrain_module_init_weights_continues_from_every_module(tmp_path) -> None:
    """`CMAEPretrainModule(init_weights=<a whole pre-training checkpoint>)` restores the target encoder and
    the decoders too, not only the online encoder."""
    from vislang.cmae.module import CMAEPretrainModule

    trained = CMAEPretrainModule(preset="tiny")
    with torch.no_grad():
        for value in trained.model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn_like(value))  # online and target now differ, decoders moved off init
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.model.state_dict().items()}}, path)
    resumed = CMAEPretrainModule(preset="tiny", init_weights=str(path))
    expected, got = trained.model.state_dict(), resumed.model.state_dict()
    assert not torch.equal(
        expected["target_encoder.blocks.0.attn.qkv.weight"], expected["encoder.blocks.0.attn.qkv.weight"]
    )
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
