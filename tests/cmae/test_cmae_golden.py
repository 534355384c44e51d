"""Parity with the official code: fixtures made by tests/cmae/golden/make_golden.py from CMAE, ConvMAE, VideoMAE.

The official state dicts are loaded through our converter (never renamed by the test), the official inputs
and masks are fed to our modules, and the outputs are compared with what the official modules returned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vislang.cmae.convert import detect_layout, load_classifier, load_cmae, load_encoder
from vislang.cmae.model import CMAE, CMAEClassifier, CMAEConfig, build_encoder

GOLDEN = Path(__file__).parent / "golden"


def _normalise(raw: torch.Tensor, meta: dict) -> torch.Tensor:
    """The generator's input: uint8 -> (x - mean) / std with the official pipeline's constants."""
    mean = torch.tensor(meta["img_norm_cfg"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["img_norm_cfg"]["std"]).view(1, 3, 1, 1)
    return (raw.float() - mean) / std


def _golden(name: str) -> tuple[dict, dict, dict]:
    """``<name>.safetensors`` (official weights), ``<name>_io.safetensors`` and ``<name>.json``."""
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    return load_file(GOLDEN / f"{name}.safetensors"), load_file(GOLDEN / f"{name}_io.safetensors"), meta


_SIZES = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "decoder_dim",
    "decoder_depth",
    "decoder_heads",
    "mask_ratio",
)


@pytest.fixture(scope="module")
def cmae_golden() -> tuple[dict, dict, dict]:
    return _golden("cmae_vit")


def _cmae_config(meta: dict) -> CMAEConfig:
    keys = (*_SIZES, "feature_decoder_depth", "proj_hidden_dim", "proj_dim", "temperature")
    return CMAEConfig(**{k: meta[k] for k in keys}, mask_type="block", mask_block=2)


def test_cmae_pretraining_step_equals_official(cmae_golden) -> None:
    weights, io, meta = cmae_golden
    assert detect_layout(weights) == "cmae"
    model = CMAE(_cmae_config(meta))
    report = load_cmae(model, weights)  # the official runner layout, through the converter
    assert report.missing == ["target_encoder.norm.weight", "target_encoder.norm.bias"] and not report.unexpected
    model.train()
    mask, ids_keep = io["mask"], io["ids_keep"]
    assert int((~mask[0]).sum()) == ids_keep.shape[1] == 20  # 5 of 16 2x2 units visible
    out = model(_normalise(io["online_uint8"], meta), _normalise(io["target_uint8"], meta), ids_keep, mask)
    torch.testing.assert_close(out["pred"], io["pred_pixel"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["loss_rc"].reshape(1), io["loss_rc"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["loss_ct"].reshape(1), io["loss_ct"], atol=1e-5, rtol=0)
    assert torch.equal(out["mask"], mask)
    out["loss"].backward()
    # gradients of the official step, official name -> ours
    ours = {
        "backbone.patch_embed.projection.weight": model.encoder.patch_embed.proj.weight,
        "backbone.layers.0.attn.qkv.weight": model.encoder.blocks[0].attn.qkv.weight,
        "backbone.ln1.weight": model.encoder.norm.weight,
        "pixel_decoder.decoder_pred.weight": model.pixel_decoder.decoder_pred.weight,
        "pixel_decoder.mask_token": model.pixel_decoder.mask_token,
        "feature_decoder.decoder_blocks.0.ffn.layers.0.0.weight": model.feature_decoder.decoder_blocks[
            0
        ].mlp.fc1.weight,
        "projector.fc0.weight": model.projector.fc0.weight,
        "projector.bn0.weight": model.projector.bn0.weight,
        "head.predictor.fc1.weight": model.predictor.fc1.weight,
    }
    assert sorted(f"grad.{k}" for k in ours) == meta["grad_keys"]
    for name, param in ours.items():
        torch.testing.assert_close(param.grad, io[f"grad.{name}"], atol=1e-5, rtol=1e-4, msg=name)


def test_cmae_finetuned_classifier_equals_official(cmae_golden) -> None:
    _, io, meta = cmae_golden
    ft = {k[len("ft.") :]: v for k, v in io.items() if k.startswith("ft.") and k != "ft_logits"}
    assert "backbone.fc_norm.weight" in ft and "head.head.weight" in ft and "backbone.ln1.weight" not in ft
    logits = _finetuned_logits(_cmae_config(meta), ft, io["online_uint8"], meta)
    torch.testing.assert_close(logits, io["ft_logits"], atol=1e-5, rtol=0)


def _finetuned_logits(config: CMAEConfig, ft: dict, raw: torch.Tensor, meta: dict) -> torch.Tensor:
    """Our classifier, filled from the official fine-tuned state dict by the converter, on the fixture images."""
    classifier = CMAEClassifier(config, num_classes=meta["num_classes"]).eval()
    report = load_classifier(classifier, ft)
    assert report.ok, str(report)
    with torch.no_grad():
        return classifier(_normalise(raw, meta))


@pytest.fixture(scope="module")
def convmae_golden() -> tuple[dict, dict, dict, dict]:
    meta = json.loads((GOLDEN / "convmae.json").read_text())
    return (
        load_file(GOLDEN / "convmae.safetensors"),
        load_file(GOLDEN / "convmae_ft.safetensors"),
        load_file(GOLDEN / "convmae_io.safetensors"),
        meta,
    )


def _convmae_config(meta: dict) -> CMAEConfig:
    return CMAEConfig(
        backbone="convvit",
        img_size=meta["img_size"],
        patch_size=16,
        conv_strides=(4, 2, 2),
        conv_dims=tuple(meta["conv_dims"]),
        conv_depths=tuple(meta["conv_depths"]),
        embed_dim=meta["embed_dim"],
        depth=meta["depth"],
        num_heads=meta["num_heads"],
        mlp_ratio=meta["mlp_ratio"],
        decoder_dim=meta["decoder_dim"],
        decoder_depth=meta["decoder_depth"],
        decoder_heads=meta["decoder_heads"],
        mask_ratio=meta["mask_ratio"],
        mask_type="random",
    )


def test_convvit_encoder_with_convmae_weights_equals_official(convmae_golden, tmp_path) -> None:
    weights, _, io, meta = convmae_golden
    path = tmp_path / "checkpoint-1599.pth"
    torch.save({"model": weights, "epoch": 1599}, path)  # main_pretrain.py's layout (args checked elsewhere)
    assert detect_layout(weights) == "convmae"
    encoder = build_encoder(_convmae_config(meta)).eval()
    report = load_encoder(encoder, path)
    assert report.ok, str(report)
    with torch.no_grad():
        latent = encoder(_normalise(io["images_uint8"], meta), io["ids_keep"])
    assert latent.shape == io["latent"].shape == (2, 49, meta["embed_dim"])
    torch.testing.assert_close(latent, io["latent"], atol=1e-4, rtol=0)


def test_convmae_pretraining_reconstruction_equals_official(convmae_golden) -> None:
    weights, _, io, meta = convmae_golden
    model = CMAE(_convmae_config(meta)).eval()
    report = load_cmae(model, weights)  # encoder (+ target copy) and the pixel decoder, MAE names
    assert not any(k.startswith(("encoder.", "target_encoder.", "pixel_decoder.")) for k in report.missing), report
    with torch.no_grad():
        out = model(*(2 * [_normalise(io["images_uint8"], meta)]), io["ids_keep"], io["mask"])
    torch.testing.assert_close(out["pred"][..., ::8], io["pred_every8"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["loss_rc"].reshape(1), io["loss"], atol=1e-5, rtol=0)


def test_convmae_finetuned_classifier_equals_official(convmae_golden) -> None:
    _, ft, io, meta = convmae_golden
    assert "fc_norm.weight" in ft and "norm.weight" not in ft and not any("output_decode" in k for k in ft)
    logits = _finetuned_logits(_convmae_config(meta), ft, io["images_uint8"], meta)
    torch.testing.assert_close(logits, io["ft_logits"], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def videomae_golden() -> tuple[dict, dict, dict]:
    return _golden("videomae")


def _videomae_config(meta: dict) -> CMAEConfig:
    keys = (*_SIZES, "num_frames", "tubelet_size")
    return CMAEConfig(**{k: meta[k] for k in keys}, mask_type="random", mask_block=1)


def _clips(raw: torch.Tensor, meta: dict) -> torch.Tensor:
    """``(B, 3, T, H, W)`` uint8 clips normalised per channel, as the generator fed them."""
    return _normalise(raw.transpose(1, 2).flatten(0, 1), meta).reshape(raw.transpose(1, 2).shape).transpose(1, 2)


def test_videomae_pretrained_encoder_and_decoder_equal_official(videomae_golden, tmp_path) -> None:
    weights, io, meta = videomae_golden
    state = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": state, "epoch": 799}, path)  # run_mae_pretraining.py's layout
    config = _videomae_config(meta)
    model = CMAE(config).eval()
    report = load_cmae(model, path)
    # VideoMAE stores no sinusoid tables (ours are the same formula); everything else of both branches loads
    encoders = {k for k in report.missing if k.startswith(("encoder.", "target_encoder.", "pixel_decoder."))}
    assert encoders == {"encoder.pos_embed", "target_encoder.pos_embed", "pixel_decoder.decoder_pos_embed"}
    mask = io["mask"]  # the official TubeMaskingGenerator at 0.9
    ours_keep, _ = model.sample_mask(1, torch.device("cpu"))
    assert int((~mask[0]).sum()) == meta["visible_per_clip"] == ours_keep.shape[1] == 56  # 8 slices x 7
    ids_keep = (~mask).nonzero()[:, 1].reshape(mask.shape[0], -1)  # sorted, as VideoMAE's x[~mask]
    with torch.no_grad():
        latent = model.encoder(_clips(io["clips_uint8"], meta), ids_keep)
        pred = model.pixel_decoder(latent, ids_keep)
    torch.testing.assert_close(latent, io["latent"], atol=1e-5, rtol=0)
    masked = pred[mask].reshape(mask.shape[0], -1, pred.shape[-1])  # VideoMAE predicts the masked tokens in order
    torch.testing.assert_close(masked[..., ::4], io["pred_masked_every4"], atol=1e-5, rtol=0)


def test_videomae_finetuned_classifier_equals_official(videomae_golden) -> None:
    weights, io, meta = videomae_golden
    ft = {k.removeprefix("ft."): v for k, v in weights.items() if k.startswith("ft.")}
    assert "fc_norm.weight" in ft and "blocks.0.attn.q_bias" in ft and "pos_embed" not in ft
    classifier = CMAEClassifier(_videomae_config(meta), num_classes=meta["num_classes"]).eval()
    report = load_classifier(classifier, ft)
    assert report.missing == ["encoder.pos_embed"] and not report.unexpected  # VideoMAE's table is not stored
    with torch.no_grad():
        logits = classifier(_clips(io["clips_uint8"], meta))
    torch.testing.assert_close(logits, io["ft_logits"], atol=1e-5, rtol=0)
