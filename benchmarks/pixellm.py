"""PixelLM efficiency claims, measured in one run.

1. Per-image FLOPs of PixelLM-7B against LISA-7B for the same prompt and answer
   (`torch.utils.flop_counter.FlopCounterMode`; nothing downloaded, weights random):
   - PixelLM-7B: the real `PixelLM.generate` call (greedy, KV cache, codebook states collected while
     decoding) on CPU, with the answer's tokens forced by a logits processor: CLIP ViT-L/14 at 448 (1,025
     tokens) -> 256 image tokens -> Vicuna-7B prefill + one cached step per answer token -> the pixel
     decoder. Vicuna-7B's 32 identical layers do not fit this machine's memory next to everything else, so
     the call runs with 1 and with 2 LLM layers at full width and the count is extrapolated linearly to 32
     (exact: the layers are identical and see the same tokens);
   - LISA-7B: LLaVA-7B (CLIP ViT-L/14 at 224, 256 image tokens, linear projector) with the same cached
     decoding (prefill + one step per answer token, full 32 layers on the meta device) + SAM ViT-H image
     encoder at 1024x1024 + SAM mask decoder (segment-anything's modules), one `[SEG]` per target.
   Attention is counted: FlopCounterMode has no formula for CPU's fused scaled-dot-product attention
   (`_scaled_dot_product_flash_attention_for_cpu` counts 0), so one is registered here (4 B H Lq Lk D, the
   two matrix products, as the meta device's unfused path counts). The paper claims up to 50 % fewer FLOPs.
2. Generation time of the `small` preset (>= 50 M parameters) for 128 new tokens with the KV cache against
   recomputing CLIP and the LLM over the whole sequence at every step (the released code's
   `use_cache=False`); runs interleaved, medians; target >= 5x.

    python benchmarks/pixellm.py [--targets 3] [--answer-tokens 45] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula
from transformers import CLIPVisionModel, DynamicCache, LlamaForCausalLM

from vislang.pixellm.model import PRESETS, GenerationOutput, build_pixellm
from vislang.pixellm.module import LLAVA_V1_PROMPT

VOCAB = 32000


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """Q K^T and the product with V: 2 x 2 B H Lq Lk D (softmax not counted, as for the other kernels)."""
    b, h, lq, d = query.shape
    return 4 * b * h * lq * key.shape[-2] * d


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _forcing(answer: list[int], prompt_len: int):
    """A logits processor that makes greedy decoding produce `answer` (the FLOPs depend on lengths only)."""

    def force(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        step = ids.shape[1] - prompt_len
        logits.fill_(float("-inf"))
        logits[:, answer[min(step, len(answer) - 1)]] = 0.0
        return logits

    return force


def pixellm_generate_flops(
    prompt_tokens: int, answer_tokens: int, targets: list[int], llm_layers: int
) -> dict[int, dict[str, int]]:
    """FLOPs of real `PixelLM.generate` calls of PixelLM-7B's width with `llm_layers` LLM layers (CPU), per
    number of targets: the whole call, and its vision and decoder parts (the rest is the LLM)."""
    config = PRESETS["pixellm_7b"]
    config = replace(config, llm=replace(config.llm, num_hidden_layers=llm_layers))
    vocab = VOCAB + config.group_size + 3  # + <im_start>, <im_end>, <image>
    torch.manual_seed(0)
    model = build_pixellm(config, vocab, lora=False).eval()  # random weights (values do not change the count)
    size, grid = config.image_size, config.vision_grid
    pixels, patch_mask = torch.zeros(1, 3, size, size), torch.ones(1, grid, grid, dtype=torch.bool)
    ids = torch.randint(3, VOCAB, (1, prompt_tokens + config.llm_grid**2))
    ids[0, 1 : 1 + config.llm_grid**2] = model.image_token_id
    eos, codes, sizes = 2, model.codebook_ids.tolist(), torch.tensor([[size, size]])
    features: list[torch.Tensor] = []
    vision = _flops(lambda: features.extend(model.encode_image(pixels, patch_mask)[2]))
    out: dict[int, dict[str, int]] = {}
    for count in targets:
        answer = [5] * answer_tokens + codes * count + [eos]  # the text, then each target's codebook group
        result: list[GenerationOutput] = []

        def generate(answer: list[int], result: list[GenerationOutput]) -> None:
            result.append(
                model.generate(
                    pixels,
                    patch_mask,
                    ids,
                    torch.ones_like(ids),
                    sizes,
                    [(size, size)],
                    len(answer),
                    eos,
                    logits_processor=_forcing(answer, ids.shape[1]),
                )
            )

        total = _flops(partial(generate, answer, result))
        assert result[0].tokens[0].tolist() == answer and result[0].masks[0].shape[0] == count
        hidden = torch.zeros(count, config.group_size, config.llm.hidden_size)
        decoder = _flops(partial(model.masks_from_hidden, [hidden], features, sizes, [(size, size)]))
        out[count] = {"vision": vision, "llm": total - vision - decoder, "decoder": decoder}
    return out


def pixellm_flops(prompt_tokens: int, answer_tokens: int, targets: list[int]) -> dict[int, dict[str, int]]:
    """PixelLM-7B's `generate` FLOPs: measured with 1 and 2 LLM layers, extrapolated to the 32 of Vicuna-7B."""
    one = pixellm_generate_flops(prompt_tokens, answer_tokens, targets, 1)
    two = pixellm_generate_flops(prompt_tokens, answer_tokens, targets, 2)
    layers = PRESETS["pixellm_7b"].llm.num_hidden_layers
    return {t: {**one[t], "llm": one[t]["llm"] + (layers - 1) * (two[t]["llm"] - one[t]["llm"])} for t in targets}


