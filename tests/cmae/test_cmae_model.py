"""CMAE model: presets on the meta device, masking, visible-only encoding, losses, EMA, ConvViT leakage."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
import yaml

from vislang.cmae.model import (
    CMAE,
    PRESETS,
    CMAEClassifier,
    PresetName,
    build_cmae,
    build_encoder,
    cosine_momentum,
    get_config,
    mae_sincos_pos_embed,
    patchify,
    sample_mask,
    unpatchify,
)

# encoder parameter counts (millions): timm ViT-S/B/L without head 21.7 / 85.8 / 303.3 (ViT-B/16 86.6 M with
# its 1000-way head); ConvMAE's ConvViT-B "88 M"; VideoMAE ViT-B 87 M (CMAE-V table: 87 M)
PAPER_ENCODER_M = {
    "vit_small": 21.7,
    "vit_base": 85.8,
    "vit_large": 303.3,
    "convvit_base": 88.0,
    "video_vit_small": 22.0,
    "video_vit_base": 87.0,
    "video_vit_large": 305.0,
    "video_convvit_base": 90.0,
}


def test_every_preset_builds_on_meta_with_the_papers_parameter_count() -> None:
    counted = {}
    with torch.device("meta"):
        for name in PRESETS:
            model = build_cmae(name)
            counted[name] = sum(p.numel() for p in model.encoder.parameters()) / 1e6
            # the target branch mirrors the online encoder and projector exactly
            assert sum(p.numel() for p in model.target_encoder.parameters()) == sum(
                p.numel() for p in model.encoder.parameters()
            )
            assert not any(p.requires_grad for p in model.target_encoder.parameters())
    for name, expected in PAPER_ENCODER_M.items():
        assert counted[name] == pytest.approx(expected, rel=0.03), (name, counted[name])
    assert counted["vit_base"] == pytest.approx(86.0, abs=0.5)  # the "ViT-B encoder ~ 86M"
    assert counted["tiny"] < 2 and counted["video_tiny"] < 2


def test_the_typed_preset_names_are_the_presets() -> None:
    assert sorted(get_args(PresetName)) == sorted(PRESETS)


def test_block_mask_keeps_whole_2x2_units_at_ratio_065() -> None:
    ids_keep, mask = sample_mask(3, (1, 14, 14), 0.65, "block", 2, generator=torch.Generator().manual_seed(0))
    assert ids_keep.shape == (3, 68)  # int(49 * 0.35) = 17 units x 4 patches
    assert mask.sum(1).tolist() == [128] * 3
    grid = (~mask).reshape(3, 7, 2, 7, 2)
    units = grid.permute(0, 1, 3, 2, 4).reshape(3, 49, 4)
    assert torch.all(units.all(-1) | ~units.any(-1))  # each unit fully visible or fully masked


def test_random_and_tube_masks() -> None:
    ids_keep, mask = sample_mask(2, (1, 14, 14), 0.75, "random")
    assert ids_keep.shape == (2, 49) and mask.sum(1).tolist() == [147, 147]
    ids_keep, mask = sample_mask(2, (8, 14, 14), 0.9, "random")
    # VideoMAE's TubeMaskingGenerator: int(0.9 * 196) = 176 masked per slice -> 20 x 8 = 160 visible of 1568
    assert ids_keep.shape == (2, 160) and mask.sum(1).tolist() == [1408, 1408]
    tubes = mask.reshape(2, 8, 196)
    assert torch.equal(tubes, tubes[:, :1].expand_as(tubes))  # same spatial mask in every time slice


def test_cmae_v_presets_follow_videomae_counts_and_decoder() -> None:
    """CMAE-V's defaults: VideoMAE's visible count, its 384-d x 4 decoder (ViT-B), 1568 tokens of 2x16x16."""
    config = get_config("video_vit_base")
    assert config.num_patches == 1568 and config.grid == (8, 14, 14)
    ids_keep, _ = CMAE(replace(config, depth=1, decoder_depth=1)).sample_mask(1, torch.device("cpu"))
    assert ids_keep.shape == (1, 160)
    assert (config.decoder_dim, config.decoder_heads, config.decoder_depth) == (384, 6, 4)
    assert (config.feature_decoder_depth, config.mask_ratio) == (2, 0.9)
    assert [
        (get_config(f"video_{n}").decoder_dim, get_config(f"video_{n}").decoder_heads)
        for n in ("vit_small", "vit_large")
    ] == [(192, 3), (512, 8)]
    # images keep CMAE's count: int(49 units * 0.35) = 17 blocks of 2x2 -> 68 of 196
    assert CMAE(replace(get_config("vit_base"), depth=1, decoder_depth=1)).sample_mask(1, "cpu")[0].shape == (1, 68)


@pytest.mark.parametrize("config_name", ["k400_pretrain", "ssv2_pretrain"])
def test_cmae_v_temporal_shift_span_is_two_tubelets(config_name) -> None:
    """The configs' Delta_max is the image shift's analogue (31 px = ~2 patches of 16 -> 2 tubelets =
    4 sampled frames), in raw frames: 4 x sampling rate (K400 stride 4 -> 16, SSv2 stride 2 -> 8)."""
    path = Path(__file__).parents[2] / "packages/cmae/configs" / f"{config_name}.yaml"
    data = yaml.safe_load(path.read_text())["data"]["init_args"]
    assert data["max_temporal_shift"] == 2 * 2 * data["sampling_rate"]


def test_patchify_roundtrip_images_and_videos() -> None:
    image = torch.randn(2, 3, 32, 32)
    assert torch.equal(unpatchify(patchify(image, 4), 4, (1, 8, 8)), image)
    video = torch.randn(2, 3, 4, 32, 32)
    patches = patchify(video, 4, tubelet=2)
    assert patches.shape == (2, 2 * 8 * 8, 2 * 16, 3)
    assert torch.equal(unpatchify(patches, 4, (2, 8, 8), tubelet=2), video)


def test_mae_sincos_matches_mmselfsup_layout_with_halves_swapped() -> None:
    ours = mae_sincos_pos_embed(64, 4, num_prefix=0)[0]
    # mmselfsup's build_2d_sincos_position_embedding: meshgrid(w, h) 'ij', [sin(h'), cos(h'), sin(w'), cos(w')]
    grid_w, grid_h = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(16.0) / 16)
    out_w, out_h = grid_w.flatten()[:, None] * omega, grid_h.flatten()[:, None] * omega
    mm = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    torch.testing.assert_close(torch.cat([ours[:, 32:], ours[:, :32]], dim=1), mm, atol=1e-6, rtol=0)


def test_visible_only_encoding_equals_encoding_the_gathered_tokens() -> None:
    torch.manual_seed(0)
    encoder = build_encoder(get_config("tiny")).eval()
    x = torch.randn(2, 3, 32, 32)
    ids_keep, _ = sample_mask(2, (1, 8, 8), 0.65, "block")
    tokens = encoder(x, ids_keep)
    assert tokens.shape == (2, 1 + ids_keep.shape[1], 64)
    # changing a masked patch's pixels changes nothing: the encoder never sees it
    hidden = torch.ones(2, 64, dtype=torch.bool)
    hidden.scatter_(1, ids_keep, False)
    changed = unpatchify(patchify(x, 4) + hidden[..., None, None] * 5.0, 4, (1, 8, 8))
    torch.testing.assert_close(encoder(changed, ids_keep), tokens)


def test_convvit_masked_convolution_does_not_leak_masked_pixels() -> None:
    torch.manual_seed(0)
    encoder = build_encoder(get_config("convvit_tiny")).eval()
    x = torch.randn(2, 3, 32, 32)
    ids_keep, mask = sample_mask(2, (1, 8, 8), 0.65, "block")
    tokens = encoder(x, ids_keep)
    changed = unpatchify(patchify(x, 4) + mask[..., None, None] * 5.0, 4, (1, 8, 8))
    torch.testing.assert_close(encoder(changed, ids_keep), tokens, atol=1e-5, rtol=0)
    # without masking, the 5x5 depth-wise convs do mix neighbouring positions
    assert not torch.allclose(encoder(changed), encoder(x))


@pytest.mark.parametrize("preset", ["tiny", "convvit_tiny", "video_tiny"])
def test_losses_backward_reach_online_branch_only(preset: str) -> None:
    torch.manual_seed(0)
    model = build_cmae(preset)
    c = model.config
    shape = (4, 3, *((c.num_frames,) if c.is_video else ()), c.img_size, c.img_size)
    out = model(torch.randn(shape), torch.randn(shape))
    assert out["pred"].shape == (4, c.num_patches, c.patch_pixels)
    out["loss"].backward()
    for name in ("encoder", "pixel_decoder", "feature_decoder", "projector", "predictor"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_reconstruction_loss_is_per_patch_normalised_mse_on_masked_patches() -> None:
    torch.manual_seed(0)
    model = build_cmae("tiny")
    x = torch.randn(2, 3, 32, 32)
    ids_keep, mask = model.sample_mask(2, x.device)
    out = model(x, x, ids_keep, mask)
    patches = patchify(x, 4).flatten(2)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = ((out["pred"] - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(out["loss_rc"], expected)


def test_video_target_is_normalised_per_channel() -> None:
    model = build_cmae("video_tiny")
    video = torch.randn(1, 3, 4, 32, 32)
    video[:, 0] = video[:, 0] * 10 + 3
    target = model.reconstruction_target(video).reshape(1, -1, 32, 3)
    torch.testing.assert_close(target.mean(2), torch.zeros(1, target.shape[1], 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(2), torch.ones(1, target.shape[1], 3), atol=1e-3, rtol=0)


def test_contrastive_loss_is_2tau_scaled_info_nce() -> None:
    torch.manual_seed(0)
    model = build_cmae("tiny").eval()
    x, y = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    ids_keep, mask = model.sample_mask(4, x.device)
    out = model(x, y, ids_keep, mask)
    latent = model.encoder(x, ids_keep)
    q = F.normalize(model.predictor(model.projector(model.feature_decoder(latent, ids_keep).mean(1))), dim=-1)
    k = F.normalize(model.target_projector(model.target_encoder(y, final_norm=False)[:, 1:].mean(1)), dim=-1)
    expected = 2 * 0.07 * F.cross_entropy(q @ k.t() / 0.07, torch.arange(4))
    torch.testing.assert_close(out["loss_ct"], expected)


def test_ema_update_and_momentum_schedules() -> None:
    model = build_cmae("tiny")
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = copy.deepcopy(model.target_encoder.state_dict())
    model.update_target(0.9)
    for name, online in model.encoder.state_dict().items():
        expected = 0.9 * before[name] + 0.1 * online
        torch.testing.assert_close(model.target_encoder.state_dict()[name], expected)
    assert cosine_momentum(0, 100, 0.996, 0.996) == cosine_momentum(100, 100, 0.996, 0.996) == 0.996
    assert cosine_momentum(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_momentum(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)


def test_classifier_layer_groups_cover_every_block() -> None:
    from timm.optim import param_groups_layer_decay

    model = CMAEClassifier(get_config("tiny"), num_classes=5)
    groups = param_groups_layer_decay(model, 0.05, model.no_weight_decay(), layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) == get_config("tiny").depth + 2  # embeddings, each block, head
    assert max(scales) == 1.0 and min(scales) == pytest.approx(0.5 ** (get_config("tiny").depth + 1))
    conv = CMAEClassifier(get_config("convvit_tiny"), num_classes=5)
    groups = param_groups_layer_decay(conv, 0.05, conv.no_weight_decay(), layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    names = [
        "encoder.patch_embed1.proj.weight",
        "encoder.blocks1.0.conv1.weight",
        "encoder.blocks2.0.conv1.weight",
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.blocks.1.attn.qkv.weight",
        "head.weight",
    ]
    params = dict(conv.named_parameters())
    ordered = [scale[id(params[n])] for n in names]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered) and ordered[-1] == 1.0


def _benchmark_module():
    import importlib.util

    path = Path(__file__).parents[2] / "benchmarks" / "cmae.py"
    spec = importlib.util.spec_from_file_location("cmae_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_counts_attention_flops_as_computed_by_hand() -> None:
    """FlopCounterMode counts 0 for CPU SDPA; the benchmark's formulas make the tiny encoder's count the
    hand count: patch conv + per block (qkv, proj, fc1, fc2 matmuls + Q K^T and P V), 2 FLOPs per MAC."""
    count_flops = _benchmark_module().count_flops
    q = torch.randn(2, 3, 5, 4, requires_grad=True)
    b, h, n, d = q.shape
    attention = lambda: F.scaled_dot_product_attention(q, q, q).sum().backward()  # noqa: E731
    assert count_flops(attention) == 2 * (2 * b * h * n * n * d) + 5 * (2 * b * h * n * n * d)

    config = get_config("tiny")  # 32 px, patch 4 -> 64 patches + cls, width 64, 3 blocks, MLP 4x
    encoder = build_encoder(config).eval()
    batch, tokens, width, p = 2, config.num_patches + 1, config.embed_dim, config.patch_size
    x = torch.randn(batch, 3, config.img_size, config.img_size)
    with torch.no_grad():
        counted = count_flops(lambda: encoder(x))
    linear_macs = tokens * (width * 3 * width + width * width + 2 * width * 4 * width)
    attention_macs = 2 * tokens * tokens * width  # Q K^T and P V over all heads
    hand = 2 * batch * (config.num_patches * 3 * p * p * width + config.depth * (linear_macs + attention_macs))
    assert counted == hand


def test_pretraining_refuses_fsdp_in_one_line() -> None:
    """The EMA target update reads the online encoder's full parameters, which FSDP shards (found by the
    recipe rehearsal: a size mismatch deep in the first step); the module says so before training."""
    import types

    import pytest
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from vislang.cmae.module import CMAEPretrainModule

    module = CMAEPretrainModule(preset="tiny")
    cpu = [torch.device("cpu")]
    module._trainer = types.SimpleNamespace(strategy=FSDPStrategy(parallel_devices=cpu), datamodule=None)
    with pytest.raises(ValueError, match="does not run under FSDP.*strategy=ddp"):
        module.setup("fit")
    module._trainer = types.SimpleNamespace(strategy=DDPStrategy(parallel_devices=cpu), datamodule=None)
    module.setup("fit")
