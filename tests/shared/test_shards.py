"""WebDataset shards: the img2dataset layout, no repeats across ranks and workers, exact resume, URLs."""

from __future__ import annotations

import functools
import http.server
import json
import random
import tarfile
import threading
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch

from vislang.shared.data.robust import FAILURES_KEY, SampleLoadError
from vislang.shared.data.shards import (
    ShardDataset,
    ShardLoader,
    expand_shards,
    main,
    seeded,
    shard_sizes,
    write_shards,
)

SIZES = [7, 5, 9, 6, 8]  # uneven, as downloads leave them


def _samples(sizes: list[int]):
    number = 0
    for size in sizes:
        for _ in range(size):
            yield {"__key__": f"{number:09d}", "txt": str(number), "json": {"number": number}, "bin": b"x" * 10}
            number += 1


def _write(folder: Path, sizes: list[int]) -> Path:
    """Shards of exactly `sizes` samples (one write per shard size, renamed into one folder)."""
    out = folder / "shards"
    out.mkdir()
    start = 0
    for index, size in enumerate(sizes):
        part = folder / f"part{index}"
        samples = list(_samples(sizes))[start : start + size]
        write_shards(samples, part, samples_per_shard=size)
        (part / "00000.tar").rename(out / f"{index:05d}.tar")
        (part / "00000_stats.json").rename(out / f"{index:05d}_stats.json")
        start += size
    return out


def decode(sample: dict) -> dict:
    """A number from the caption and an 'augmentation' drawn from `random` (seeded per sample)."""
    if sample["__key__"] == "000000003" and sample.get("fail"):
        raise SampleLoadError(sample["__key__"], "test")
    return {
        "key": sample["__key__"],
        "number": int(sample["txt"]),
        "draw": random.random(),
        "torch_draw": float(torch.rand(())),
    }


def failing_decode(sample: dict) -> dict:
    if sample["__key__"] == "000000003":
        raise SampleLoadError(f"{sample['__url__']}#{sample['__key__']}", "corrupt")
    return decode(sample)


def collate(items: list[dict]) -> dict:
    return {name: [item[name] for item in items] for name in items[0]}


def _dataset(shards, workers: int, rank: int = 0, world: int = 1, **kwargs) -> ShardDataset:
    options = dict(batch_size=2, num_workers=workers, seed=7, shuffle_buffer=4, rank=rank, world_size=world)
    return ShardDataset(shards, decode, collate, **{**options, **kwargs})


def _epoch(dataset: ShardDataset, epoch: int, skip: int = 0) -> list[dict]:
    dataset.set_epoch(epoch)
    if skip:
        dataset.skip_batches(skip, dataset.batch_size)
    return [{k: v for k, v in batch.items() if k != FAILURES_KEY} for batch in ShardLoader(dataset)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("shards"), SIZES)


def test_writer_layout_and_stats(shards: Path) -> None:
    with tarfile.open(shards / "00000.tar") as tar:
        names = tar.getnames()
    assert names[:4] == ["000000000.bin", "000000000.json", "000000000.txt", "000000001.bin"]
    with tarfile.open(shards / "00000.tar") as tar:
        assert json.load(tar.extractfile("000000000.json")) == {"number": 0}
    assert json.loads((shards / "00002_stats.json").read_text())["successes"] == 9
    assert shard_sizes(expand_shards(str(shards))) == SIZES
    # without stats files the shards are counted
    for stats in shards.parent.glob("shards/*_stats.json"):
        stats.rename(stats.with_suffix(".bak"))
    try:
        assert shard_sizes(expand_shards(str(shards))) == SIZES
    finally:
        for stats in shards.parent.glob("shards/*.bak"):
            stats.rename(stats.with_suffix(".json"))


