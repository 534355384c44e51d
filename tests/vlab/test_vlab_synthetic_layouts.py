"""The synthetic world written as MSVD, TGIF-FrameQA and WebVid, read back by VLAB's readers."""

from __future__ import annotations

import csv
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vislang.shared.data.synthetic import SyntheticWorld, writers
from vislang.shared.data.video import VideoReader
from vislang.vlab.data import VideoTextItem, VLABDataModule, read_msvd, read_tgif_frameqa, read_webvid

NUM_VIDEOS = 12
# what `_video_splits` gives for 12 videos: 10 / 1 / 1, each split its own index range of the world
SPLITS = {"train": list(range(10)), "val": [1_000_000], "test": [2_000_000]}
# the real FrameQA codes: 0 object, 1 number, 2 color, 3 location; yes/no questions have none
FRAMEQA_TYPE = {"shape": "0", "count_all": "1", "count_direction": "1", "color": "2", "direction": "3"}
# mean absolute pixel error of a decoded clip: lossy codecs at 32 px, GIF's 8-bit palette
MAX_ERROR = {".avi": 12.0, ".mp4": 12.0, ".gif": 35.0}


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=0, image_size=32)  # what VLABDataModule(seed=0, image_size=32) builds


@pytest.fixture(scope="module")
def roots(world: SyntheticWorld, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, writer in (
        ("msvd", writers.write_msvd),
        ("tgif", writers.write_tgif_frameqa),
        ("webvid", writers.write_webvid),
    ):
        root = tmp_path_factory.mktemp(name)
        assert writer(world, root, num_videos=NUM_VIDEOS) == root
        out[name] = root
    return out


def _words(caption: str) -> str:
    """MSVD's tokenised form of a caption, joined back: lower case, punctuation gone, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", caption.lower()).split())


def _assert_decodes_as(path: Path, world: SyntheticWorld, index: int) -> None:
    assert path.is_file(), path
    reader = VideoReader(path)
    assert len(reader) == world.num_frames, path
    frames = reader.get_frames(range(len(reader)))
    assert frames.shape == (world.num_frames, 32, 32, 3)
    error = np.abs(frames.astype(np.int16) - world.video(index).frames).mean()
    assert error < MAX_ERROR[path.suffix], f"{path}: mean error {error:.1f} against video {index}"


def _qa_pairs(items: list[VideoTextItem]) -> list[tuple[str | None, str | None]]:
    return [(item.question, item.answer) for item in items]


# ---- MSVD --------------------------------------------------------------------------------------


def test_msvd_captions_and_clips_match_the_world(world: SyntheticWorld, roots: dict[str, Path]) -> None:
    root = roots["msvd"]
    raw = pickle.loads((root / "raw-captions.pkl").read_bytes())
    assert isinstance(raw, dict) and len(raw) == NUM_VIDEOS
    assert all(type(t) is str for tokens in raw.values() for caption in tokens for t in caption)
    for split, indices in SPLITS.items():
        for task in ("retrieval", "caption"):
            items = read_msvd(root, task, split)
            assert len(items) == len(indices)
            for item, index in zip(items, indices, strict=True):
                assert item.captions == [_words(c) for c in world.video_captions(index)]
                assert len(item.captions) == writers.CAPTIONS_PER_VIDEO and all(item.captions)
                # a YouTube id, then whole-second start and end: 16 frames at 8 fps are 2 s
                match = re.fullmatch(r"[A-Za-z0-9_-]{11}_(\d+)_(\d+)", item.video.stem)
                assert match and int(match[2]) - int(match[1]) == 2, item.video.name
                assert item.video.suffix == ".avi"
        for item, index in zip(read_msvd(root, "retrieval", split), indices, strict=True):
            _assert_decodes_as(item.video, world, index)


def test_msvd_qa_uses_one_based_vids_through_the_mapping(world: SyntheticWorld, roots: dict[str, Path]) -> None:
    root = roots["msvd"]
    mapping = [line.split() for line in (root / "msvd_qa" / "youtube_mapping.txt").read_text().splitlines()]
    clips = [clip for split in SPLITS for clip in (root / f"{split}_list.txt").read_text().split()]
    assert mapping == [[clip, f"vid{n}"] for n, clip in enumerate(clips, start=1)]
    for split, indices in SPLITS.items():
        items = read_msvd(root, "qa", split)
        assert _qa_pairs(items) == [(q.question, q.answer) for i in indices for q in world.video_qa(i)]
        video_of = {index: item.video for index, item in zip(indices, read_msvd(root, "retrieval", split), strict=True)}
        assert [item.video for item in items] == [video_of[i] for i in indices for _ in world.video_qa(i)]


# ---- TGIF-FrameQA ------------------------------------------------------------------------------


def test_tgif_frameqa_questions_types_and_gifs(world: SyntheticWorld, roots: dict[str, Path]) -> None:
    root = roots["tgif"]
    files = {"Train": SPLITS["train"], "Test": SPLITS["val"] + SPLITS["test"]}
    for name, indices in files.items():
        expected = [q for i in indices for q in world.video_qa(i) if q.kind in FRAMEQA_TYPE]
        assert {q.kind for q in expected} >= {"count_all", "count_direction"}
        with (root / f"{name}_frameqa_question.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        assert list(rows[0]) == ["gif_name", "question", "answer", "type", "vid_id", "key", "description"]
        assert [row["type"] for row in rows] == [FRAMEQA_TYPE[q.kind] for q in expected]
        assert not {row["answer"] for row in rows} & {"yes", "no"}
        for split in ("train",) if name == "Train" else ("val", "test"):  # TGIF has no val: it reads Test
            items = read_tgif_frameqa(root, "qa", split)
            assert _qa_pairs(items) == [(q.question, q.answer) for q in expected]
        gif_of = {}
        for row, q in zip(rows, expected, strict=True):
            gif_of.setdefault(q.image_id, row["gif_name"])
            assert row["gif_name"] == gif_of[q.image_id]  # one GIF per video, shared by its questions
            assert row["description"] == world.video_captions(q.image_id)[0]
        assert sorted(gif_of) == sorted(indices)
        for index, gif_name in gif_of.items():
            assert re.fullmatch(r"tumblr_[A-Za-z0-9]{17}o1_32", gif_name)
            _assert_decodes_as(root / "gifs" / f"{gif_name}.gif", world, index)
            assert VideoReader(root / "gifs" / f"{gif_name}.gif").fps == 10  # 8 fps is no GIF delay; 10 is
    with pytest.raises(ValueError, match="only the qa task"):
        read_tgif_frameqa(root, "retrieval", "train")


# ---- WebVid ------------------------------------------------------------------------------------


def test_webvid_rows_captions_and_videos(world: SyntheticWorld, roots: dict[str, Path]) -> None:
    root = roots["webvid"]
    files = {"train": SPLITS["train"], "val": SPLITS["val"] + SPLITS["test"]}
    for split in SPLITS:
        indices = files["train" if split == "train" else "val"]  # WebVid has no test: it reads val
        for task in ("retrieval", "caption"):
            items = read_webvid(root, task, split)
            assert [item.captions for item in items] == [[world.video_captions(i)[i % 5]] for i in indices]
            assert [item.video for item in items] == [root / "videos" / "000001_000050" / f"{i}.mp4" for i in indices]
    for name, indices in files.items():
        with (root / f"results_2M_{name}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(row["videoid"]) for row in rows] == indices
        assert {row["duration"] for row in rows} == {"PT00H00M02S"}
        for index in indices:
            _assert_decodes_as(root / "videos" / "000001_000050" / f"{index}.mp4", world, index)


# ---- the data module ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "tasks"), [("msvd", ["retrieval", "qa"]), ("tgif", ["qa"]), ("webvid", ["retrieval", "caption"])]
)
def test_datamodule_writes_and_trains_on_each_layout(
    dataset: str, tasks: list[str], world: SyntheticWorld, roots: dict[str, Path], tmp_path: Path
) -> None:
    data = VLABDataModule(
        dataset,
        str(tmp_path / dataset),
        tasks=tasks,
        num_frames=4,
        eval_num_frames=4,
        image_size=32,
        batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        synthetic_videos=NUM_VIDEOS,
    )
    data.prepare_data()
    # the same files as the writer called directly (the manifest also makes a second call a no-op)
    written = sorted(p.relative_to(tmp_path / dataset) for p in (tmp_path / dataset).rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(roots[dataset]) for p in roots[dataset].rglob("*") if p.is_file())
    data.prepare_data()
    data.setup("fit")
    batch, _, _ = next(iter(data.train_dataloader()))
    assert sorted(batch) == sorted(tasks)
    texts = {t for i in SPLITS["train"] for t in world.video_captions(i) + [q.question for q in world.video_qa(i)]}
    texts |= {_words(t) for t in texts}
    for task in tasks:
        sub = batch[task]
        assert sub["video"].shape == (4, 4, 3, 32, 32) and torch.isfinite(sub["video"]).all()
        assert set(sub["question"] if task == "qa" else sub["caption"]) <= texts
    assert len(data.val_dataloader()) == len(tasks)
