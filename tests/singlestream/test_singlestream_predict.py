"""SOHO and Pixel-BERT `lightning predict`: VQA answers and retrieval rankings as JSON lines, replaced (not
appended) on a re-run; `answer()` takes paths, PIL images and arrays (scikit-image photographs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislang.shared.cli import build_cli
from vislang.shared.data.images import ImageInputError

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "shared" / "src" / "vislang" / "shared" / "assets" / "synthetic_wordpiece"

skdata = pytest.importorskip("skimage.data")


def _predict(paper: str, tmp_path: Path) -> object:
    return build_cli(
        [
            "predict",
            f"--config={REPO / 'packages' / paper / 'configs' / 'demo.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_progress_bar=false",
            "--seed_everything=0",
            f"--model.init_args.tokenizer={TOKENIZER}",
            f"--model.init_args.results_dir={tmp_path / 'out'}",
            f"--data.init_args.root={tmp_path / 'data'}",
            "--data.init_args.synthetic_images=40",
            "--data.init_args.num_workers=0",
            "--data.init_args.eval_batch_size=4",
        ]
    )


@pytest.mark.parametrize("paper", ["soho", "pixelbert"])
def test_predict_writes_answers_and_rankings_and_a_rerun_replaces_them(paper: str, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    cli = _predict(paper, tmp_path)
    held_out = cli.datamodule.held_out
    files = {task: tmp_path / "out" / f"{paper}_predictions_{task}.jsonl" for task in ("vqa", "retrieval")}
    first = {task: path.read_text().splitlines() for task, path in files.items()}
    vqa = [json.loads(line) for line in first["vqa"]]
    assert len(vqa) == len(held_out.vqa) > 0
    assert [row["question_id"] for row in vqa] == [e.question_id for e in held_out.vqa.examples]
    assert all(row["answer"] == row["top5"][0][0] and row["answer"] in cli.model.answers for row in vqa)
    assert all(Path(row["image"]).is_file() for row in vqa)
    ranking = [json.loads(line) for line in first["retrieval"]]
    assert len(ranking) == len(held_out.retrieval) > 0
    texts = set(held_out.retrieval.texts)
    for row in ranking:
        scores = [score for _, score in row["captions"]]
        assert len(row["captions"]) == 10 and scores == sorted(scores, reverse=True)
        assert {text for text, _ in row["captions"]} <= texts

    _predict(paper, tmp_path)
    again = {task: path.read_text().splitlines() for task, path in files.items()}
    assert again == first  # the same rows, not twice as many
    assert not list((tmp_path / "out").glob(".*partial"))

    # answer() from Python on a real photograph, in every accepted form: the model sees the same pixels
    photo = skdata.astronaut()
    Image.fromarray(photo).save(tmp_path / "astronaut.png")
    model, seen = cli.model, []
    cls = model._cls

    def spy(images, pixel_mask, texts):
        seen.append(images.detach().clone())
        return cls(images, pixel_mask, texts)

    monkeypatch.setattr(model, "_cls", spy)
    forms = [photo, photo / 255.0, Image.fromarray(photo), tmp_path / "astronaut.png", str(tmp_path / "astronaut.png")]
    answers = {model.answer(form, "what colour is the shape?", image_size=64, max_size=64) for form in forms}
    assert len(answers) == 1 and answers <= set(model.answers)
    assert all(np.array_equal(x.numpy(), seen[0].numpy()) for x in seen[1:])
    gray = skdata.camera()
    model.answer(gray, "how many shapes are there?", image_size=64, max_size=64)  # H x W
    rgba = np.concatenate([np.repeat(gray[..., None], 3, 2), np.full((*gray.shape, 1), 255, np.uint8)], axis=2)
    model.answer(rgba, "how many shapes are there?", image_size=64, max_size=64)
    assert np.array_equal(seen[-1].numpy(), seen[-2].numpy())  # opaque RGBA = its grayscale RGB
    with pytest.raises(ImageInputError, match=r"expected \[0, 1\]") as error:
        model.answer(photo * 2.0, "what colour is the shape?")
    assert "\n" not in str(error.value)
