"""What the page accepts: every check answers bad input with one line the page shows (`InputError`).

The models never see a file the checks have not opened: an image is decoded by Pillow under a pixel
limit (a decompression bomb is refused before it is decoded), converted to 8-bit RGB by the shared
`vislang.shared.data.images.as_rgb` (grayscale, palette, RGBA on white) and shrunk when its long
side exceeds `MAX_SIDE`; a video must decode at least one frame; a question must have words. Each check
says what it did to the input in `notes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vislang.shared.data.images import as_rgb
from vislang.shared.data.video import VideoDecodeError, VideoReader

__all__ = [
    "MAX_PIXELS",
    "MAX_QUESTION_CHARS",
    "MAX_SIDE",
    "MAX_UPLOAD_MB",
    "MAX_VIDEOS",
    "MIN_SIDE",
    "VIDEO_SUFFIXES",
    "CheckedImage",
    "InputError",
    "check_question",
    "check_video",
    "list_videos",
    "load_upload",
]

MAX_UPLOAD_MB = 50
"""Upload limit of the server (Gradio refuses larger files before they reach a model)."""
MIN_SIDE = 16
"""Smaller images carry no shape a model can see (a 1x1 image is one colour)."""
MAX_PIXELS = 40_000_000
"""Larger images are refused before decoding (a 6,000 x 4,000 photo, 24 MP, is accepted and shrunk)."""
MAX_SIDE = 1024
"""Long side the page works at: every model here sees 32-448 px, the overlay needs no more."""
MAX_QUESTION_CHARS = 500
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".gif")
MAX_VIDEOS = 200
"""Videos ranked per folder (the first ones by name), so one query stays within seconds on a CPU."""


class InputError(ValueError):
    """Bad input, with a one-line message for the page: what is wrong and what to do instead."""


@dataclass
class CheckedImage:
    """An image the models can take: (H, W, 3) uint8 RGB, and what was done to it on the way."""

    array: np.ndarray
    name: str
    notes: list[str] = field(default_factory=list)


def load_upload(path: str | os.PathLike[str] | None) -> CheckedImage:
    """Decode an uploaded image file into RGB, or raise `InputError` saying why it cannot be used.

    Not `vislang.shared.data.images.load_image` (a dataset's files, decoded as the official pipelines do):
    an upload is checked for size first and normalised by `as_rgb` (transparency on white), with notes."""
    if path is None or str(path) == "":
        raise InputError("no image: upload a picture (PNG, JPEG, WebP, BMP, ...) first")
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise InputError(f"{name}: file not found; upload it again")
    notes: list[str] = []
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InputError(
                    f"{name}: {width}x{height} px is over the {MAX_PIXELS // 1_000_000} MP limit; "
                    f"downscale it (e.g. to {MAX_SIDE} px on the long side) and upload again"
                )
            if min(width, height) < MIN_SIDE:
                raise InputError(
                    f"{name}: {width}x{height} px is too small to show anything; upload an image "
                    f"of at least {MIN_SIDE}x{MIN_SIDE} px"
                )
            image.seek(0)  # the first frame of an animated GIF / multi-page TIFF
            rgb = as_rgb(image, notes)  # the shared normaliser: other modes to RGB, transparency on white
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(
            f"{name}: not an image Pillow can read ({type(error).__name__}); upload a PNG, JPEG, WebP or BMP file"
        ) from None
    if max(rgb.size) > MAX_SIDE:
        scale = MAX_SIDE / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        notes.append(f"{rgb.width}x{rgb.height} px shrunk to {size[0]}x{size[1]} px")
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    return CheckedImage(np.asarray(rgb, dtype=np.uint8).copy(), name, notes)


def check_question(text: str | None, what: str = "question") -> str:
    """A question with words in it, at most `MAX_QUESTION_CHARS` characters, whitespace collapsed."""
    words = " ".join((text or "").split())
    if not words:
        raise InputError(f"empty {what}: type one, e.g. 'which shapes are red?'")
    if len(words) > MAX_QUESTION_CHARS:
        raise InputError(f"{what} is {len(words)} characters long; keep it under {MAX_QUESTION_CHARS}")
    return words


def check_video(path: str | os.PathLike[str] | None) -> Path:
    """A video file that decodes (at least its first frame), or `InputError` naming it."""
    if path is None or str(path) == "":
        raise InputError("no video: upload one or pick one from the ranking first")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path.name}: file not found")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"{path.name}: not a video file ({', '.join(VIDEO_SUFFIXES)})")
    try:
        reader = VideoReader(path)
        if len(reader) < 1:
            raise VideoDecodeError(path, "no frames")
        reader.get_frames([0])
    except (VideoDecodeError, OSError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path.name}: the video cannot be decoded ({reason[:160]})") from None
    return path


def list_videos(folder: str | os.PathLike[str] | None) -> tuple[list[Path], list[str]]:
    """Video files directly in `folder` (sorted by name, at most `MAX_VIDEOS`), and notes."""
    if folder is None or not str(folder).strip():
        raise InputError("no folder: type the path of a folder of videos on this computer")
    root = Path(str(folder).strip()).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; type the path of a folder that holds video files")
    videos = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise InputError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
    notes = []
    if len(videos) > MAX_VIDEOS:
        notes.append(f"{len(videos)} videos in the folder: ranking the first {MAX_VIDEOS} by name")
        videos = videos[:MAX_VIDEOS]
    return videos, notes
