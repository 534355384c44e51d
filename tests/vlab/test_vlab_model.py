"""VLAB model: the video stream starts as CLIP, CLIP weights load, presets match CLIP's sizes."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import get_args

import open_clip
import pytest
import torch

from vislang.vlab.model import (
    PRESETS,
    Preset,
    TemporalAdapter,
    TimmVisionSize,
    VLABConfig,
    build_vlab,
    load_clip_state_dict,
)

NEW_MODULE_KEYS = re.compile(
    r"^(video_visual\.transformer\.resblocks\.\d+\.temporal_adapter\.|blend\.|decoder\.|visual_to_decoder\.|itm_head\.)"
)


def tiny(adapter: str = "attention") -> VLABConfig:
    return replace(PRESETS["tiny"], adapter=adapter)


def tiny_eva(adapter: str = "attention") -> VLABConfig:
    """EVA-CLIP as open_clip builds EVA02-B-16 (a timm Eva trunk, RoPE, SwiGLU), shrunk to timm's
    smallest EVA-02 (`eva02_tiny_patch14_224`, width 192) and a 2-layer text tower. open_clip 3.3's
    `vision_cfg` has no timm model kwargs, so the trunk's depth and image size are timm's own."""
    vision = TimmVisionSize(image_size=224, timm_model_name="eva02_tiny_patch14_224")
    clip_size = replace(PRESETS["tiny"].clip_size, vision=vision)
    return replace(tiny(adapter), clip_arch="EVA02-B-16", clip_size=clip_size)


@pytest.mark.parametrize(
    ("config", "frames", "size"),
    [(tiny("attention"), 4, 32), (tiny("conv"), 4, 32), (tiny_eva("attention"), 2, 224), (tiny_eva("conv"), 2, 224)],
    ids=["vit-attention", "vit-conv", "eva-attention", "eva-conv"],
)
def test_video_stream_equals_clip_per_frame_at_init(config: VLABConfig, frames: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_vlab(config, decoder_vocab_size=50).eval()
    video = torch.randn(2, frames, 3, size, size)
    with torch.no_grad():
        per_frame = model.frame_embeddings(model.encode_video_tokens(video))
        clip = model.clip.encode_image(video.flatten(0, 1)).view(2, frames, -1)
        assert torch.allclose(per_frame, clip, atol=1e-5)

        # the property depends on the zero-initialised adapter output: open it and the streams differ
        torch.nn.init.normal_(model.adapters[0].up.weight, std=0.1)
        moved = model.frame_embeddings(model.encode_video_tokens(video))
        assert (moved - clip).abs().max() > 1e-4  # ten times the tolerance above


def test_adapter_mixes_frames_and_image_stream_does_not() -> None:
    torch.manual_seed(0)
    model = build_vlab(tiny(), decoder_vocab_size=50).eval()
    for adapter in model.adapters:
        torch.nn.init.normal_(adapter.up.weight, std=0.1)
    video = torch.randn(1, 4, 3, 32, 32)
    changed = video.clone()
    changed[:, 3] = torch.randn(3, 32, 32)
    with torch.no_grad():
        first_frame = model.frame_embeddings(model.encode_video_tokens(video))[:, 0]
        first_frame_after = model.frame_embeddings(model.encode_video_tokens(changed))[:, 0]
        clip_first = model.clip.encode_image(video[:, 0])
        clip_first_after = model.clip.encode_image(changed[:, 0])
    assert (first_frame - first_frame_after).abs().max() > 1e-4  # frame 0 saw frame 3
    assert torch.equal(clip_first, clip_first_after)  # CLIP per frame cannot


def test_open_clip_weights_load_with_only_new_modules_missing() -> None:
    torch.manual_seed(1)
    config = PRESETS["tiny"]
    clip = open_clip.create_model(config.clip_arch, pretrained=None, **config.clip_size.create_model_kwargs())
    state = clip.state_dict()
    model = build_vlab("tiny", decoder_vocab_size=50)
    missing, unexpected = load_clip_state_dict(model, state)
    assert unexpected == []
    assert missing and all(NEW_MODULE_KEYS.match(key) for key in missing), [
        k for k in missing if not NEW_MODULE_KEYS.match(k)
    ]
    assert any(".temporal_adapter." in key for key in missing) and any(key.startswith("blend.") for key in missing)
    # both streams and the text tower now hold CLIP's tensors
    assert torch.equal(model.clip.visual.conv1.weight, state["visual.conv1.weight"])
    assert torch.equal(model.video_visual.conv1.weight, state["visual.conv1.weight"])
    assert torch.equal(model.clip.token_embedding.weight, state["token_embedding.weight"])


# open_clip's published sizes of the CLIP towers (text + image), which the presets must reproduce exactly
CLIP_PARAMETERS_M = {"vlab_b32": 151.28, "vlab_b16": 149.62, "vlab_l14": 427.62}
FULL_SIZE_PRESETS = sorted(name for name in PRESETS if name != "tiny")


def test_preset_names_are_the_presets() -> None:
    """`preset:` is typed by `Preset`, so the CLI lists and checks the names; each has its sizes."""
    assert sorted(get_args(Preset)) == sorted(PRESETS)


@pytest.mark.parametrize("preset", FULL_SIZE_PRESETS)
def test_full_size_presets_build_on_meta_device(preset: str) -> None:
    with torch.device("meta"):
        model = build_vlab(preset, decoder_vocab_size=30522)
        # the CLIP towers as open_clip itself builds the preset's architecture (EVA: timm Eva trunks)
        reference = open_clip.create_model(PRESETS[preset].clip_arch, pretrained=None, device="meta")
    count = lambda prefix: sum(p.numel() for k, p in model.named_parameters() if k.startswith(prefix)) / 1e6  # noqa: E731
    assert count("clip.") * 1e6 == sum(p.numel() for p in reference.parameters())
    if preset in CLIP_PARAMETERS_M:
        assert count("clip.") == pytest.approx(CLIP_PARAMETERS_M[preset], abs=0.01)
    visual = sum(p.numel() for p in model.clip.visual.parameters()) / 1e6
    adapters = sum(p.numel() for a in model.adapters for p in a.parameters()) / 1e6
    assert count("video_visual.") == pytest.approx(visual + adapters, abs=1e-6)
    assert 0 < adapters < 0.1 * visual  # adapters are a small addition to the ViT


def test_generation_with_cache_equals_greedy_without_cache() -> None:
    torch.manual_seed(0)
    model = build_vlab("tiny", decoder_vocab_size=60).eval()
    with torch.no_grad():
        memory = model.decoder_memory(model.encode_video_tokens(torch.randn(2, 4, 3, 32, 32)))
        prompt = torch.randint(5, 60, (2, 5))
        generated = model.generate(memory, prompt, torch.ones_like(prompt), max_new_tokens=4, end_token_id=-1)
        sequence = prompt
        for _ in range(4):
            logits = model.decoder(input_ids=sequence, encoder_hidden_states=memory).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    assert generated == sequence[:, 5:].tolist()


def test_gradient_checkpointing_still_trains_the_adapters() -> None:
    torch.manual_seed(0)
    model = build_vlab("tiny", decoder_vocab_size=50)
    model.video_visual.set_grad_checkpointing(True)
    for adapter in model.adapters:
        torch.nn.init.normal_(adapter.up.weight, std=0.1)
    embedding, _ = model.encode_video(torch.randn(2, 4, 3, 32, 32))
    embedding.sum().backward()
    assert all(a.down.weight.grad is not None and a.down.weight.grad.abs().sum() > 0 for a in model.adapters)


def test_adapter_rejects_a_ragged_batch() -> None:
    adapter = TemporalAdapter(16, 8, "conv", max_frames=8)
    adapter.num_frames = 4
    with pytest.raises(ValueError, match="not a whole number of 4-frame clips"):
        adapter(torch.randn(6, 5, 16))
