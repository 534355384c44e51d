"""PixelLM's model: codebook ids, hidden-state positions, refinement loss, trainable set, generation, presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vislang.pixellm.model import (
    PRESETS,
    CLIPSize,
    LlamaSize,
    add_codebook_tokens,
    build_pixellm,
    codebook_hidden_states,
    interpolate_clip_position_embeddings,
    refinement_weights,
    target_refinement_loss,
)
from vislang.shared.losses import sigmoid_bce_loss
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def tokenizer():
    tok = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    add_codebook_tokens(tok, TINY)
    return tok


@pytest.fixture(scope="module")
def tiny(tokenizer):
    torch.manual_seed(0)
    ids = tokenizer.convert_tokens_to_ids([f"[SEG{k}]" for k in range(TINY.group_size)])
    model = build_pixellm("tiny", len(tokenizer), ids, tokenizer.convert_tokens_to_ids("<image>"))
    return model.eval()


def test_codebook_ids_are_unique_and_resolved_with_convert_tokens_to_ids() -> None:
    tok = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    base = len(tok)
    ids, image_id = add_codebook_tokens(tok, TINY)
    assert len(ids) == TINY.group_size == 6
    assert len(set(ids + [image_id])) == 7 and min(ids + [image_id]) >= base
    # each token string encodes to exactly its own id (no prefix piece)
    for k, i in enumerate(ids):
        assert tok(f"[SEG{k}]", add_special_tokens=False).input_ids == [i]


def test_colliding_codebook_ids_are_refused(monkeypatch) -> None:
    tok = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    # PixelLM #23: every [SEGk] resolving to SentencePiece's "▁" (29871) would make training impossible
    monkeypatch.setattr(
        type(tok), "convert_tokens_to_ids", lambda self, t: [29871] * len(t) if isinstance(t, list) else 7
    )
    with pytest.raises(AssertionError, match="not unique"):
        add_codebook_tokens(tok, TINY)


def test_hidden_state_of_a_codebook_token_is_the_one_that_predicts_it() -> None:
    codes = [100, 101, 102, 103, 104, 105]
    ids = torch.tensor([[1, 5, 100, 101, 102, 103, 104, 105, 7, 100, 101, 102, 103, 104, 105, 9, 100, 101]])
    hidden = torch.arange(ids.shape[1]).float()[None, :, None].expand(1, -1, 4)  # state t holds the value t
    states, positions = codebook_hidden_states(hidden, ids, codes, group_size=6)
    # two whole groups; the trailing incomplete group (2 tokens) is truncated, not the whole sequence
    assert positions[0].tolist() == [2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]
    assert states[0].shape == (2, 6, 4)
    assert states[0][..., 0].flatten().tolist() == [p - 1 for p in positions[0].tolist()]


def test_forward_uses_the_predicting_position(tiny, tokenizer) -> None:
    """Changing the codebook token itself must not change its mask (its state is computed before it)."""
    text = "[CLS] " + "<image> " * 16 + "the red circle [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5] [SEP]"
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    pixels, patch_mask = torch.randn(1, 3, 64, 64), torch.ones(1, 8, 8, dtype=torch.bool)
    args = (torch.ones_like(ids), torch.tensor([[64, 64]]), [(64, 64)])
    base = tiny(pixels, patch_mask, ids, *args)["masks"][0]
    last = (ids[0] == tokenizer.convert_tokens_to_ids("[SEG5]")).nonzero()[0, 0]
    swapped = ids.clone()
    swapped[0, last] = tokenizer.convert_tokens_to_ids("[SEG0]")  # same slot, different token at t
    assert torch.allclose(tiny(pixels, patch_mask, swapped, *args)["masks"][0], base, atol=1e-6)
    changed = ids.clone()
    changed[0, last - 1] = tokenizer.convert_tokens_to_ids("[SEG0]")  # the token at t-1 feeds state t-1
    assert not torch.allclose(tiny(pixels, patch_mask, changed, *args)["masks"][0], base, atol=1e-4)


def test_refinement_weights_on_a_constructed_overlap() -> None:
    logits = torch.full((3, 4, 4), -3.0)
    logits[0, :2, :2] = 2.0  # mask 0: top-left 2x2
    logits[1, 1:3, 1:3] = 2.0  # mask 1 overlaps mask 0 at (1, 1)
    logits[2, 3, 3] = 2.0  # mask 2 alone
    weights = refinement_weights(logits, alpha=2.0)
    expected = torch.ones(4, 4)
    expected[1, 1] = 2.0  # the only pixel claimed by two predicted masks
    assert torch.equal(weights, expected.expand(3, 4, 4))

    targets = torch.zeros(3, 4, 4)
    targets[0, :2, :2] = 1
    logits.requires_grad_(True)
    loss = target_refinement_loss(logits, targets, alpha=2.0)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(loss, (bce * expected).flatten(1).mean(1).sum())
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # α = 1 is the plain BCE of the released code
    assert torch.allclose(target_refinement_loss(logits, targets, 1.0), 3 * sigmoid_bce_loss(logits, targets))


def test_refinement_loss_groups_masks_per_question(tiny) -> None:
    """An overlap between masks of *different* questions is not a refinement pixel (the released grouping bug)."""
    a = torch.full((1, 4, 4), -2.0)
    a[0, 0, 0] = 2.0
    b = a.clone()
    gt = [torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)]
    separate = tiny.mask_losses([a, b], gt, alpha=5.0)["bce"]
    assert torch.allclose(separate, tiny.mask_losses([a, b], gt, alpha=1.0)["bce"])
    together = tiny.mask_losses([torch.cat([a, b])], [torch.cat(gt)], alpha=5.0)["bce"]
    assert together > separate


def test_trainable_set(tiny) -> None:
    model = build_pixellm("tiny", 434)
    names = set(model.set_trainable())
    trainable_groups = {n.split(".")[0] for n in names if not n.startswith("llm.")}
    assert trainable_groups == {"mm_projector", "out_mm_projector", "neck", "text_hidden_fcs", "fusion", "decoder"}
    llm_trainable = {n for n in names if n.startswith("llm.")}
    lora = {n for n in llm_trainable if ".lora_" in n}
    layers = TINY.llm.num_hidden_layers
    assert len(lora) == layers * 2 * 2  # A and B of q_proj and v_proj in every layer
    assert all(".q_proj." in n or ".v_proj." in n for n in lora)
    assert llm_trainable - lora == {"llm.model.embed_tokens.weight", "llm.lm_head.weight"}
    assert not any(n.startswith("vision.") for n in names)
    # the released code's bugs: neck and dense prompt frozen, fusion/scale weights unregistered
    for name in ("neck.0.weight", "decoder.no_mask_embed.weight", "fusion.weights", "decoder.scale_weights"):
        assert name in names
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "llm.model.layers.0.self_attn.q_proj.base_layer.weight" in frozen
    assert "llm.model.layers.0.mlp.gate_proj.weight" in frozen
    # with the demo's switches CLIP and the LLM base train too
    assert {n for n, _ in model.named_parameters()} == set(model.set_trainable(train_vision=True, train_llm=True))


def test_kv_cached_generation_equals_full_recomputation(tiny, tokenizer) -> None:
    torch.manual_seed(1)
    prompts = ["[CLS] " + "<image> " * 16 + q for q in ("which shapes are red?", "segment every large shape.")]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    tokenizer.padding_side = "right"
    pixels = torch.randn(2, 3, 64, 64)
    patch_mask = torch.ones(2, 8, 8, dtype=torch.bool)
    patch_mask[1, :, 5:] = False  # a padded image
    args = (
        pixels,
        patch_mask,
        enc.input_ids,
        enc.attention_mask,
        torch.tensor([[64, 64], [64, 40]]),
        [(64, 64), (64, 40)],
        24,
        -1,
    )
    cached = tiny.generate(*args, use_cache=True)
    full = tiny.generate(*args, use_cache=False)
    assert [t.tolist() for t in cached.tokens] == [t.tolist() for t in full.tokens]
    assert all(t.numel() == 24 for t in cached.tokens)
    assert [m.shape[1:] for m in cached.masks] == [(64, 64), (64, 40)]


def test_single_pass_generation_masks_equal_a_teacher_forced_second_pass(tiny, tokenizer) -> None:
    """The codebook states collected while decoding give the masks a second, teacher-forced pass over prompt +
    answer gives; an incomplete trailing group is truncated and counted."""
    codes = tiny.codebook_ids.tolist()
    eos = tokenizer.convert_tokens_to_ids("[SEP]")
    # forced schedule (step -> token per row): row 0 a whole group, then 3 codebook tokens; row 1 a group, then end
    plan = {
        0: {2 + k: codes[k] for k in range(6)} | {10: codes[0], 11: codes[1], 12: codes[2]},
        1: {1 + k: codes[k] for k in range(6)} | {9: eos},
    }

    def force(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        step = ids.shape[1] - prompt.shape[1]
        for row, schedule in plan.items():
            if step in schedule:
                logits[row] = float("-inf")
                logits[row, schedule[step]] = 0.0
            else:
                logits[row, codes] = float("-inf")  # no codebook token outside the schedule
        return logits

    prompts = ["[CLS] " + "<image> " * 16 + q for q in ("which shapes are red?", "segment every shape.")]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    tokenizer.padding_side = "right"
    prompt, attention = enc.input_ids, enc.attention_mask
    torch.manual_seed(2)
    pixels, patch_mask = torch.randn(2, 3, 64, 64), torch.ones(2, 8, 8, dtype=torch.bool)
    patch_mask[1, :, 6:] = False
    sizes, original = torch.tensor([[64, 64], [64, 48]]), [(64, 64), (64, 48)]
    out = tiny.generate(pixels, patch_mask, prompt, attention, sizes, original, 16, eos, logits_processor=force)
    assert [t.numel() for t in out.tokens] == [16, 10]
    assert out.dropped_tokens == [3, 0]
    assert [m.shape[0] for m in out.masks] == [1, 1]
    # the two-pass reference: prompt + generated answer teacher-forced, masks from the predicting positions of
    # whole groups (the trailing 3 tokens of row 0 are truncated there too)
    length = prompt.shape[1] + 16
    ids = torch.full((2, length), eos)
    mask = torch.zeros(2, length, dtype=torch.long)
    for row, tokens in enumerate(out.tokens):
        ids[row, : prompt.shape[1] + tokens.numel()] = torch.cat([prompt[row], tokens])
        mask[row, : prompt.shape[1] + tokens.numel()] = torch.cat([attention[row], torch.ones_like(tokens)])
    reference = tiny(pixels, patch_mask, ids, mask, sizes, original)["masks"]
    for ours, ref in zip(out.masks, reference, strict=True):
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
        assert ours.abs().mean() > 0.01


def test_padded_patches_are_masked_in_the_vision_tower(tiny) -> None:
    pixels = torch.randn(1, 3, 64, 64)
    patch_mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    patch_mask[:, :, :4] = True  # content in the left half, padding on the right
    other = pixels.clone()
    other[..., 32:] = torch.randn(1, 3, 64, 32)
    tokens_a, mask_a, _ = tiny.encode_image(pixels, patch_mask)
    tokens_b, _, _ = tiny.encode_image(other, patch_mask)
    left = torch.tensor([c < 2 for _ in range(4) for c in range(4)])  # LLM grid 4x4: columns 0-1 are content
    assert torch.equal(mask_a[0], left)
    assert torch.allclose(tokens_a[0, left], tokens_b[0, left], atol=1e-5)


def test_position_embedding_interpolation_keeps_cls_at_index_0() -> None:
    grid = torch.arange(24 * 24, dtype=torch.float32).reshape(24 * 24, 1).expand(-1, 3)
    weight = torch.cat([torch.full((1, 3), -7.0), grid])
    out = interpolate_clip_position_embeddings(weight, 32, "fixed")
    assert out.shape == (1 + 32 * 32, 3)
    assert torch.equal(out[0], weight[0])  # CLS untouched
    expected = F.interpolate(grid[:, 0].reshape(1, 1, 24, 24), size=(32, 32), mode="bilinear").flatten()
    assert torch.allclose(out[1:, 0], expected)


def _llama_params(cfg: LlamaSize, vocab: int, lora_r: int) -> int:
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_layer = 4 * d * d + 3 * d * f + 2 * d + 2 * lora_r * 2 * d  # attention, MLP, 2 norms, LoRA on q and v
    return 2 * vocab * d + layers * per_layer + d


def _clip_params(cfg: CLIPSize) -> int:
    d, f, layers, p = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.patch_size
    positions = (cfg.image_size // p) ** 2 + 1
    per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    return 3 * p * p * d + d + positions * d + 2 * 2 * d + layers * per_layer


@pytest.mark.parametrize(
    ("preset", "vocab", "total"),
    [("pixellm_7b", 32007, 7.157e9), ("pixellm_13b", 32007, 13.489e9), ("tiny", 434, 0.792e6)],
)
def test_every_preset_on_the_meta_device(preset: str, vocab: int, total: float) -> None:
    config = PRESETS[preset]
    with torch.device("meta"):
        model = build_pixellm(preset, vocab)
    count = {k: sum(p.numel() for n, p in model.named_parameters() if n.startswith(k)) for k in ("vision.", "llm.")}
    assert count["vision."] == _clip_params(config.vision)
    assert count["llm."] == _llama_params(config.llm, vocab, config.lora_r)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / total - 1) < 0.001
    if preset != "tiny":
        assert 303e6 < count["vision."] < 305e6  # CLIP ViT-L/14 vision tower (448 px positions)
        extra = params - count["vision."] - count["llm."]
        assert 0 < extra < 0.02 * params  # projectors, neck, text fcs, decoder: lightweight next to the LMM
        assert config.image_size == 448 and config.vision_grid == 32 and config.group_size == 6


def test_tiny_preset_builds_and_is_small(tiny) -> None:
    assert sum(p.numel() for p in tiny.parameters()) < 2_000_000
