"""WebDataset tar shards: reading them split by rank and worker, resumable mid-epoch, and writing them.

The layout is the one img2dataset and video2dataset write: shards ``00000.tar``, ``00001.tar``, ... each
holding samples ``{key}.jpg`` (or ``.mp4`` ...), ``{key}.txt`` (the caption) and ``{key}.json`` (metadata),
with ``00000_stats.json`` beside each shard (its ``"successes"`` is the number of samples in it). Shards
are read with the `webdataset` library (tar streaming, ``pipe:`` and ``http(s)://`` through its `gopen`,
brace expansion of shard lists); what it does not give is an exact epoch, so that part is here.

The epoch policy (why no sample repeats and every rank takes the same number of steps):

1. Epoch ``e`` permutes the shard list with a generator seeded by ``(seed, e)``; rank ``r`` of ``R`` takes
   ``shards[r::R]`` and its loader worker ``w`` of ``W`` takes every ``W``-th of those. A shard is read by
   one worker of one rank, so no sample is seen twice in an epoch.
2. Every rank yields the same number of batches: each logical worker yields at most as many samples as the
   ``(len(shards) // R) // W`` smallest shards hold (the least any worker can be dealt in any epoch), cut to
   whole batches (``batches_per_epoch``). Samples past that point stay unread this epoch; the next epoch's
   permutation deals the shards differently. Under DDP ranks that see different numbers of batches hang
   in the gradient all-reduce; this rule makes that impossible. Fewer than ``R * W`` shards is an error.
3. Within a worker, samples pass through a shuffle buffer seeded by ``(seed, e, rank, worker)`` and are
   batched inside the dataset (the DataLoader runs with ``batch_size=None``), so batch ``b`` of the epoch
   is batch ``b // W`` of logical worker ``b % W`` -- the order the DataLoader collects them in.
4. Augmentations draw from `random`, `numpy` and `torch` seeded by ``(seed, epoch, sample key)``
   (`seeded`), so a resumed run decodes the same views.

Exact resume: ``set_epoch(e)`` then ``skip_batches(k, batch_size)`` makes the next iteration start at batch
``k`` of epoch ``e``. Skipped samples are read from the tar stream (needed to reproduce the shuffle buffer)
but not decoded. The DataLoader always asks worker 0 first, so after a skip physical worker ``p`` plays
logical worker ``(p + k) % W``: the first batch delivered is batch ``k``. Resume needs the same shards,
seed, world size, worker count and batch size as the interrupted run (as a DistributedSampler needs the
same world size).

Iterate through `ShardLoader`: it hands Lightning's per-epoch ``set_epoch`` to the dataset (Lightning calls
it on ``loader.sampler`` only) and activates a pending skip before the workers start. The epoch, skip and
rank live in a shared-memory tensor, so persistent workers see them too.

Writing: `write_shards` writes samples to ``{out}/{n:05d}.tar`` through a temporary name and renames it
when complete (with its ``_stats.json`` first), so an interrupted write never leaves a shard that looks
complete. ``python -m vislang.shared.data.shards write --from <config.yaml> --out <dir>
--samples-per-shard N`` converts the training split of a config's data module (one that has a
``shard_samples(split)`` method: VLAB's and CMAE's; a config with ``synthetic_*`` writes the synthetic world
first).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data.dataloader import _InfiniteConstantSampler

from vislang.shared.data.resume import SampleKey, resume_position
from vislang.shared.data.resume import seeded as resume_seeded
from vislang.shared.data.robust import FAILURES_KEY, SampleLoadError, TooManyLoadFailures

__all__ = [
    "ShardDataset",
    "ShardLoader",
    "bytes_as_file",
    "expand_shards",
    "main",
    "sample_seed",
    "seeded",
    "shard_sizes",
    "worker_shards",
    "write_from_config",
    "write_shards",
]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "gif")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")
_TEMPORARY_SUFFIX = ".tmp"

# ---- shard lists ---------------------------------------------------------------------------------


def _is_local(url: str) -> bool:
    return urlparse(url).scheme in ("", "file") and not url.startswith("pipe:")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """The shard URLs a spec names, in order.

    Args:
        spec: a local folder (its ``*.tar`` files, sorted), a brace pattern
            (``data/{00000..00099}.tar``, ``http://host/webvid/{00000..04999}.tar``,
            ``pipe:curl -s http://host/{00000..00009}.tar``; ``::`` joins several), or a list of those.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        if _is_local(item) and Path(item).is_dir():
            found = sorted(str(path) for path in Path(item).glob("*.tar"))
            if not found:
                raise FileNotFoundError(
                    f"{item}: no .tar shards in this folder; write them with "
                    "`python -m vislang.shared.data.shards write --from <config> --out {item}`"
                )
            urls += found
        else:
            urls += wds.shardlists.expand_urls(item)
    missing = [url for url in urls if _is_local(url) and not Path(urlparse(url).path or url).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) missing, e.g. {missing[0]}: check the shard pattern")
    if not urls:
        raise ValueError(f"{spec!r} names no shards")
    return urls


def _stats_url(url: str) -> str | None:
    """``…/00000_stats.json`` beside ``…/00000.tar`` (img2dataset's and video2dataset's name), None for pipes."""
    if url.startswith("pipe:") or not url.endswith(".tar"):
        return None
    return url.removesuffix(".tar") + "_stats.json"


def _raw_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard as webdataset groups them: ``{"__key__", "__url__", ext: bytes, ...}``."""
    return wds.tariterators.tarfile_samples(iter([{"url": url}]))


def shard_sizes(urls: Sequence[str]) -> list[int]:
    """Samples per shard: ``successes`` of each shard's ``_stats.json``, or a count of the shard's samples
    (streaming it once) when there is no stats file (``pipe:`` shards, hand-made tars)."""
    sizes = []
    for url in urls:
        stats = _stats_url(url)
        size = None
        if stats is not None:
            try:
                with wds.gopen(stats) as handle:
                    size = int(json.load(handle)["successes"])
            except Exception:  # no stats file (curl exits 22, open fails) or another format: count instead
                size = None
        if size is None:
            try:
                size = sum(1 for _ in _raw_samples(url))
            except Exception as error:
                raise FileNotFoundError(f"{url}: cannot read this shard ({error}); check the URL or path") from None
        sizes.append(size)
    return sizes


def worker_shards(
    num_shards: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    shuffle: bool = True,
) -> list[int]:
    """The shards (indices into the shard list) logical `worker` of `rank` reads in `epoch`, in order."""
    order = np.random.default_rng([seed, epoch]).permutation(num_shards) if shuffle else np.arange(num_shards)
    return order[rank::world_size][worker::num_workers].tolist()


# ---- per-sample randomness -----------------------------------------------------------------------


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """A 63-bit seed that depends on ``(seed, epoch, key)`` only (not on the process or the order)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded(seed: int, epoch: int, key: str) -> Iterator[None]:
    """Seed `random`, `numpy` and `torch` (CPU) from ``(seed, epoch, key)`` inside the block and restore
    their states afterwards, so a sample's augmentation is the same in a resumed run (the folder
    readers' `vislang.shared.data.resume.seeded`, with the key's hash standing for the index)."""
    with resume_seeded([SampleKey(sample_seed(0, 0, key), epoch, seed)]):
        yield


@contextmanager
def bytes_as_file(data: bytes, suffix: str) -> Iterator[Path]:
    """The bytes as a temporary file (in /dev/shm when there is one), for readers that take a path
    (`vislang.shared.data.video.VideoReader`: decord and PyAV open files by name)."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=folder) as handle:
        handle.write(data)
        handle.flush()
        yield Path(handle.name)


# ---- reading ---------------------------------------------------------------------------------------

# slots of the shared state tensor
_EPOCH, _PENDING_SKIP, _SKIP, _RANK, _WORLD = range(5)


def _distributed_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Batches decoded from WebDataset shards, with the epoch policy of the module docstring.

    Args:
        shards: the shards (see `expand_shards`): a folder, a brace pattern (local, ``http(s)://``,
            ``pipe:``), or a list.
        decode: turns a raw sample ``{"__key__", "__url__", "<ext>": bytes, ...}`` into a training item;
            it runs inside `seeded` and raises `SampleLoadError` for a sample it cannot read.
        collate: stacks a list of items into a batch (a dict: it gets ``batch[FAILURES_KEY]``).
        batch_size: items per batch.
        num_workers: the DataLoader's workers (0 = the main process); the plan depends on it.
        seed: seeds the shard permutation, the shuffle buffers and the augmentations (with the epoch).
        shuffle: permute shards and shuffle samples (training); False reads shards in order.
        shuffle_buffer: samples in each worker's shuffle buffer (webdataset's ``shuffle``).
        samples_per_epoch: samples per rank per epoch; None = the most the policy allows. A larger value
            than the policy allows is an error (it would repeat samples or stall a rank).
        max_failure_fraction: stop when more than this fraction of a worker's samples fail to decode.
        rank / world_size: override torch.distributed's (for tests simulating several ranks).
        sizes: samples per shard when known (skips reading the ``_stats.json`` files).

    A batch holding a sample that failed to decode is that much smaller (every rank still takes the same
    number of steps); ``batch[FAILURES_KEY]`` counts the failures for `LoadFailureMonitor`.
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        decode: Callable[[dict[str, Any]], Any],
        collate: Callable[[list[Any]], Any],
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        max_failure_fraction: float = 0.01,
        rank: int | None = None,
        world_size: int | None = None,
        sizes: Sequence[int] | None = None,
    ) -> None:
        if batch_size <= 0 or num_workers < 0:
            raise ValueError(
                f"batch_size must be positive and num_workers non-negative, got {batch_size}, {num_workers}"
            )
        self.urls = expand_shards(shards)
        self.sizes = list(sizes) if sizes is not None else shard_sizes(self.urls)
        if len(self.sizes) != len(self.urls):
            raise ValueError(f"{len(self.sizes)} sizes given for {len(self.urls)} shards")
        self.decode, self.collate = decode, collate
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.samples_per_epoch, self.max_failure_fraction = samples_per_epoch, max_failure_fraction
        self._fixed_rank = None if rank is None else (rank, world_size if world_size is not None else 1)
        # epoch, pending skip, active skip, rank, world: shared with the workers
        self._state = torch.tensor([0, 0, 0, -1, -1], dtype=torch.int64).share_memory_()

    # -- the interface the resume callback calls --

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (seeds the shard permutation, shuffles and augmentations)."""
        self._state[_EPOCH] = int(epoch)

    def skip_batches(self, batches: int, batch_size: int) -> None:
        """The next iteration starts after `batches` batches of the current epoch were consumed.

        `batch_size` must be this dataset's (a resumed run with another batch size cannot be exact).
        """
        if batch_size != self.batch_size:
            raise ValueError(
                f"skip_batches: batch_size {batch_size} differs from the dataset's {self.batch_size}; "
                "resume with the interrupted run's batch size"
            )
        if not 0 <= batches <= len(self):
            raise ValueError(f"skip_batches: {batches} is outside this epoch's 0..{len(self)} batches")
        self._state[_PENDING_SKIP] = int(batches)  # applies to the epoch the next iteration reads

    # -- plan --

    @property
    def epoch(self) -> int:
        return int(self._state[_EPOCH])

    def rank_world(self) -> tuple[int, int]:
        if self._fixed_rank is not None:
            return self._fixed_rank
        if int(self._state[_WORLD]) > 0:  # recorded by the main process (workers may lack the process group)
            return int(self._state[_RANK]), int(self._state[_WORLD])
        return _distributed_rank_world()

    def _record_rank(self) -> None:
        rank, world = self._fixed_rank or _distributed_rank_world()
        self._state[_RANK], self._state[_WORLD] = rank, world

    @property
    def workers(self) -> int:
        """Logical workers (the main process counts as one)."""
        return max(self.num_workers, 1)

    def max_batches_per_epoch(self, world_size: int | None = None) -> int:
        """The most batches per rank per epoch that no deal of shards can leave a worker short of."""
        world = self.rank_world()[1] if world_size is None else world_size
        per_worker = len(self.urls) // world // self.workers
        if per_worker == 0:
            raise ValueError(
                f"{len(self.urls)} shards cannot feed {world} rank(s) x {self.workers} worker(s) "
                "without repeating samples: write smaller shards (--samples-per-shard) or use "
                "fewer workers"
            )
        per_worker_batches = sum(sorted(self.sizes)[:per_worker]) // self.batch_size
        if per_worker_batches == 0:
            raise ValueError(
                f"the smallest {per_worker} shard(s) hold fewer samples than one batch of "
                f"{self.batch_size}: write larger shards or lower the batch size"
            )
        return per_worker_batches * self.workers

    def __len__(self) -> int:
        """Batches per rank per epoch (the same on every rank)."""
        if get_worker_info() is None:
            self._record_rank()
        return self.batches_per_epoch()

    def batches_per_epoch(self) -> int:
        """Batches per rank per epoch: `samples_per_epoch` in batches, or the most the policy allows."""
        most = self.max_batches_per_epoch()
        if self.samples_per_epoch is None:
            return most
        wanted = self.samples_per_epoch // self.batch_size
        if wanted > most or wanted == 0:
            raise ValueError(
                f"samples_per_epoch {self.samples_per_epoch} = {wanted} batches of {self.batch_size}; "
                f"these shards allow 1..{most} batches per rank without repeating samples "
                f"({most * self.batch_size} samples): lower it or leave it unset"
            )
        return wanted

    def begin_iteration(self) -> None:
        """Called in the main process before the workers start an iteration: activates a pending skip."""
        self._record_rank()
        self._state[_SKIP] = self._state[_PENDING_SKIP]
        self._state[_PENDING_SKIP] = 0

    # -- iteration --

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(
                f"the dataset was planned for {self.num_workers} workers but the loader has "
                f"{info.num_workers}; build it with num_workers={info.num_workers}"
            )
        physical = 0 if info is None else info.id
        epoch, skip = self.epoch, int(self._state[_SKIP])
        if info is None:
            self._record_rank()
        rank, world = self.rank_world()
        total = self.batches_per_epoch()
        logical = (physical + skip) % self.workers
        mine = len(range(logical, total, self.workers))  # batches b of the epoch with b % W == logical
        skipped = len(range(logical, skip, self.workers))  # of those, the ones already consumed
        shards = worker_shards(len(self.urls), self.seed, epoch, rank, world, logical, self.workers, self.shuffle)
        stream: Iterator[dict[str, Any]] = self._samples(shards)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(sample_seed(self.seed, epoch, f"shuffle/{rank}/{logical}"))
            stream = wds.filters.shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng)(stream)
        failures_left = self.max_failure_fraction * mine * self.batch_size
        produced = 0
        for number in range(mine):
            raw = list(itertools.islice(stream, self.batch_size))
            if len(raw) < self.batch_size:
                urls = [self.urls[s] for s in shards]
                raise RuntimeError(
                    f"rank {rank} worker {logical} read only {number * self.batch_size + len(raw)} "
                    f"samples from {urls} in epoch {epoch}, fewer than their sizes {self.sizes} "
                    "promise: a _stats.json overstates its shard; delete it to count instead"
                )
            produced += 1
            if number < skipped:
                continue  # consumed before the interruption: read (for the shuffle buffer), not decoded
            items, failures = [], 0
            for sample in raw:
                try:
                    with seeded(self.seed, epoch, sample["__key__"]):
                        items.append(self.decode(sample))
                except SampleLoadError as error:
                    failures += 1
                    failures_left -= 1
                    log.warning("skipping unreadable sample %s: %s", error.path, error.reason)
                    if failures_left < 0:
                        raise TooManyLoadFailures(
                            f"{error.path}: {error.reason}; more than "
                            f"{self.max_failure_fraction:.2%} of this worker's samples "
                            "failed: check the shards or raise max_failure_fraction"
                        ) from None
            if not items:
                raise TooManyLoadFailures(f"no sample of a batch from {sample['__url__']} could be decoded")
            batch = self.collate(items)
            batch[FAILURES_KEY] = failures
            yield batch
        assert produced == mine

    def _samples(self, shards: list[int]) -> Iterator[dict[str, Any]]:
        for shard in shards:
            for position, sample in enumerate(_raw_samples(self.urls[shard])):
                sample["__index__"] = shard * 10**7 + position  # a stable integer per sample
                yield sample


