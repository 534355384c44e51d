"""CMAE throughput claims at ViT-B, measured in one run on this machine.

1. Visible-only encoding (MAE Sec. 3, "the encoder operates only on visible patches"): forward + backward of
   the encoder on the 25 % visible tokens vs the same encoder on all tokens, at mask ratio 0.75. Target >= 3x.
2. Cost of CMAE over MAE: one CMAE step (online encoder on the visible tokens of the 0.65 block mask, pixel
   and feature decoders, no-grad target encoder on the full view, projector/predictor, InfoNCE, backward, EMA)
   over one MAE step (the same encoder on MAE's 0.75 random mask + the pixel decoder + backward), in FLOPs and
   in time. Target <= 2.2x.
3. Efficiency of the CMAE step: achieved FLOP/s against timm's ``VisionTransformer`` forward + backward at the
   same size and batch. Target >= 0.9x.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention,
forward and backward). On CPU, PyTorch's ``scaled_dot_product_attention`` runs
``aten._scaled_dot_product_flash_attention_for_cpu`` (and its ``_backward``), which the counter has no
formula for (it counted 0); ``register_cpu_attention_flops`` gives them PyTorch's own SDPA formulas:
2 batched matmuls forward (Q K^T and P V: 4 B H L_q L_k d), 5 backward (10 B H L_q L_k d).
Times are medians of interleaved repetitions (A, B, A, B, ...) after warm-up, so load from other processes
hits both sides alike. fp32 on CPU; ``OMP_WAIT_POLICY=PASSIVE`` keeps OpenMP threads from spinning when the
cores are shared (it must be set before torch loads, hence at the top of this file).

    python benchmarks/cmae.py [--preset vit_base] [--batch 2] [--repeats 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
from torch.utils import flop_counter  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from vislang.cmae.model import build_cmae, build_encoder, get_config, sample_mask  # noqa: E402

aten = torch.ops.aten
_CPU_SDPA = aten._scaled_dot_product_flash_attention_for_cpu
_CPU_SDPA_BACKWARD = aten._scaled_dot_product_flash_attention_for_cpu_backward


def register_cpu_attention_flops() -> None:
    """Teach ``FlopCounterMode`` the CPU flash-attention ops (idempotent)."""
    if _CPU_SDPA not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(_CPU_SDPA)
        def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if _CPU_SDPA_BACKWARD not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(_CPU_SDPA_BACKWARD)
        def _sdpa_cpu_backward(
            grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
        ) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn`` (2 per multiply-add), attention included."""
    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def interleaved_medians(fns: list[Callable[[], None]], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_base", help="image preset (vit_small, vit_base, ...)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_config(args.preset)
    b, size = args.batch, config.img_size
    x, target = torch.randn(b, 3, size, size), torch.randn(b, 3, size, size)

    # ---- 1. visible-only encoder vs all tokens, mask 0.75 ----
    encoder = build_encoder(config)
    ids_keep, _ = sample_mask(b, config.grid, 0.75, "random")

    def visible_only() -> None:
        encoder(x, ids_keep).sum().backward()
        encoder.zero_grad(set_to_none=True)

    def all_tokens() -> None:
        encoder(x).sum().backward()
        encoder.zero_grad(set_to_none=True)

    # ---- 2. CMAE step vs MAE step (same encoder and pixel decoder sizes) ----
    cmae = build_cmae(args.preset)
    mae = build_cmae(args.preset, mask_ratio=0.75, mask_type="random")  # only encoder + pixel decoder run

    def cmae_step() -> None:
        cmae(x, target)["loss"].backward()
        cmae.update_target(0.996)
        cmae.zero_grad(set_to_none=True)

    def mae_step() -> None:
        keep, mask = mae.sample_mask(b, x.device)
        pred = mae.pixel_decoder(mae.encoder(x, keep), keep)
        loss = (((pred - mae.reconstruction_target(x)) ** 2).mean(-1) * mask).sum() / mask.sum()
        loss.backward()
        mae.zero_grad(set_to_none=True)

    # ---- 3. timm ViT forward + backward ----
    timm_vit = timm.create_model(f"{args.preset}_patch16_224", pretrained=False, num_classes=0)

    def timm_step() -> None:
        timm_vit(x).sum().backward()
        timm_vit.zero_grad(set_to_none=True)

    steps = {"visible": visible_only, "all": all_tokens, "cmae": cmae_step, "mae": mae_step, "timm": timm_step}
    counted = {name: count_flops(fn) for name, fn in steps.items()}  # also a first warm-up
    seconds = dict(zip(steps, interleaved_medians(list(steps.values()), args.repeats), strict=True))

    print(
        f"CMAE benchmark: preset {args.preset}, batch {b}, {size}px, fp32 CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, timm {timm.__version__}, median of {args.repeats}"
    )
    print(f"{'measurement':<56}{'ms':>10}{'GFLOP':>10}{'GFLOP/s':>10}")
    names = {
        "visible": "encoder fwd+bwd, visible tokens only (mask 0.75)",
        "all": "encoder fwd+bwd, all tokens",
        "cmae": "CMAE step (fwd+bwd+EMA, block mask 0.65)",
        "mae": "MAE step (encoder + pixel decoder, mask 0.75)",
        "timm": f"timm {args.preset}_patch16_224 fwd+bwd",
    }
    for key, name in names.items():
        s, f = seconds[key], counted[key]
        print(f"{name:<56}{s * 1e3:>10.1f}{f / 1e9:>10.1f}{f / 1e9 / s:>10.1f}")
    speedup = seconds["all"] / seconds["visible"]
    cost_flops, cost_time = counted["cmae"] / counted["mae"], seconds["cmae"] / seconds["mae"]
    efficiency = (counted["cmae"] / seconds["cmae"]) / (counted["timm"] / seconds["timm"])
    print(f"visible-only encoder speed-up at mask 0.75: {speedup:.2f}x (target >= 3x)")
    print(f"CMAE step / MAE step: {cost_flops:.2f}x FLOPs, {cost_time:.2f}x time (target <= 2.2x)")
    print(f"CMAE step achieved FLOP/s / timm ViT fwd+bwd FLOP/s: {efficiency:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
