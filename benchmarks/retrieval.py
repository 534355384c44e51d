"""Retrieval evaluation at 10,000 x 10,000: peak memory vs the result matrix, time vs one plain matmul.

    python benchmarks/retrieval.py [--n 10000] [--dim 256] [--block-size 256]

Memory is measured as the growth of the process's peak resident set (Linux ``VmHWM``) over the resident
set just before the evaluation: torch's CPU allocator calls ``malloc`` directly, so ``tracemalloc`` would
not see the tensors, and torch keeps no CPU memory statistics. ``VmHWM`` is reset in-process through
``/proc/self/clear_refs`` before each measured phase so the phases do not mask each other. The embeddings
are allocated before the baseline is taken (they are inputs, not evaluation memory). Target: peak
evaluation memory <= 1.5x the float32 N x N result.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from vislang.shared.metrics import blockwise_similarity, retrieval_metrics, transpose_positives


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _reset_peak() -> int:
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    return _status_kib("VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=256)
    args = parser.parse_args()
    n = args.n
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(n, args.dim, generator=g), dim=-1)
    video = torch.nn.functional.normalize(text + 0.5 * torch.randn(n, args.dim, generator=g), dim=-1)
    positives = torch.arange(n)  # one correct video per text (MSRVTT 1k-A style)
    result_kib = n * n * 4 / 1024

    # Warm-up (thread pools, first-touch of code pages) outside the measurements.
    blockwise_similarity(text[:512], video[:512], args.block_size)
    (text[:512] @ video[:512].T).sum()

    base = _reset_peak()
    t0 = time.perf_counter()
    plain = text @ video.T
    t_matmul = time.perf_counter() - t0
    mem_matmul = _status_kib("VmHWM") - base
    del plain

    base = _reset_peak()
    t0 = time.perf_counter()
    sim = blockwise_similarity(text, video, args.block_size)
    t_sim = time.perf_counter() - t0
    t2v = retrieval_metrics(sim, positives, block_size=args.block_size)
    v2t = retrieval_metrics(sim.T, transpose_positives(positives, n), block_size=args.block_size)
    t_eval = time.perf_counter() - t0
    mem_eval = _status_kib("VmHWM") - base
    del sim

    print(
        f"retrieval evaluation {n} x {n}, dim {args.dim}, block {args.block_size} rows, {torch.get_num_threads()} threads"
    )
    print(f"  result matrix (float32)        : {result_kib / 1024:8.1f} MiB")
    print(f"  peak, plain matmul             : {mem_matmul / 1024:8.1f} MiB = {mem_matmul / result_kib:.3f} x result")
    print(
        f"  peak, similarity + both ranks  : {mem_eval / 1024:8.1f} MiB = {mem_eval / result_kib:.3f} x result (target <= 1.5)"
    )
    print(f"  time, plain matmul             : {t_matmul:8.3f} s")
    print(f"  time, blockwise similarity     : {t_sim:8.3f} s = {t_sim / t_matmul:.2f} x matmul")
    print(f"  time, similarity + t2v + v2t   : {t_eval:8.3f} s = {t_eval / t_matmul:.2f} x matmul")
    print(f"  t2v R@1/5/10 {t2v['R@1']:.2f}/{t2v['R@5']:.2f}/{t2v['R@10']:.2f} MdR {t2v['MdR']} MnR {t2v['MnR']:.2f}")
    print(f"  v2t R@1/5/10 {v2t['R@1']:.2f}/{v2t['R@5']:.2f}/{v2t['R@10']:.2f} MdR {v2t['MdR']} MnR {v2t['MnR']:.2f}")


if __name__ == "__main__":
    main()