class _EpochRelay(_InfiniteConstantSampler):
    """The loader's sampler: Lightning calls ``loader.sampler.set_epoch(epoch)`` every epoch."""

    def __init__(self, dataset: ShardDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class ShardLoader(DataLoader):
    """A DataLoader over a `ShardDataset` (which batches itself): relays ``set_epoch`` from Lightning,
    activates a pending ``skip_batches`` before each iteration, and starts a resumed run where its
    checkpoint was written.

    Args:
        dataset: the shard dataset; its ``num_workers`` is the loader's.
        trainer: the data module's ``self.trainer``: when it resumes from a checkpoint with an
            ``ExactResume`` callback (`vislang.shared.callbacks`), the first iteration starts at the
            recorded (epoch, batch). None outside a Trainer.
        persistent_workers: keep workers between epochs (the shared state reaches them).
        pin_memory / prefetch_factor: as DataLoader's.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        trainer: Any = None,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        workers = dataset.num_workers
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and workers > 0,
            prefetch_factor=prefetch_factor if workers > 0 else None,
        )
        object.__setattr__(self, "sampler", _EpochRelay(dataset))  # DataLoader forbids setting it after init
        position = resume_position(trainer)
        if position is not None:
            epoch, batches = position
            dataset.set_epoch(epoch)
            # a loader shorter than the epoch (CombinedLoader's max_size_cycle) is re-iterated within it
            dataset.skip_batches(batches % max(len(dataset), 1), dataset.batch_size)

    def __iter__(self) -> Iterator[Any]:
        self.dataset.begin_iteration()
        return super().__iter__()


# ---- writing ---------------------------------------------------------------------------------------


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    temporary = path.with_name(path.name + _TEMPORARY_SUFFIX)
    with temporary.open("wb") as handle:
        write(handle)
    os.replace(temporary, path)


def write_shards(
    samples: Iterable[dict[str, Any]],
    out: str | Path,
    samples_per_shard: int,
    total: int | None = None,
    source: str = "",
) -> list[Path]:
    """Write samples into ``out/00000.tar``, ``00001.tar``, ... with ``00000_stats.json`` beside each.

    Each sample is a dict with ``"__key__"`` (unique, no dots) and one entry per file: bytes are stored
    as they are, str as UTF-8 (``txt``), dicts as JSON (``json``), ints as text (``cls``). A shard is
    written under ``<name>.tmp`` and renamed once complete, its stats file first; leftovers of an
    interrupted write are removed. Refuses a folder that already holds shards.

    Returns:
        The shard paths.
    """
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(f"*{_TEMPORARY_SUFFIX}"):
        leftover.unlink()
    if any(out.glob("*.tar")):
        raise FileExistsError(f"{out} already holds shards; write into an empty folder")
    from tqdm import tqdm

    written: list[Path] = []
    progress = tqdm(samples, total=total, desc=f"writing shards to {out}", unit="sample")
    stream = iter(progress)
    keys: set[str] = set()
    while True:
        first = next(stream, None)
        if first is None:
            break
        name, start, count = f"{len(written):05d}", time.time(), 0
        temporary = out / f"{name}.tar{_TEMPORARY_SUFFIX}"
        with temporary.open("wb") as handle, wds.TarWriter(handle) as writer:  # streamed: shards can be GBs
            for sample in itertools.chain([first], itertools.islice(stream, samples_per_shard - 1)):
                key = sample.get("__key__")
                if not isinstance(key, str) or "." in key or key in keys:
                    raise ValueError(f"sample key {key!r}: keys must be unique strings without dots")
                keys.add(key)
                writer.write(sample)
                count += 1
        stats = {
            "count": count,
            "successes": count,
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "duration": time.time() - start,
            "source": source,
        }
        _write_atomic(out / f"{name}_stats.json", lambda h, s=stats: h.write(json.dumps(s, indent=2).encode()))
        os.replace(temporary, out / f"{name}.tar")
        written.append(out / f"{name}.tar")
    progress.close()
    return written


def write_from_config(config: str | Path, out: str | Path, samples_per_shard: int, split: str = "train") -> list[Path]:
    """Shards of one split of the data module a ``lightning`` config names (its ``data:`` section).

    The data module's ``prepare_data()`` runs first (a config with ``synthetic_*`` set writes the synthetic
    world), then its ``shard_samples(split)`` yields the samples.
    """
    import importlib

    import yaml

    path = Path(config)
    data = (yaml.safe_load(path.read_text()) or {}).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{path}: no `data: {{class_path: ..., init_args: ...}}` section to read the dataset from")
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not hasattr(cls, "shard_samples"):
        raise ValueError(
            f"{path}: {data['class_path']} cannot write shards (it has no shard_samples method); "
            "VLABDataModule and CMAEPretrainDataModule can"
        )
    datamodule = cls(**(data.get("init_args") or {}))
    datamodule.prepare_data()
    samples, total = datamodule.shard_samples(split)
    return write_shards(samples, out, samples_per_shard, total=total, source=f"{path} ({split})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vislang.shared.data.shards", description="WebDataset shards of vislang's datasets"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write a config's dataset split into tar shards")
    write.add_argument("--from", dest="source", required=True, help="a lightning config whose data module to convert")
    write.add_argument("--out", required=True, help="the folder for 00000.tar, 00001.tar, ...")
    write.add_argument("--samples-per-shard", type=int, default=1000)
    write.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    try:
        shards = write_from_config(args.source, args.out, args.samples_per_shard, args.split)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {len(shards)} shard(s) to {args.out}")


if __name__ == "__main__":
    main()
