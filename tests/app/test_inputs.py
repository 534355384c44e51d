"""Bad input is answered with one line (InputError), never a crash: images, questions, videos, folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislang.app.inputs import (
    MAX_SIDE,
    InputError,
    check_question,
    check_video,
    list_videos,
    load_upload,
)


def test_rgb_image_passes_unchanged(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    checked = load_upload(tmp_path / "a.png")
    assert np.array_equal(checked.array, array) and checked.notes == []


def test_grayscale_becomes_rgb_with_a_note(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 30), 77, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    checked = load_upload(tmp_path / "g.png")
    assert checked.array.shape == (20, 30, 3) and (checked.array == 77).all()
    assert "converted to RGB" in checked.notes[0]


def test_rgba_is_put_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:, :10] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    checked = load_upload(tmp_path / "t.png")
    assert tuple(checked.array[5, 2]) == (255, 0, 0) and tuple(checked.array[5, 15]) == (255, 255, 255)
    assert "transparent" in checked.notes[0]


def test_one_pixel_image_is_refused(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(InputError, match=r"dot\.png: 1x1 px is too small"):
        load_upload(tmp_path / "dot.png")


def test_6000_by_4000_photo_is_shrunk(tmp_path: Path) -> None:
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(tmp_path / "big.jpg", quality=50)
    checked = load_upload(tmp_path / "big.jpg")
    assert checked.array.shape == (round(4000 * MAX_SIDE / 6000), MAX_SIDE, 3)
    assert "6000x4000 px shrunk" in checked.notes[0]


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 MP, a few kB on disk
    with pytest.raises(InputError, match=r"bomb\.png: 9000x9000 px is over the 40 MP limit"):
        load_upload(tmp_path / "bomb.png")


@pytest.mark.parametrize("content", [b"hello, I am text\n", b"", b"\x89PNG\r\n\x1a\n truncated"])
def test_a_file_that_is_not_an_image_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "notes.png").write_bytes(content)
    with pytest.raises(InputError, match=r"notes\.png: not an image Pillow can read"):
        load_upload(tmp_path / "notes.png")


def test_no_upload_is_refused() -> None:
    with pytest.raises(InputError, match="no image: upload"):
        load_upload(None)


@pytest.mark.parametrize("text", ["", "   ", None, "\n\t"])
def test_empty_question_is_refused(text: str | None) -> None:
    with pytest.raises(InputError, match="empty question"):
        check_question(text)


def test_question_whitespace_is_collapsed_and_length_limited() -> None:
    assert check_question("  which   shapes\nare red? ") == "which shapes are red?"
    with pytest.raises(InputError, match="characters long"):
        check_question("why " * 200)


def test_video_that_cannot_be_decoded_is_refused(tmp_path: Path, videos: Path) -> None:
    with pytest.raises(InputError, match=r"broken\.mp4: the video cannot be decoded"):
        check_video(videos / "broken.mp4")
    (tmp_path / "clip.txt").write_text("x")
    with pytest.raises(InputError, match=r"clip\.txt: not a video file"):
        check_video(tmp_path / "clip.txt")
    good = next(p for p in sorted(videos.iterdir()) if p.name != "broken.mp4")
    assert check_video(good) == good


def test_folder_listing(tmp_path: Path, videos: Path) -> None:
    found, notes = list_videos(str(videos))
    assert len(found) == 5 and found == sorted(found) and videos / "broken.mp4" in found and notes == []
    with pytest.raises(InputError, match="not a folder"):
        list_videos(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="no video files"):
        list_videos(str(tmp_path))
