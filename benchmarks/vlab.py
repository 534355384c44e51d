"""VLAB benchmarks, every ratio measured in this one run (the machine is shared and noisy).

1. Data pipeline: clips per second of VLAB's loader path (TSN indices, decode only those frames,
   resize in the decoder) against decoding every frame with PyAV and then subsampling. Target >= 2x.
2. Encoder cost per clip: VLAB's video encoder (two CLIP streams + adapters + blending) against plain
   CLIP applied to the same frames, in FLOPs counted by torch's FlopCounterMode for the paper-size
   ViT-B/16 preset (8 frames at 224 px), and in wall-clock time for the tiny preset.

    python benchmarks/vlab.py [--videos 24] [--frames 96] [--size 224]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.video import write_video
from vislang.vlab.data import load_clip
from vislang.vlab.model import build_vlab


def decode_all_then_subsample(path: Path, num_frames: int, size: int) -> torch.Tensor:
    """The naive loader: every frame through PyAV to RGB, then pick T, then resize."""
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    picked = torch.from_numpy(frames[np.linspace(0, len(frames) - 1, num_frames).astype(int)]).permute(0, 3, 1, 2)
    return torch.nn.functional.interpolate(picked.float(), size=(size, size), mode="bilinear", antialias=True)


def clips_per_second(load, paths: list[Path], repeats: int = 2) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for path in paths:
            load(path)
    return repeats * len(paths) / (time.perf_counter() - start)


def encoder_flops(preset: str, frames: int, size: int) -> tuple[float, float]:
    with torch.device("meta"):
        model = build_vlab(preset, decoder_vocab_size=30522)
    video = torch.empty(1, frames, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model.encode_video(video)
    vlab = counter.get_total_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        model.clip.encode_image(video.flatten(0, 1))
    return vlab, counter.get_total_flops()


def encoder_seconds(frames: int, repeats: int = 20) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_vlab("tiny", decoder_vocab_size=500).eval()
    video = torch.randn(8, frames, 3, 32, 32)
    timings = []
    for encode in (lambda: model.encode_video(video), lambda: model.clip.encode_image(video.flatten(0, 1))):
        with torch.no_grad():
            encode()  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                encode()
        timings.append((time.perf_counter() - start) / repeats)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=96, help="frames per synthetic video file")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clip-frames", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    world = SyntheticWorld(seed=0, image_size=args.size, num_frames=args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_video(Path(tmp) / f"video{i}.mp4", world.video(i).frames, fps=25) for i in range(args.videos)]
        ours = clips_per_second(lambda p: load_clip(p, args.clip_frames, args.size), paths)
        naive = clips_per_second(lambda p: decode_all_then_subsample(p, args.clip_frames, args.size), paths)
    print(
        f"data pipeline, {args.videos} H.264 videos of {args.frames} frames at {args.size} px, {args.clip_frames} frames per clip, 1 thread"
    )
    print(f"  VLAB loader (decode only the sampled frames) : {ours:8.1f} clips/s")
    print(f"  decode every frame, then subsample           : {naive:8.1f} clips/s")
    print(f"  ratio                                        : {ours / naive:8.2f} x (target >= 2)")

    vlab, clip = encoder_flops("vlab_b16", args.clip_frames, 224)
    print(f"encoder cost per clip, vlab_b16 (ViT-B/16), {args.clip_frames} frames at 224 px (FLOPs, exact)")
    print(f"  plain CLIP over the frames : {clip / 1e9:9.1f} GFLOPs")
    print(f"  VLAB video encoder         : {vlab / 1e9:9.1f} GFLOPs = {vlab / clip:.2f} x CLIP")
    vlab_s, clip_s = encoder_seconds(4)
    print("encoder time per batch, tiny preset, 8 clips x 4 frames at 32 px, CPU")
    print(f"  plain CLIP : {clip_s * 1e3:7.2f} ms")
    print(f"  VLAB       : {vlab_s * 1e3:7.2f} ms = {vlab_s / clip_s:.2f} x CLIP")


if __name__ == "__main__":
    main()