def test_interrupted_write_leaves_no_complete_looking_shard(tmp_path: Path) -> None:
    def broken():
        yield from itertools_islice(_samples([5]), 3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(broken(), tmp_path, samples_per_shard=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "00000_stats.json", "00001.tar.tmp"]
    with pytest.raises(FileExistsError):
        write_shards(_samples([2]), tmp_path, samples_per_shard=2)
    assert not list(tmp_path.glob("*.tmp"))  # the leftover is removed on the next write


def itertools_islice(iterable, count):
    for index, item in enumerate(iterable):
        if index == count:
            return
        yield item


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_see_no_sample_twice_and_take_equal_steps(shards: Path, workers: int) -> None:
    seen: list[str] = []
    lengths = []
    for rank in range(2):
        dataset = _dataset(str(shards), workers, rank=rank, world=2)
        batches = _epoch(dataset, epoch=3)
        lengths.append((len(batches), len(ShardLoader(dataset))))
        seen += [key for batch in batches for key in batch["key"]]
    # 5 shards over 2 ranks: one worker is dealt >= 2 shards (the smallest two hold 11 samples: 5 batches of
    # 2); with two workers each is dealt >= 1 (the smallest holds 5: 2 batches each, 4 per rank)
    per_rank = {0: 5, 2: 4}[workers]
    assert lengths == [(per_rank, per_rank)] * 2
    assert len(seen) == len(set(seen)) == 2 * per_rank * 2
    # another epoch deals the shards differently
    other = [k for b in _epoch(_dataset(str(shards), workers, rank=0, world=2), epoch=4) for k in b["key"]]
    assert other != seen[: len(other)]


def test_one_rank_reads_each_sample_at_most_once_per_epoch(shards: Path) -> None:
    dataset = _dataset(str(shards), 1, samples_per_epoch=None)
    keys = [k for batch in _epoch(dataset, 0) for k in batch["key"]]
    assert len(keys) == len(set(keys)) == (sum(sorted(SIZES)[:5]) // 2) * 2  # one worker: all five shards


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_skip_batches_resumes_exactly(shards: Path, workers: int) -> None:
    full = _epoch(_dataset(str(shards), workers), epoch=2)
    assert len(full) >= 6
    assert full != _epoch(_dataset(str(shards), workers), epoch=1)  # epochs differ
    for skip in (1, 3, len(full) - 1):
        resumed = _epoch(_dataset(str(shards), workers), epoch=2, skip=skip)
        assert resumed == full[skip:], f"skip {skip}"  # same samples, same order, same augmentation draws
    # the skip is used once: the next iteration of the same loader reads the whole epoch
    dataset = _dataset(str(shards), workers)
    _epoch(dataset, epoch=2, skip=2)
    assert _epoch(dataset, epoch=2) == full


def test_persistent_workers_follow_set_epoch_and_lightning_relays_it(shards: Path) -> None:
    dataset = _dataset(str(shards), 2)
    loader = ShardLoader(dataset, persistent_workers=True)
    first = [b["key"] for b in loader]
    _set_sampler_epoch(loader, 5)  # what Lightning's fit loop calls every epoch
    assert dataset.epoch == 5
    assert [b["key"] for b in loader] == [b["key"] for b in _epoch(_dataset(str(shards), 2), 5)] != first


def test_augmentation_depends_on_seed_epoch_and_key_only() -> None:
    with seeded(1, 2, "k"):
        a = (random.random(), float(torch.rand(())))
    state = random.getstate()
    with seeded(1, 2, "k"):
        assert (random.random(), float(torch.rand(()))) == a
    assert random.getstate() == state  # the caller's generators are restored
    with seeded(1, 3, "k"):
        assert random.random() != a[0]


def test_failed_sample_makes_its_batch_smaller_and_is_counted(shards: Path) -> None:
    dataset = ShardDataset(str(shards), failing_decode, collate, batch_size=2, shuffle=False, max_failure_fraction=0.5)
    batches = list(ShardLoader(dataset))
    assert len(batches) == len(dataset)
    assert sum(b[FAILURES_KEY] for b in batches) == 1
    assert sorted(len(b["key"]) for b in batches)[0] == 1
    strict = ShardDataset(str(shards), failing_decode, collate, batch_size=2, shuffle=False, max_failure_fraction=0)
    with pytest.raises(Exception, match="000000003: corrupt"):
        list(ShardLoader(strict))


def test_too_few_shards_and_too_many_samples_are_one_line_errors(shards: Path) -> None:
    with pytest.raises(ValueError, match="5 shards cannot feed 2 rank\\(s\\) x 3 worker"):
        len(_dataset(str(shards), 3, rank=0, world=2))
    with pytest.raises(ValueError, match="samples_per_epoch 1000"):
        len(_dataset(str(shards), 0, samples_per_epoch=1000))
    assert len(_dataset(str(shards), 0, samples_per_epoch=6)) == 3
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        expand_shards(str(shards.parent))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_http_and_pipe_shards_read_like_local_ones(shards: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=shards))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{{00000..00004}}.tar"
        local = _epoch(_dataset(str(shards), 2), epoch=1)
        remote = _dataset(url, 2)
        assert remote.sizes == SIZES  # from the served _stats.json files
        assert _epoch(remote, epoch=1) == local
        piped = _dataset(f"pipe:cat {shards}/{{00000..00004}}.tar", 0)
        assert piped.sizes == SIZES  # counted by streaming: a pipe has no stats file beside it
        assert _epoch(piped, epoch=1) == _epoch(_dataset(str(shards), 0), epoch=1)
    finally:
        server.shutdown()
        server.server_close()


def test_cli_refuses_a_config_without_shard_samples(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  class_path: torch.nn.Identity\n")
    with pytest.raises(SystemExit, match="cannot write shards"):
        main(["write", "--from", str(config), "--out", str(tmp_path / "out")])
