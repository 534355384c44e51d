"""PixelLM's configs through the real `lightning` CLI on synthetic MUSE data; evaluation dump, predict, segment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislang.pixellm.callbacks import write_overlay_png
from vislang.shared.cli import build_cli

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {c.stem: c for c in (Path(__file__).resolve().parents[2] / "packages" / "pixellm" / "configs").glob("*.yaml")}


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


def _demo_args(root: Path, tmp_path: Path) -> list[str]:
    return [
        "-c",
        str(CONFIGS["demo"]),
        f"--data.init_args.muse_root={root}",
        "--data.init_args.synthetic_images=40",
        "--data.init_args.val_limit=6",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
        "--model.init_args.max_new_tokens=12",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
    ]


def test_demo_config_fits_tests_and_predicts(tmp_path: Path, capsys) -> None:
    root = tmp_path / "muse"
    args = _demo_args(root, tmp_path)
    cli = build_cli(
        [
            "fit",
            *args,
            "--trainer.limit_train_batches=3",
            "--trainer.max_epochs=1",
            "--trainer.limit_val_batches=1",
            "--trainer.check_val_every_n_epoch=1",
        ]
    )
    printed = capsys.readouterr().out
    assert "untrained" in printed and "trained" in printed and "gIoU" in printed
    assert set(cli.model.untrained_scores) == {"muse_val"}
    assert set(cli.model.trainable_summary()) >= {"decoder", "neck", "fusion", "llm.lora", "vision"}  # demo: CLIP too
    assert (root / "muse_train.json").is_file() and (root / "muse_test_less.json").is_file()

    results = tmp_path / "results"
    build_cli(
        ["test", *args, f"--model.init_args.results_dir={results}", "--data.init_args.muse_test=[muse_test_less.json]"]
    )
    scores = json.loads((results / "pixellm_test_scores.json").read_text())["muse_test_less"]
    assert 0.0 <= scores["gIoU"] <= 100.0 and 0.0 <= scores["cIoU"] <= 100.0
    assert "MUSE scoring protocol: strict" in capsys.readouterr().out  # the default, printed by `test`
    official = tmp_path / "official"
    build_cli(
        [
            "test",
            *args,
            f"--model.init_args.results_dir={official}",
            "--model.init_args.eval_protocol=official",
            "--data.init_args.muse_test=[muse_test_less.json]",
        ]
    )
    assert "MUSE scoring protocol: official" in capsys.readouterr().out
    pairs = json.loads((results / "pixellm_test_pairs.json").read_text())
    questions = json.loads((root / "muse_test_less.json").read_text())
    assert len(pairs) == sum(len(r["questions"]) for r in questions)
    for item in pairs:
        assert len(item["pairs"]) == max(item["num_pred"], item["num_gt"])
        assert {"question", "answer", "scores", "dropped_codebook_tokens"} <= set(item)

    out = tmp_path / "predictions"
    writer = json.dumps(
        [{"class_path": "vislang.pixellm.callbacks.OverlayWriter", "init_args": {"output_dir": str(out)}}]
    )
    build_cli(["predict", *args, f"--trainer.callbacks={writer}", "--data.init_args.muse_test=[muse_test_less.json]"])
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(pairs)
    first = json.loads(lines[0])
    assert (out / first["overlay"]).is_file() and "answer" in first

    # the Python call on an image file
    result = cli.model.segment(root / "images" / questions[0]["file_name"], "which shapes are red?")
    assert isinstance(result.answer, str)
    assert result.masks.shape[1:] == (64, 64) and len(result.scores) == result.masks.shape[0]


def test_overlay_png(tmp_path: Path) -> None:
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    masks = np.zeros((2, 10, 12), dtype=bool)
    masks[0, :5], masks[1, 5:] = True, True
    path = write_overlay_png(image, masks, tmp_path / "o.png")
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (10, 12, 3) and not np.array_equal(pixels[0, 0], pixels[9, 0])
    with pytest.raises(ValueError, match="mask 0"):
        write_overlay_png(image, masks[:, :5], tmp_path / "bad.png")


@pytest.mark.parametrize("name", ["muse", "refcoco"])
def test_paper_config_without_data_names_the_missing_path(name: str, tmp_path: Path, capsys) -> None:
    args = [
        "fit",
        "-c",
        str(CONFIGS[name]),
        "--model.init_args.preset=tiny",
        "--model.init_args.tokenizer=shared/src/vislang/shared/assets/synthetic_wordpiece",
        "--model.init_args.llava_weights=null",
        "--model.init_args.clip_weights=null",
        f"--data.init_args.muse_root={tmp_path / 'muse'}",
        f"--data.init_args.refer_root={tmp_path / 'refer'}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.precision=32-true",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
    ]
    with pytest.raises(SystemExit):  # the CLI's preflight lists every missing input before building anything
        build_cli(args)
    err = capsys.readouterr().err
    assert "data.muse_root" in err and "does not exist" in err, err


@pytest.mark.slow
def test_demo_clears_the_readme_bar(tmp_path: Path) -> None:
    """The full demo (about 5 min on 2 cores): trained gIoU and cIoU on held-out questions >= 35 (README)."""
    cli = build_cli(
        [
            "fit",
            "-c",
            str(CONFIGS["demo"]),
            f"--data.init_args.muse_root={tmp_path / 'muse'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
        ]
    )
    trained, untrained = cli.model.last_scores["muse_val"], cli.model.untrained_scores["muse_val"]
    assert trained["gIoU"] >= 35.0 and trained["cIoU"] >= 35.0
    assert trained["gIoU"] > untrained["gIoU"] + 30.0


@pytest.mark.slow
def test_samples_per_epoch_is_per_process_under_two_process_ddp(tmp_path: Path) -> None:
    """Released meaning: each GPU draws `samples_per_epoch` items per epoch. 2 CPU processes (gloo), 16 items
    each, micro-batch 2, accumulation 2 -> 4 optimiser steps per epoch (a global 16 split over 2 ranks: 2)."""
    root, ckpt = tmp_path / "muse", tmp_path / "ckpt"
    callbacks = json.dumps(
        [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(ckpt), "save_last": True, "save_top_k": 0},
            }
        ]
    )
    args = [
        *_demo_args(root, tmp_path),
        "--data.init_args.batch_size=2",
        "--data.init_args.samples_per_epoch=16",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp_find_unused_parameters_true",
        "--trainer.max_epochs=1",
        "--trainer.accumulate_grad_batches=2",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_checkpointing=true",
        f"--trainer.callbacks={callbacks}",
        "--model.init_args.evaluate_before_training=false",
        f"--model.init_args.tokenizer={REPO / 'shared/src/vislang/shared/assets/synthetic_wordpiece'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "vislang.shared", "fit", *args], check=True, cwd=tmp_path, env=env, timeout=900
    )
    state = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
