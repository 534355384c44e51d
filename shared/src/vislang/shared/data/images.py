"""One image input normaliser for every inference call: a path, a PIL image or an array -> 8-bit RGB.

What is accepted (anything else is refused with one line that says what to pass instead):

* a path (``str`` or ``os.PathLike``) of a file Pillow reads; the first frame of an animated file;
* a PIL image of any mode: grayscale, palette, 16-bit and float modes are converted to RGB, modes with
  transparency (RGBA, LA, PA, palette with a transparent colour) are put on white;
* an array (numpy, or anything ``numpy.asarray`` takes, e.g. a CPU tensor) shaped H x W, H x W x 1,
  H x W x 3 or H x W x 4 (channels last), of dtype uint8 (0-255) or float in [0, 1] (scaled by 255 and
  rounded); four channels are RGBA, put on white like a PIL RGBA image.

Training and evaluation datasets read their files with `load_image` instead: the official loaders'
plain ``convert("RGB")`` (alpha dropped, not put on white), so a model sees the pixels its released
weights were trained on; an unreadable file raises `SampleLoadError`, skipped and counted.

A file that cannot be read raises `UnreadableImageError`, which is both a ``ValueError`` (an inference
caller sees one line) and a `vislang.shared.data.robust.SampleLoadError` (a dataset that loads through
`as_rgb` gets the file skipped and counted by `RobustDataset`). Any other refusal is an `ImageInputError`
(a ``ValueError``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from vislang.shared.data.robust import SampleLoadError

__all__ = ["ImageInputError", "UnreadableImageError", "as_rgb", "as_rgb_array", "load_image"]

ACCEPTED = "a path, a PIL image or an H x W, H x W x 1/3/4 array (uint8, or float in [0, 1])"
_GRAY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ImageInputError(ValueError):
    """An image argument that cannot be used; the message is one line naming the problem and the fix."""


class UnreadableImageError(SampleLoadError, ValueError):
    """An image file that is missing, empty, truncated or not an image (``SampleLoadError(path, reason)``)."""


def load_image(source: str | os.PathLike[str] | BinaryIO, name: str | None = None) -> Image.Image:
    """A dataset's image file (a path, or an open file such as a shard member) as an RGB PIL image.

    Decoded with Pillow and converted with ``convert("RGB")`` as the official data pipelines do; a
    missing, empty, truncated or undecodable file raises `SampleLoadError` naming it (``name`` names a
    file object), which `RobustDataset` skips and counts.
    """
    if name is not None:
        label = name
    elif isinstance(source, str | os.PathLike):
        label = os.fspath(source)
    else:
        label = getattr(source, "name", "<file object>")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SampleLoadError(str(label), f"cannot read image ({reason})") from None


def as_rgb(image: Any, notes: list[str] | None = None) -> Image.Image:
    """``image`` (path, PIL image or array; see the module docstring) as a new 8-bit RGB PIL image.

    Args:
        image: what to convert.
        notes: if given, a list that gets one short sentence per conversion made (e.g. "RGBA image:
            transparent parts put on white"), for pages that show the user what happened to the input.

    Raises:
        UnreadableImageError: a path whose file cannot be decoded (also a ``SampleLoadError``).
        ImageInputError: any other input outside what is accepted.
    """
    notes = [] if notes is None else notes
    if isinstance(image, (str, os.PathLike)):
        return _from_file(Path(image), notes)
    if isinstance(image, Image.Image):
        return _from_pil(image, notes)
    if isinstance(image, (bytes, bytearray)) or image is None or not _array_like(image):
        raise ImageInputError(f"image: got {type(image).__name__}; pass {ACCEPTED}")
    return _from_array(np.asarray(image), notes)


def as_rgb_array(image: Any, notes: list[str] | None = None) -> np.ndarray:
    """`as_rgb` as an (H, W, 3) uint8 array."""
    return np.asarray(as_rgb(image, notes), dtype=np.uint8).copy()


def _array_like(value: Any) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "__array__") or hasattr(value, "__array_interface__")


def _from_file(path: Path, notes: list[str]) -> Image.Image:
    if not path.is_file():
        raise UnreadableImageError(path, "no such file" if not path.exists() else "not a file")
    try:
        with Image.open(path) as opened:
            opened.seek(0)  # the first frame of an animated GIF / multi-page TIFF
            opened.load()  # decode now: a truncated file fails here, inside the try
            return _from_pil(opened, notes)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableImageError(path, f"not an image Pillow can read ({reason})") from None


def _from_pil(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        notes.append(f"{mode} image: transparent parts put on white")
        return rgb
    if mode == "RGB":
        return image.copy()
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # wider than 8 bits: scale the range, not clip
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max(initial=0))
        # the value of white: 16-bit data (or an int image past 255) 65535, a float image in [0, 1] 1.0, else 255
        top = 65535.0 if mode.startswith("I;16") or peak > 255 else 1.0 if mode == "F" and peak <= 1 else 255.0
        gray = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        notes.append(f"{mode} image converted to RGB (grayscale repeated in 3 channels)")
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2))
    notes.append(
        f"{mode} image converted to RGB" + (" (grayscale repeated in 3 channels)" if mode in _GRAY_MODES else "")
    )
    return image.convert("RGB")


def _from_array(array: np.ndarray, notes: list[str]) -> Image.Image:
    shape = tuple(array.shape)
    if array.ndim == 3 and shape[-1] not in (1, 3, 4) and shape[0] in (1, 3, 4):
        raise ImageInputError(
            f"image array {shape}: channels must come last (H x W x C); pass array.transpose(1, 2, 0)"
        )
    if not (array.ndim == 2 or (array.ndim == 3 and shape[-1] in (1, 3, 4))):
        raise ImageInputError(f"image array of shape {shape}: expected H x W, H x W x 1, H x W x 3 or H x W x 4")
    if shape[0] == 0 or shape[1] == 0:
        raise ImageInputError(f"image array of shape {shape} is empty; pass an image of at least 1 x 1 pixels")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ImageInputError(f"image array {shape} holds NaN or infinite values; pass finite values in [0, 1]")
        if low < 0.0 or high > 1.0:
            raise ImageInputError(
                f"float image array {shape} has values in [{low:g}, {high:g}], expected [0, 1]; divide 0-255 "
                "values by 255 or pass a uint8 array"
            )
        pixels = np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageInputError(
            f"image array of dtype {array.dtype}: expected uint8 (0-255) or float in [0, 1]; "
            "convert it, e.g. array.astype(np.uint8)"
        )
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        notes.append("grayscale array repeated in 3 channels")
        return Image.fromarray(np.repeat(pixels[..., None], 3, axis=2).copy())
    if pixels.shape[-1] == 4:
        return _from_pil(Image.fromarray(np.ascontiguousarray(pixels)), notes)
    return Image.fromarray(np.ascontiguousarray(pixels))