def _cached_decoding_flops(llm: LlamaForCausalLM, prompt_len: int, new_tokens: int) -> int:
    """Prefill over the prompt's embeddings, then one cached step per new token (meta device)."""

    def decode() -> None:
        cache = DynamicCache()
        hidden = llm.model(
            inputs_embeds=torch.zeros(1, prompt_len, llm.config.hidden_size), cache=cache, use_cache=True
        ).last_hidden_state
        llm.lm_head(hidden[:, -1:])
        for step in range(new_tokens - 1):
            position = torch.tensor([[prompt_len + step]])
            hidden = llm.model(
                input_ids=torch.zeros(1, 1, dtype=torch.long), cache=cache, use_cache=True, position_ids=position
            ).last_hidden_state
            llm.lm_head(hidden)

    return _flops(decode)


def lisa_flops(prompt_tokens: int, answer_tokens: int, target_counts: list[int]) -> dict[int, dict[str, int]]:
    """FLOPs of one LISA-7B image: LLaVA-7B (CLIP-L/14 at 224) + SAM ViT-H encoder + SAM mask decoder."""
    pixellm = PRESETS["pixellm_7b"]
    with torch.device("meta"):
        clip = CLIPVisionModel(replace(pixellm.vision, image_size=224).hf_config())
        llm = LlamaForCausalLM(pixellm.llm.hf_config(VOCAB + 1))
        projector = nn.Linear(1024, 4096)
        text_fc = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 256))
        sam = ImageEncoderViT(
            depth=32,
            embed_dim=1280,
            img_size=1024,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=16,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(7, 15, 23, 31),
            window_size=14,
            out_chans=256,
        )
        prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        )
        decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        out: dict[int, dict[str, int]] = {}

        def vision() -> None:
            hidden = clip(torch.zeros(1, 3, 224, 224), output_hidden_states=True).hidden_states[-2][:, 1:]
            projector(hidden)

        shared = {"vision": _flops(vision), "sam_encoder": _flops(lambda: sam(torch.zeros(1, 3, 1024, 1024)))}
        embedding = torch.zeros(1, 256, 64, 64)

        def mask_decoder(targets: int) -> None:
            prompts = text_fc(torch.zeros(targets, 4096))[:, None]
            dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(targets, -1, 64, 64)
            masks, _ = decoder(embedding, prompt_encoder.get_dense_pe(), prompts, dense, multimask_output=False)
            nn.functional.interpolate(masks, (1024, 1024), mode="bilinear")

        for targets in target_counts:
            out[targets] = {
                "vision": shared["vision"],
                "llm": _cached_decoding_flops(llm, prompt_tokens + 256, answer_tokens + targets + 1),
                "sam_encoder": shared["sam_encoder"],
                "sam_decoder": _flops(partial(mask_decoder, targets)),
            }
    return out


