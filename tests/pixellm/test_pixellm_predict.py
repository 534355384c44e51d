"""`lightning predict` replaces its results on every run; `segment()` takes paths, PIL images and arrays."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislang.pixellm.module import PixelLMModule
from vislang.shared.cli import build_cli
from vislang.shared.data.images import ImageInputError, UnreadableImageError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "packages" / "pixellm" / "configs" / "demo.yaml"
TOKENIZER = REPO / "shared" / "src" / "vislang" / "shared" / "assets" / "synthetic_wordpiece"

skdata = pytest.importorskip("skimage.data")


def test_predict_twice_gives_the_same_rows_not_twice_as_many(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])
    out = tmp_path / "predictions"
    writer = json.dumps(
        [{"class_path": "vislang.pixellm.callbacks.OverlayWriter", "init_args": {"output_dir": str(out)}}]
    )
    args = [
        "predict",
        "-c",
        str(DEMO),
        f"--data.init_args.muse_root={tmp_path / 'muse'}",
        "--data.init_args.synthetic_images=20",
        "--data.init_args.num_workers=0",
        "--data.init_args.muse_test=[muse_test_less.json]",
        "--model.init_args.max_new_tokens=6",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        f"--trainer.callbacks={writer}",
        "--trainer.enable_progress_bar=false",
        "--seed_everything=0",
    ]
    build_cli(args)
    first = (out / "predictions.jsonl").read_text().splitlines()
    questions = json.loads((tmp_path / "muse" / "muse_test_less.json").read_text())
    assert len(first) == sum(len(r["questions"]) for r in questions) > 0
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == sorted(json.loads(line)["overlay"].split("/")[1] for line in first)
    (out / "overlays" / "stale-from-an-older-run.png").write_bytes(b"")

    build_cli(args)
    second = (out / "predictions.jsonl").read_text().splitlines()
    assert second == first  # replaced, not appended (same seed, same untrained model)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == overlays
    assert not (out / ".predict.partial").exists()


@pytest.fixture(scope="module")
def model() -> PixelLMModule:
    return PixelLMModule(
        preset="tiny", tokenizer=str(TOKENIZER), prompt_template="<image> {question}", max_new_tokens=4
    ).eval()


def _pixels_seen(model: PixelLMModule, image: object, monkeypatch) -> np.ndarray:
    """The normalised pixel tensor `segment` hands to generation."""
    seen = {}
    generate = model._generate

    def spy(batch):
        seen["pixels"] = batch["pixel_values"][0].numpy().copy()
        seen["size"] = batch["original_size"][0]
        return generate(batch)

    monkeypatch.setattr(model, "_generate", spy)
    result = model.segment(image, "which things are red?")
    assert result.masks.shape[1:] == tuple(seen["size"])
    return seen["pixels"]


def test_segment_accepts_every_image_form_with_the_same_pixels(model, tmp_path: Path, monkeypatch) -> None:
    photo = skdata.coffee()  # (400, 600, 3) uint8
    Image.fromarray(photo).save(tmp_path / "coffee.png")
    reference = _pixels_seen(model, photo, monkeypatch)
    for form in (
        photo / 255.0,
        (photo / 255.0).astype(np.float32),
        Image.fromarray(photo),
        tmp_path / "coffee.png",
        str(tmp_path / "coffee.png"),
    ):
        # (a float image in [0, 1] used to reach the model as near-black 0..1 "pixel values")
        assert np.array_equal(_pixels_seen(model, form, monkeypatch), reference), type(form)


def test_segment_accepts_grayscale_and_rgba(model, monkeypatch) -> None:
    camera = skdata.camera()  # (512, 512) uint8
    gray = _pixels_seen(model, camera, monkeypatch)
    assert np.array_equal(_pixels_seen(model, camera[..., None], monkeypatch), gray)
    assert np.array_equal(_pixels_seen(model, np.repeat(camera[..., None], 3, 2), monkeypatch), gray)
    rgba = np.concatenate([np.repeat(camera[..., None], 3, 2), np.full((512, 512, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(_pixels_seen(model, rgba, monkeypatch), gray)  # opaque RGBA = its RGB


@pytest.mark.parametrize(
    ("bad", "error", "expected"),
    [
        (np.full((32, 32, 3), 7.5), ImageInputError, r"expected \[0, 1\]"),
        (np.zeros((3, 32, 32), np.uint8), ImageInputError, "channels must come last"),
        ("no/such/image.jpg", UnreadableImageError, "no/such/image.jpg: no such file"),
    ],
)
def test_segment_refuses_bad_images_in_one_line(model, bad, error, expected) -> None:
    with pytest.raises(error, match=expected) as raised:
        model.segment(bad, "which things are red?")
    assert "\n" not in str(raised.value)
