"""VLAB data: the real layouts' readers, on files written in those layouts."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from vislang.shared.data.synthetic import SyntheticWorld, writers
from vislang.shared.data.video import write_video
from vislang.vlab.data import VLABDataModule, read_msrvtt, read_msvd, read_tgif_frameqa, read_webvid


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("msrvtt")
    writers.write_msrvtt(SyntheticWorld(seed=1, image_size=32, num_frames=8), root, num_videos=20)
    return root


def test_msrvtt_reader_follows_the_clip4clip_layout(msrvtt_root: Path) -> None:
    train = read_msrvtt(msrvtt_root, "retrieval", "train")
    test = read_msrvtt(msrvtt_root, "retrieval", "test")
    assert len(train) == 16 and len(test) == 2
    assert all(len(item.captions) == 5 for item in train)  # every caption of a training video
    assert all(len(item.captions) == 1 for item in test)  # 1k-A: one sentence per test video
    assert all(item.video.is_file() for item in train + test)
    with (msrvtt_root / "MSRVTT_JSFUSION_test.csv").open() as handle:
        assert [f"{row['video_id']}.mp4" for row in csv.DictReader(handle)] == [i.video.name for i in test]
    qa = read_msrvtt(msrvtt_root, "qa", "val")
    assert qa and all(item.question and item.answer for item in qa)
    assert {item.video.name for item in qa} <= {f"video{i}.mp4" for i in range(1_000_000, 1_000_002)}


def test_missing_annotation_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"MSRVTT_JSFUSION_test\.csv.*Data layout"):
        read_msrvtt(tmp_path, "retrieval", "test")


def test_msvd_reader_and_its_plain_data_pickle(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "abc_1_5.avi", SyntheticWorld(image_size=32, num_frames=4).video(0).frames)
    (tmp_path / "test_list.txt").write_text("abc_1_5\n")
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"abc_1_5": [["a", "cat", "runs"], ["cat", "running"]]}))
    items = read_msvd(tmp_path, "retrieval", "test")
    assert items[0].captions == ["a cat runs", "cat running"] and items[0].video.suffix == ".avi"

    (tmp_path / "msvd_qa").mkdir()
    (tmp_path / "msvd_qa" / "youtube_mapping.txt").write_text("abc_1_5 vid1\n")
    (tmp_path / "msvd_qa" / "test_qa.json").write_text(
        json.dumps([{"question": "what runs?", "answer": "cat", "video_id": 1, "id": 0}])
    )
    assert read_msvd(tmp_path, "qa", "test")[0].answer == "cat"

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"abc_1_5": Boom()}))
    with pytest.raises(pickle.UnpicklingError, match="only plain data"):
        read_msvd(tmp_path, "retrieval", "test")
    assert not (tmp_path / "pwned").exists()


def test_tgif_and_webvid_readers(tmp_path: Path) -> None:
    (tmp_path / "Test_frameqa_question.csv").write_text(
        "gif_name\tquestion\tanswer\ttype\tvid_id\tkey\tdescription\n"
        "tumblr_x\twhat is the cat doing ?\tjumping\t0\tFRAMEQA1\t1\ta cat jumps\n"
    )
    item = read_tgif_frameqa(tmp_path, "qa", "test")[0]
    assert item.video == tmp_path / "gifs" / "tumblr_x.gif" and item.answer == "jumping"
    (tmp_path / "results_2M_val.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n7,http://x,PT00H00M10S,001_050,a dog\n"
    )
    item = read_webvid(tmp_path, "retrieval", "val")[0]
    assert item.video == tmp_path / "videos" / "001_050" / "7.mp4" and item.captions == ["a dog"]


def test_datamodule_batches_and_skips_a_corrupt_video(msrvtt_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    os.system(f"cp -r {msrvtt_root} {root}")
    (root / "videos" / "video3.mp4").write_bytes(b"")  # a zero-byte training video
    data = VLABDataModule(
        "msrvtt",
        str(root),
        tasks=["retrieval", "qa"],
        num_frames=4,
        eval_num_frames=4,
        image_size=32,
        batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        max_failure_fraction=0.2,
    )
    data.setup("fit")
    loader = data.train_dataloader().iterables["retrieval"]
    batches = list(loader)
    assert all(b["video"].shape == (4, 4, 3, 32, 32) for b in batches)
    assert sum(b["load_failures"] for b in batches) >= 1  # the empty file was hit, counted and replaced
    assert torch.isfinite(torch.stack([b["video"] for b in batches])).all()
    val = data.val_dataloader()
    assert [data.eval_tasks[i] for i in range(len(val))] == ["retrieval", "qa"]
    first = next(iter(val[0]))
    assert first["captions"] and len(first["captions"][0]) == 1