def generation_times(new_tokens: int, repeats: int) -> tuple[float, float, bool, int]:
    """Seconds to generate `new_tokens` with the `small` preset, KV cache vs full recomputation (runs
    interleaved, medians), whether both produced the same tokens, and the preset's parameter count."""
    torch.manual_seed(0)
    config = PRESETS["small"]
    vocab = VOCAB + config.group_size + 3
    model = build_pixellm("small", vocab).eval()
    size, grid = config.image_size, config.vision_grid
    pixels = torch.randn(1, 3, size, size)
    patch_mask = torch.ones(1, grid, grid, dtype=torch.bool)
    # the llava_v1 prompt's length in words as tokens (no tokenizer is loaded)
    prompt_len = len(LLAVA_V1_PROMPT.split()) + 12
    ids = torch.randint(5, VOCAB, (1, prompt_len + config.llm_grid**2))
    ids[0, 1 : 1 + config.llm_grid**2] = model.image_token_id
    mask = torch.ones_like(ids)
    sizes = torch.tensor([[size, size]])

    def run(use_cache: bool) -> tuple[float, list[int]]:
        start = time.perf_counter()
        out = model.generate(
            pixels,
            patch_mask,
            ids,
            mask,
            sizes,
            [(size, size)],
            new_tokens,
            eos_token_id=-1,
            use_cache=use_cache,
            with_masks=False,
        )
        return time.perf_counter() - start, out.tokens[0].tolist()

    run(True), run(False)  # warm-up
    cached, full = [], []
    for _ in range(repeats):  # interleaved, so both see the same load of this shared machine
        cached.append(run(True))
        full.append(run(False))
    same = all(c[1] == f[1] for c, f in zip(cached, full, strict=True)) and len(cached[0][1]) == new_tokens
    params = sum(p.numel() for p in model.parameters())
    return statistics.median(t for t, _ in cached), statistics.median(t for t, _ in full), same, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=60, help="system prompt + question tokens")
    parser.add_argument("--answer-tokens", type=int, default=45, help="answer text tokens besides the codebook")
    parser.add_argument("--targets", type=int, default=3, help="targets in the answer (MUSE: >= 2)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(
        f"Per-image FLOPs, prompt {args.prompt_tokens} + 256 image tokens, answer {args.answer_tokens} tokens, "
        f"{args.targets} targets (PixelLM: the real generate call)"
    )
    counts = sorted({1, args.targets})
    pixellm, lisa = (
        pixellm_flops(args.prompt_tokens, args.answer_tokens, counts),
        lisa_flops(args.prompt_tokens, args.answer_tokens, counts),
    )
    for targets in counts:
        pix, ref = pixellm[targets], lisa[targets]
        p_total, l_total = sum(pix.values()), sum(ref.values())
        print(f"\n  {targets} target(s)")
        print(
            "    PixelLM-7B: "
            + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in pix.items())
            + f" -> {p_total / 1e12:.3f} TFLOPs"
        )
        print(
            "    LISA-7B:    "
            + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in ref.items())
            + f" -> {l_total / 1e12:.3f} TFLOPs"
        )
        print(
            f"    PixelLM / LISA = {p_total / l_total:.3f}  ({100 * (1 - p_total / l_total):.1f} % fewer FLOPs; "
            "target <= 0.55; paper: up to 50 %)"
        )

    cached, full, same, params = generation_times(args.new_tokens, args.repeats)
    print(
        f"\n`small` preset ({params / 1e6:.1f} M parameters), {args.new_tokens} new tokens, batch 1, "
        f"{args.repeats} interleaved runs each, medians, {torch.get_num_threads()} threads:"
    )
    print(f"  KV cache {cached * 1e3:.1f} ms, full recomputation (released code) {full * 1e3:.1f} ms")
    print(f"  speed-up {full / cached:.1f}x (target >= 5x); identical tokens: {same}")


if __name__ == "__main__":
    main()
