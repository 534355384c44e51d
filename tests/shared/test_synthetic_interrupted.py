"""A synthetic-world write that is interrupted never blocks the next run (issue: an interrupted `make demo`)."""

from __future__ import annotations

import pytest

from vislang.shared.data.synthetic import SyntheticWorld, writers


def _world() -> SyntheticWorld:
    return SyntheticWorld(seed=5, image_size=32, num_frames=4)


def test_an_interrupted_write_leaves_nothing_under_the_final_name_and_the_next_run_completes(
    tmp_path, monkeypatch
) -> None:
    out = tmp_path / "msrvtt"
    real_write_video, calls = writers.write_video, []

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing the videos
        return real_write_video(*args, **kwargs)

    monkeypatch.setattr(writers, "write_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writers.write_msrvtt(_world(), out, num_videos=6)
    assert not out.exists()  # a reader finds nothing half-written; the leftover is the staging folder
    assert (tmp_path / ".msrvtt.partial").is_dir()

    monkeypatch.setattr(writers, "write_video", real_write_video)
    writers.write_msrvtt(_world(), out, num_videos=6)
    assert len(list((out / "videos").glob("*.mp4"))) == 6 and (out / writers.MANIFEST).is_file()
    assert not (tmp_path / ".msrvtt.partial").exists()
    # once complete, the same call is a no-op and other settings are refused with what to do
    writers.write_msrvtt(_world(), out, num_videos=6)
    with pytest.raises(FileExistsError, match=rf"delete it \(`rm -r {out}`\) or write this data elsewhere"):
        writers.write_msrvtt(_world(), out, num_videos=7)


def test_a_foreign_folder_is_refused_with_what_to_do(tmp_path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "mine.txt").write_text("not synthetic")
    with pytest.raises(FileExistsError, match=r"holds no synthetic-world manifest .* delete it \(`rm -r"):
        writers.write_msrvtt(_world(), out, num_videos=3)
    assert (out / "mine.txt").read_text() == "not synthetic"
