"""Skip-and-count of unreadable samples: substitution, counting through DataLoader workers, the limit,
and the Lightning callback that logs the count."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vislang.shared.callbacks import LoadFailureMonitor
from vislang.shared.data.robust import (
    FAILURES_KEY,
    RobustDataset,
    SampleLoadError,
    TooManyLoadFailures,
    collate_with_failures,
    count_failures,
)
from vislang.shared.data.video import VideoDecodeError, VideoReader, uniform_indices, write_video


class VideoFiles(Dataset):
    """Four uniformly sampled frames of each file, as a real video dataset would load them."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        reader = VideoReader(self.paths[index])  # opened here, inside the worker
        frames = reader.get_frames(uniform_indices(len(reader), 4), size=16)
        return {"video": torch.from_numpy(frames), "index": index}


class Flaky(Dataset):
    """Samples are their index; the listed indices raise `SampleLoadError`."""

    def __init__(self, size: int, bad: set[int]) -> None:
        self.size, self.bad = size, bad

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index in self.bad:
            raise SampleLoadError(f"file{index}.mp4", "corrupt")
        return {"index": index}


BAD = {3: "truncated", 7: "zero", 8: "missing"}  # 7 and 8 adjacent: a substitute can fail too


@pytest.fixture(scope="module")
def video_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("robust")
    frames = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    good = write_video(root / "good.mp4", frames, fps=8)
    data = good.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "zero.mp4").write_bytes(b"")
    return [root / f"{BAD[i]}.mp4" if i in BAD else good for i in range(20)]


def test_bad_videos_raise_video_decode_errors(video_paths: list[Path]) -> None:
    for index in BAD:
        with pytest.raises(VideoDecodeError):
            VideoFiles(video_paths)[index]


def test_failures_are_skipped_substituted_by_the_next_index_and_counted(
    video_paths: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    dataset = RobustDataset(VideoFiles(video_paths), max_failure_fraction=0.25)
    with caplog.at_level(logging.WARNING, logger="vislang.shared.data.robust"):
        samples = [dataset[i] for i in range(len(dataset))]
        again = dataset[3]  # a file known to fail is not tried again: no load, no count, no log
    assert [s["index"] for s in samples][2:10] == [2, 4, 4, 5, 6, 9, 9, 9]
    assert [s[FAILURES_KEY] for s in samples][2:10] == [0, 1, 0, 0, 0, 2, 0, 0]
    assert again["index"] == 4 and again[FAILURES_KEY] == 0
    # 17 good indices once; 3 -> 4 (2 loads); 7 -> 8 -> 9 (3); 8 skipped -> 9 (1); then 3 skipped -> 4 (1)
    assert dataset.total_failures == 3 and dataset.total_loads == 17 + 2 + 3 + 1 + 1
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3
    assert all(any(f"{BAD[i]}.mp4" in m for m in logged) for i in BAD)
    assert set(dataset.failed) == {str(video_paths[i]) for i in BAD}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_goes_on_and_batches_carry_the_failure_count(video_paths: list[Path], num_workers: int) -> None:
    dataset = RobustDataset(VideoFiles(video_paths), max_failure_fraction=0.25)
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, collate_fn=collate_with_failures())
    batches = list(loader)
    assert len(batches) == 5
    assert all(b["video"].shape == (4, 4, 16, 16, 3) for b in batches)
    assert all(isinstance(b[FAILURES_KEY], int) for b in batches)
    indices = torch.cat([b["index"] for b in batches]).tolist()
    assert not set(indices) & set(BAD)
    # index 3 -> 4 (1 failed file), 7 -> 8 -> 9 (2), 8 -> 9 (known to fail: skipped without a load)
    assert dataset.total_failures == 3  # the shared marks: exact, whichever worker found the file
    if num_workers == 0:
        assert [b[FAILURES_KEY] for b in batches] == [1, 2, 0, 0, 0] and dataset.total_loads == 23
    else:  # two workers may both try file 8 before either has marked it: it can be counted twice
        assert sum(b[FAILURES_KEY] for b in batches) in (3, 4) and dataset.total_loads in (23, 24)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_too_many_failures_stop_with_the_failing_files_named(num_workers: int) -> None:
    dataset = RobustDataset(Flaky(40, bad={1, 5, 11, 12, 20, 30}), max_failure_fraction=0.05)  # 2 files allowed
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, collate_fn=collate_with_failures())
    iterator = iter(loader)
    with pytest.raises(TooManyLoadFailures) as info:
        for _ in iterator:
            pass
    message = str(info.value)
    # the traceback keeps the iterator in a reference cycle; shut its workers down now, because when
    # the cycle is collected the queues may be finalised first and each worker join times out (5 s)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    assert "of 40 files failed to load" in message and "first failing files" in message
    assert "file1.mp4 (corrupt)" in message or "file5.mp4 (corrupt)" in message


