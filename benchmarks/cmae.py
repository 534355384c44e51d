"""CMAE throughput claims, measured in one run on this machine.

1. Visible-only encoding (MAE Sec. 3, "the encoder operates only on visible patches"): forward + backward of
   the encoder on the 25 % visible tokens vs the same encoder on all tokens, at mask ratio 0.75. Target >= 3x.
2. Efficiency of the whole pre-training step (online encoder on visible tokens, pixel and feature decoders,
   no-grad target encoder on the full view, projector/predictor, InfoNCE, backward, EMA update): achieved
   FLOP/s against timm's ``VisionTransformer`` forward + backward at the same size and batch. Target >= 0.9x.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and
backward); times are medians of interleaved repetitions (A, B, A, B, ...) after warm-up, so load from other
processes hits both sides alike. fp32 on CPU; ``OMP_WAIT_POLICY=PASSIVE`` keeps OpenMP threads from spinning
when the cores are shared (it must be set before torch loads, hence at the top of this file).

    python benchmarks/cmae.py [--preset vit_small] [--batch 8] [--repeats 7]
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
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from vislang.cmae.model import build_cmae, build_encoder, get_config, sample_mask  # noqa: E402


def flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def interleaved_medians(fns: list[Callable[[], None]], repeats: int, warmup: int = 2) -> list[float]:
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
    parser.add_argument("--preset", default="vit_small", help="image preset (vit_small, vit_base, ...)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_config(args.preset)
    b, size = args.batch, config.img_size
    x = torch.randn(b, 3, size, size)

    # ---- 1. visible-only encoder vs all tokens, mask 0.75 ----
    encoder = build_encoder(config)
    ids_keep, _ = sample_mask(b, config.grid, 0.75, "random")

    def visible_only() -> None:
        encoder(x, ids_keep).sum().backward()

    def all_tokens() -> None:
        encoder(x).sum().backward()

    t_visible, t_all = interleaved_medians([visible_only, all_tokens], args.repeats)

    # ---- 2. CMAE step vs timm ViT forward + backward ----
    cmae = build_cmae(args.preset)
    timm_vit = timm.create_model(f"{args.preset}_patch16_224", pretrained=False, num_classes=0)
    target = torch.randn_like(x)

    def cmae_step() -> None:
        cmae(x, target)["loss"].backward()
        cmae.update_target(0.996)
        cmae.zero_grad(set_to_none=True)

    def timm_step() -> None:
        timm_vit(x).sum().backward()
        timm_vit.zero_grad(set_to_none=True)

    f_cmae, f_timm = flops(cmae_step), flops(timm_step)
    f_visible, f_all = flops(visible_only), flops(all_tokens)
    t_cmae, t_timm = interleaved_medians([cmae_step, timm_step], args.repeats)

    print(f"CMAE benchmark: preset {args.preset}, batch {b}, {size}px, fp32 CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, timm {timm.__version__}, median of {args.repeats}")  # fmt: skip
    print(f"{'measurement':<52}{'ms':>10}{'GFLOP':>10}{'GFLOP/s':>10}")
    rows = [
        ("encoder fwd+bwd, visible tokens only (mask 0.75)", t_visible, f_visible),
        ("encoder fwd+bwd, all tokens", t_all, f_all),
        ("CMAE pre-training step (fwd+bwd+EMA, mask 0.65)", t_cmae, f_cmae),
        (f"timm {args.preset}_patch16_224 fwd+bwd", t_timm, f_timm),
    ]
    for name, seconds, count in rows:
        print(f"{name:<52}{seconds * 1e3:>10.1f}{count / 1e9:>10.1f}{count / 1e9 / seconds:>10.1f}")
    speedup = t_all / t_visible
    efficiency = (f_cmae / t_cmae) / (f_timm / t_timm)
    print(f"visible-only encoder speed-up at mask 0.75: {speedup:.2f}x (target >= 3x)")
    print(f"CMAE step achieved FLOP/s / timm ViT fwd+bwd FLOP/s: {efficiency:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
