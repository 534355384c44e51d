"""The shared image input normaliser: paths, PIL images and arrays become 8-bit RGB, or one line says why not.

Real photographs come from scikit-image's bundled data (astronaut: RGB, camera: grayscale, coffee with an alpha channel: RGBA).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislang.shared.data.images import ImageInputError, UnreadableImageError, as_rgb, as_rgb_array
from vislang.shared.data.robust import SampleLoadError

skdata = pytest.importorskip("skimage.data")


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_rgb_photo_in_every_form_gives_the_same_pixels(tmp_path: Path) -> None:
    photo = skdata.astronaut()
    Image.fromarray(photo).save(tmp_path / "astronaut.png")
    forms = [
        photo,
        photo.astype(np.float32) / 255.0,
        Image.fromarray(photo),
        tmp_path / "astronaut.png",
        str(tmp_path / "astronaut.png"),
    ]
    for form in forms:
        out = as_rgb(form)
        assert out.mode == "RGB" and out.size == (512, 512)
        assert np.array_equal(np.asarray(out), photo), type(form)


def test_float_image_in_unit_range_is_scaled_not_truncated() -> None:
    # the bug this replaces: float [0, 1] pixels cast straight to uint8 became an all-black image
    photo = skdata.chelsea()
    out = as_rgb_array(photo / 255.0)
    assert np.abs(out.astype(int) - photo.astype(int)).max() == 0
    assert out.mean() > 50


def test_grayscale_array_and_single_channel_repeat_into_three_channels() -> None:
    camera = skdata.camera()
    for form in (camera, camera[..., None], Image.fromarray(camera)):
        notes: list[str] = []
        out = as_rgb_array(form, notes)
        assert out.shape == (*camera.shape, 3)
        assert all(np.array_equal(out[..., c], camera) for c in range(3))
        assert notes and "3 channels" in notes[0]


def test_rgba_array_and_rgba_pil_are_put_on_white() -> None:
    photo = skdata.coffee()
    logo = np.concatenate([photo, np.full((*photo.shape[:2], 1), 255, np.uint8)], axis=2)
    logo[:, : photo.shape[1] // 2, 3] = 0  # left half fully transparent
    transparent = logo[..., 3] == 0
    for form in (logo, Image.fromarray(logo), logo / 255.0):
        notes: list[str] = []
        out = as_rgb_array(form, notes)
        assert (out[transparent] == 255).all()
        opaque = logo[..., 3] == 255
        assert np.array_equal(out[opaque], logo[..., :3][opaque])
        assert "transparent parts put on white" in notes[0]


def test_16_bit_grayscale_is_scaled_to_8_bits() -> None:
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0 .. 65535
    out = as_rgb_array(Image.fromarray(ramp))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and out[8, 0, 0] == 128
    unit = Image.fromarray((np.arange(256, dtype=np.float32) / 255).reshape(16, 16))  # mode F, in [0, 1]
    assert np.array_equal(as_rgb_array(unit)[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (
            np.linspace(0, 2, 8 * 8 * 3).reshape(8, 8, 3),
            r"values in \[0, 2\], expected \[0, 1\]; divide 0-255 values by 255",
        ),
        (np.full((8, 8), -0.5), r"expected \[0, 1\]"),
        (np.full((8, 8, 3), np.nan), "NaN or infinite"),
        (np.zeros((3, 8, 8), np.uint8), r"channels must come last \(H x W x C\); pass array\.transpose\(1, 2, 0\)"),
        (np.zeros((8, 8, 2), np.uint8), r"shape \(8, 8, 2\): expected H x W"),
        (np.zeros((2, 8, 8, 3), np.uint8), "expected H x W"),
        (np.zeros((0, 8, 3), np.uint8), "is empty"),
        (np.zeros((8, 8), np.int64), "dtype int64: expected uint8"),
        (b"\x89PNG", "got bytes; pass a path, a PIL image"),
        (None, "got NoneType"),
        (42, "got int"),
    ],
)
def test_bad_arrays_and_types_are_refused_in_one_line(bad: object, expected: str) -> None:
    with pytest.raises(ImageInputError, match=expected) as error:
        as_rgb(bad)
    _one_line(error)


def test_unreadable_files_are_value_errors_and_sample_load_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.fromarray(skdata.coffee()).save(tmp_path / "coffee.jpg")
    data = (tmp_path / "coffee.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    for name in ("empty.jpg", "truncated.jpg", "missing.jpg"):
        with pytest.raises(UnreadableImageError) as error:
            as_rgb(tmp_path / name)
        assert isinstance(error.value, ValueError) and isinstance(error.value, SampleLoadError)
        assert error.value.path == str(tmp_path / name)
        assert _one_line(error).startswith(str(tmp_path / name))
        # DataLoader workers pickle exceptions back to the main process
        again = pickle.loads(pickle.dumps(error.value))
        assert type(again) is UnreadableImageError and str(again) == str(error.value)


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    out = as_rgb_array(tmp_path / "a.gif")
    assert tuple(out[10, 10]) == (255, 0, 0)