def test_limit_message_names_the_first_five_files_and_the_count() -> None:
    dataset = RobustDataset(Flaky(10, bad=set(range(0, 10, 1)) - {9}), max_failure_fraction=0.5)  # 5 allowed
    with pytest.raises(TooManyLoadFailures) as info:
        dataset[0]
    message = str(info.value)
    assert message.startswith("6 of 10 files failed to load (more than 50.00% of the split's files)")
    assert [f"file{i}.mp4" in message for i in range(7)] == [True] * 5 + [False, False]
    assert "and 1 more" in message


def test_no_failures_allowed_and_nothing_loadable() -> None:
    with pytest.raises(TooManyLoadFailures):
        RobustDataset(Flaky(10, bad={4}), max_failure_fraction=0.0)[4]
    with pytest.raises(TooManyLoadFailures, match="no sample of 3 could be loaded"):
        RobustDataset(Flaky(3, bad={0, 1, 2}), max_failure_fraction=1.0)[1]
    with pytest.raises(ValueError):
        RobustDataset(Flaky(3, bad=set()), max_failure_fraction=1.5)


def test_other_exceptions_are_bugs_and_propagate() -> None:
    class Buggy(Flaky):
        def __getitem__(self, index: int) -> dict[str, Any]:
            raise KeyError("caption")

    with pytest.raises(KeyError):
        RobustDataset(Buggy(5, set()))[0]


def test_errors_pickle_and_wrapper_reads_through() -> None:
    error = pickle.loads(pickle.dumps(VideoDecodeError("a.mp4", "empty file (0 bytes)")))
    assert isinstance(error, VideoDecodeError) and error.path == "a.mp4" and str(error) == "a.mp4: empty file (0 bytes)"
    assert str(SampleLoadError("b.jpg", "bad\n  header")) == "b.jpg: bad header"  # always one line
    dataset = pickle.loads(pickle.dumps(RobustDataset(Flaky(5, bad={2}))))
    assert dataset.bad == {2} and len(dataset) == 5  # attribute read-through, survives pickling
    assert dataset[0] == {"index": 0, FAILURES_KEY: 0}


def test_count_failures_finds_nested_and_collated_counts() -> None:
    assert count_failures({FAILURES_KEY: 3, "x": torch.zeros(2)}) == 3
    assert count_failures({FAILURES_KEY: torch.tensor([0, 2, 1])}) == 3  # default_collate of the samples' ints
    assert count_failures({"retrieval": {FAILURES_KEY: 1}, "qa": {FAILURES_KEY: 2}}) == 3  # CombinedLoader
    assert count_failures([{FAILURES_KEY: 1}, (torch.zeros(1), {FAILURES_KEY: 4})]) == 5
    assert count_failures(torch.zeros(3)) == 0
    with pytest.raises(TypeError, match="dict batch"):
        collate_with_failures(lambda samples: [s["index"] for s in samples])([{"index": 0, FAILURES_KEY: 1}])


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.layer(batch["index"].float()[:, None]).pow(2).mean()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_load_failure_monitor_logs_the_running_total(tmp_path: Path) -> None:
    def loader(bad: set[int]) -> DataLoader:
        return DataLoader(
            RobustDataset(Flaky(16, bad), max_failure_fraction=0.5), batch_size=4, collate_fn=collate_with_failures()
        )

    monitor = LoadFailureMonitor()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Tiny(), loader({2, 9, 10}), loader({5}))
    # three bad files, each found once in the first epoch and skipped without a retry in the second
    assert monitor.total == 3
    assert trainer.callback_metrics["data/load_failures"].item() == 3
    assert trainer.callback_metrics["data/val_load_failures"].item() == 1
    assert monitor.state_dict() == {"total": 3}


