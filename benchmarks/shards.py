"""Loading throughput from WebDataset shards against the folder readers, every number measured in this run.

The same synthetic data is read both ways by the packages' own training loaders (the data modules'
``train_dataloader``), with the same batch size and worker count:

1. VLAB clips (MSRVTT layout, TSN-sampled, decoded and CLIP-normalised): the folder reader
   (``VideoTextDataset``, one item per video) against `train_shards` from a local folder and from
   shards served over HTTP on 127.0.0.1 (webdataset's ``curl`` pipe).
2. CMAE images (ImageNet folder layout, pixel-shift views): the folder reader against local shards.

Each configuration reads whole epochs; the configurations are interleaved over ``--repeats`` rounds and the
best round is kept (the machine is shared). Shards are the same bytes in a tar, so on a local disk with a
warm page cache the two should be close; the ratio says what the tar streaming, the per-sample temporary
file (decord and PyAV open files by name) and the seeded-augmentation context cost or save.

    python benchmarks/shards.py [--videos 160] [--images 1600] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import gc
import http.server
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vislang.cmae.data import CMAEPretrainDataModule
from vislang.shared.data.shards import write_shards
from vislang.shared.data.synthetic import SyntheticWorld, writers
from vislang.shared.data.synthetic.classification_writers import write_imagenet_folder
from vislang.vlab.data import VLABDataModule


def items_per_second(make_loader: Callable[[], object]) -> tuple[float, int]:
    """Items per second over one epoch of a fresh loader (worker start-up included, as in training)."""
    loader = make_loader()
    count = 0
    start = time.perf_counter()
    iterator = iter(loader)
    for batch in iterator:
        count += len(batch["index"])
    seconds = time.perf_counter() - start
    del iterator, loader  # stop the (persistent) workers here, before the next loader forks its own
    gc.collect()
    return count / seconds, count


def _vlab(root: Path, shards: str | None, workers: int, batch: int, size: int):
    def make():
        datamodule = VLABDataModule(
            dataset="msrvtt",
            root=str(root),
            tasks=["retrieval"],
            num_frames=4,
            image_size=size,
            batch_size=batch,
            num_workers=workers,
            expand_captions=False,
            train_shards=shards,
            shuffle_buffer=64,
        )
        datamodule.setup("fit")
        return datamodule.train_dataloader().flattened[0]

    return make


def _cmae(root: Path, shards: str | None, workers: int, batch: int):
    def make():
        datamodule = CMAEPretrainDataModule(
            dataset="imagenet_folder",
            root=str(root),
            image_size=32,
            max_shift=4,
            batch_size=batch,
            num_workers=workers,
            train_shards=shards,
            shuffle_buffer=256,
        )
        datamodule.setup("fit")
        return datamodule.train_dataloader()

    return make


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=160)
    parser.add_argument("--images", type=int, default=1600)
    parser.add_argument("--size", type=int, default=64, help="frame side of the VLAB clips")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        video_root, image_root = tmp / "msrvtt", tmp / "imagenet"
        writers.write_msrvtt(
            SyntheticWorld(seed=0, image_size=args.size, num_frames=16), video_root, num_videos=args.videos
        )
        write_imagenet_folder(SyntheticWorld(seed=0, image_size=32), image_root, args.images, 8)
        vlab = VLABDataModule(dataset="msrvtt", root=str(video_root), tasks=["retrieval"])
        samples, total = vlab.shard_samples("train")
        # shards of the size that gives every worker several: the policy reads only what all can supply
        write_shards(samples, tmp / "video_shards", max(total // (4 * args.workers), 1), total=total)
        cmae = CMAEPretrainDataModule(dataset="imagenet_folder", root=str(image_root))
        samples, total = cmae.shard_samples("train")
        write_shards(samples, tmp / "image_shards", max(total // (4 * args.workers), 1), total=total)

        count = len(list((tmp / "video_shards").glob("*.tar")))
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=tmp / "video_shards")
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}/{{00000..{count - 1:05d}}}.tar"

        configurations = {
            "VLAB clips, folder": _vlab(video_root, None, args.workers, args.batch, args.size),
            "VLAB clips, shards (local)": _vlab(
                video_root, str(tmp / "video_shards"), args.workers, args.batch, args.size
            ),
            "VLAB clips, shards (HTTP 127.0.0.1)": _vlab(video_root, url, args.workers, args.batch, args.size),
            "CMAE images, folder": _cmae(image_root, None, args.workers, args.batch),
            "CMAE images, shards (local)": _cmae(image_root, str(tmp / "image_shards"), args.workers, args.batch),
        }
        best: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeats):
            for name, make in configurations.items():
                rate, items = items_per_second(make)
                if name not in best or rate > best[name][0]:
                    best[name] = (rate, items)
        server.shutdown()
        server.server_close()

    print(f"workers {args.workers}, batch {args.batch}, best of {args.repeats} interleaved epochs per row")
    print(f"{'configuration':40s} {'items/epoch':>11s} {'items/s':>9s} {'vs folder':>9s}")
    for name, (rate, items) in best.items():
        folder = best[name.split(",")[0] + ", folder"][0]
        print(f"{name:40s} {items:11d} {rate:9.1f} {rate / folder:8.2f}x")


if __name__ == "__main__":
    main()
