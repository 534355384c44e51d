"""PixelLM efficiency claims, measured in one run.

1. Per-image FLOPs of PixelLM-7B against LISA-7B for the same prompt and answer, on the meta device
   (`torch.utils.flop_counter.FlopCounterMode`, no weights, nothing downloaded):
   - PixelLM-7B: CLIP ViT-L/14 at 448 (1,025 tokens) -> 256 image tokens for Vicuna-7B -> lightweight
     pixel decoder (two scales) on the 32x32 CLIP grid;
   - LISA-7B: LLaVA-7B (CLIP ViT-L/14 at 224, 256 image tokens, linear projector) + SAM ViT-H image
     encoder at 1024x1024 + SAM mask decoder (segment-anything's modules), one `[SEG]` per target.
   The LLM is counted as one forward pass over prompt + answer (what KV-cached decoding computes).
   The paper claims PixelLM needs up to 50 % fewer FLOPs than LISA.
2. Generation time of the tiny preset for 64 new tokens with the KV cache against recomputing CLIP and
   the LLM over the whole sequence at every step (the released code's `use_cache=False`); target >= 5x.

    python benchmarks/pixellm.py [--targets 3] [--answer-tokens 45] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vislang.pixellm.model import PRESETS, build_pixellm
from vislang.pixellm.module import LLAVA_V1_PROMPT

VOCAB = 32000


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _dense_mask(seq: int) -> torch.Tensor:
    """A ready 4-D additive mask: transformers' mask builder reads values, which meta tensors do not have.
    Attention FLOPs do not depend on the mask's values, so the count equals the causal one."""
    return torch.zeros(1, 1, seq, seq)


def pixellm_flops(prompt_tokens: int, answer_tokens: int, targets: int) -> dict[str, int]:
    """FLOPs of one PixelLM-7B image: vision tower + projectors, LLM over the sequence, decoder."""
    config = PRESETS["pixellm_7b"]
    with torch.device("meta"):
        model = build_pixellm("pixellm_7b", VOCAB + config.group_size + 1, lora=False)
        size = config.image_size
        grid = config.vision_grid
        pixels = torch.zeros(1, 3, size, size)
        patch_mask = torch.ones(1, grid, grid, dtype=torch.bool)
        seq = prompt_tokens + config.llm_grid**2 + answer_tokens + targets * config.group_size
        ids = torch.zeros(1, seq, dtype=torch.long)
        ids[0, 1 : 1 + config.llm_grid**2] = model.image_token_id
        mask = torch.ones_like(ids)
        out: dict[str, int] = {}
        image_tokens, image_mask, features = None, None, None

        def vision() -> None:
            nonlocal image_tokens, image_mask, features
            image_tokens, image_mask, features = model.encode_image(pixels, patch_mask)

        out["vision"] = _flops(vision)
        embeds, _ = model.embed_inputs(ids, mask, image_tokens, image_mask)
        out["llm"] = _flops(lambda: model.llm(inputs_embeds=embeds, attention_mask=_dense_mask(seq), use_cache=False))
        hidden = torch.zeros(targets, config.group_size, config.llm["hidden_size"])
        out["decoder"] = _flops(lambda: model.masks_from_hidden([hidden], features, torch.tensor([[size, size]], device="cpu"),
                                                                [(size, size)]))  # fmt: skip
    return out


def lisa_flops(prompt_tokens: int, answer_tokens: int, targets: int) -> dict[str, int]:
    """FLOPs of one LISA-7B image: LLaVA-7B (CLIP-L/14 at 224) + SAM ViT-H encoder + SAM mask decoder."""
    pixellm = PRESETS["pixellm_7b"]
    with torch.device("meta"):
        clip = CLIPVisionModel(CLIPVisionConfig(**{**pixellm.vision, "image_size": 224}))
        llm = LlamaForCausalLM(LlamaConfig(**{**pixellm.llm, "vocab_size": VOCAB + 1}))
        projector = nn.Linear(1024, 4096)
        text_fc = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 256))
        sam = ImageEncoderViT(depth=32, embed_dim=1280, img_size=1024, mlp_ratio=4,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=16, patch_size=16, qkv_bias=True,
                              use_rel_pos=True, global_attn_indexes=(7, 15, 23, 31), window_size=14, out_chans=256)  # fmt: skip
        prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                       mask_in_chans=16)  # fmt: skip
        decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                              mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
                              iou_head_hidden_dim=256)  # fmt: skip
        seq = prompt_tokens + 256 + answer_tokens + targets
        out: dict[str, int] = {}

        def vision() -> None:
            hidden = clip(torch.zeros(1, 3, 224, 224), output_hidden_states=True).hidden_states[-2][:, 1:]
            projector(hidden)

        out["vision"] = _flops(vision)
        embeds = torch.zeros(1, seq, 4096)
        out["llm"] = _flops(lambda: llm(inputs_embeds=embeds, attention_mask=_dense_mask(seq), use_cache=False))
        out["sam_encoder"] = _flops(lambda: sam(torch.zeros(1, 3, 1024, 1024)))
        embedding = torch.zeros(1, 256, 64, 64)

        def mask_decoder() -> None:
            prompts = text_fc(torch.zeros(targets, 4096))[:, None]
            dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(targets, -1, 64, 64)
            masks, _ = decoder(embedding, prompt_encoder.get_dense_pe(), prompts, dense, multimask_output=False)
            nn.functional.interpolate(masks, (1024, 1024), mode="bilinear")

        out["sam_decoder"] = _flops(mask_decoder)
    return out