class _Items(Flaky):
    """Several samples per file (QA pairs of one video): `sample_file` says which file an index reads."""

    def __init__(self, files: list[str], bad: set[str]) -> None:
        super().__init__(len(files), set())
        self.files, self.bad_files = files, bad

    def sample_file(self, index: int) -> str:
        return self.files[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.files[index] in self.bad_files:
            raise SampleLoadError(self.files[index], "empty file (0 bytes)")
        return {"index": index}


def test_failures_count_files_not_loads_and_a_substitute_never_comes_from_the_failed_file(caplog) -> None:
    # 160 videos of 6 questions each, one of them empty: 0.6 % of the files (the limit is 1 %)
    files = [f"video{i // 6}.mp4" for i in range(960)]
    dataset = RobustDataset(_Items(files, bad={"video7.mp4"}), max_failure_fraction=0.01)
    assert dataset.num_files == 160
    with caplog.at_level(logging.WARNING, logger="vislang.shared.data.robust"):
        for _epoch in range(2):
            samples = [dataset[i] for i in range(len(dataset))]
    bad = range(42, 48)
    assert all(files[samples[i]["index"]] != "video7.mp4" for i in bad)
    assert [samples[i]["index"] for i in bad] == [48] * 6  # the next index of another file
    assert dataset.total_failures == 1 and len(caplog.records) == 1
    # two bad files of 160 exceed 1 %: the run stops, naming both
    dataset = RobustDataset(_Items(files, bad={"video7.mp4", "video9.mp4"}), max_failure_fraction=0.01)
    with pytest.raises(TooManyLoadFailures, match=r"2 of 160 files failed .* video7.mp4 .* video9.mp4"):
        [dataset[i] for i in range(len(dataset))]


def test_failed_files_are_named_across_processes() -> None:
    files = [f"clip{i // 2}.mp4" for i in range(8)]
    dataset = RobustDataset(_Items(files, bad={"clip1.mp4"}), max_failure_fraction=0.5)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_with_failures())
    assert sum(b[FAILURES_KEY] for b in loader) >= 1
    assert dataset.failed_files() == {"clip1.mp4"}  # marked by a worker, read in the main process
    assert (
        RobustDataset(Flaky(4, bad={2}))[1] is not None and RobustDataset(Flaky(4, bad=set())).failed_files() == set()
    )


def test_an_item_that_reads_two_files_is_counted_by_the_file_that_failed() -> None:
    """NLVR2's pairs: the bad image is the left of one pair and the right of another; it counts once, and
    the second pair is never tried nor used as a stand-in once the image is known to fail."""
    from torch.utils.data import Dataset

    from vislang.shared.data.robust import RobustDataset, SampleLoadError

    pairs = [("a", "bad"), ("b", "c"), ("bad", "d"), ("e", "f")]

    class Pairs(Dataset):
        def __init__(self) -> None:
            self.opened: list[int] = []

        def __len__(self) -> int:
            return len(pairs)

        def sample_file(self, index: int) -> tuple[str, str]:
            return pairs[index]

        def __getitem__(self, index: int) -> dict:
            self.opened.append(index)
            if "bad" in pairs[index]:
                raise SampleLoadError("bad", "empty file")
            return {"index": index}

    inner = Pairs()
    robust = RobustDataset(inner, max_failure_fraction=0.5)
    assert robust.num_files == 7
    assert [robust[i]["index"] for i in range(4)] == [1, 1, 3, 3]
    assert robust.failed_files() == {"bad"} and robust.total_failures == 1
    assert 2 not in inner.opened  # the second pair with the bad image was skipped without opening it