def generation_times(new_tokens: int, repeats: int) -> tuple[float, float, bool]:
    """Seconds to generate `new_tokens` with the tiny preset, KV cache vs full recomputation, and whether
    both produced the same tokens."""
    torch.manual_seed(0)
    config = PRESETS["tiny"]
    vocab = 427 + config.group_size + 1
    model = build_pixellm("tiny", vocab).eval()
    size, grid = config.image_size, config.vision_grid
    pixels = torch.randn(1, 3, size, size)
    patch_mask = torch.ones(1, grid, grid, dtype=torch.bool)
    # the llava_v1 prompt's length in words as tokens (the tiny vocabulary cannot spell it)
    prompt_len = len(LLAVA_V1_PROMPT.split()) + 12
    ids = torch.randint(5, 400, (1, prompt_len + config.llm_grid**2))
    ids[0, 1 : 1 + config.llm_grid**2] = model.image_token_id
    mask = torch.ones_like(ids)
    sizes = torch.tensor([[size, size]])

    def run(use_cache: bool) -> tuple[float, list[int]]:
        start = time.perf_counter()
        out = model.generate(pixels, patch_mask, ids, mask, sizes, [(size, size)], new_tokens, eos_token_id=-1,
                             use_cache=use_cache, with_masks=False)  # fmt: skip
        return time.perf_counter() - start, out.tokens[0].tolist()

    run(True), run(False)  # warm-up
    cached = [run(True) for _ in range(repeats)]
    full = [run(False) for _ in range(repeats)]
    same = all(c[1] == f[1] for c, f in zip(cached, full, strict=True)) and len(cached[0][1]) == new_tokens
    return statistics.median(t for t, _ in cached), statistics.median(t for t, _ in full), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=60, help="system prompt + question tokens")
    parser.add_argument("--answer-tokens", type=int, default=45, help="answer text tokens besides the codebook")
    parser.add_argument("--targets", type=int, default=3, help="targets in the answer (MUSE: >= 2)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"Per-image FLOPs, prompt {args.prompt_tokens} + 256 image tokens, answer {args.answer_tokens} tokens, "
          f"{args.targets} targets (meta device)")  # fmt: skip
    for targets in sorted({1, args.targets, 8}):
        pix = pixellm_flops(args.prompt_tokens, args.answer_tokens, targets)
        lisa = lisa_flops(args.prompt_tokens, args.answer_tokens, targets)
        p_total, l_total = sum(pix.values()), sum(lisa.values())
        print(f"\n  {targets} target(s)")
        print(
            "    PixelLM-7B: "
            + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in pix.items())
            + f" -> {p_total / 1e12:.3f} TFLOPs"
        )
        print(
            "    LISA-7B:    "
            + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in lisa.items())
            + f" -> {l_total / 1e12:.3f} TFLOPs"
        )
        print(f"    PixelLM / LISA = {p_total / l_total:.3f}  ({100 * (1 - p_total / l_total):.1f} % fewer FLOPs; "
              "paper: up to 50 %)")  # fmt: skip

    cached, full, same = generation_times(args.new_tokens, args.repeats)
    print(f"\nTiny preset, {args.new_tokens} new tokens, batch 1 (median of {args.repeats}, "
          f"{torch.get_num_threads()} threads):")  # fmt: skip
    print(f"  KV cache {cached * 1e3:.1f} ms, full recomputation (released code) {full * 1e3:.1f} ms")
    print(f"  speed-up {full / cached:.1f}x (target >= 5x); identical tokens: {same}")


if __name__ == "__main__":
    main()
