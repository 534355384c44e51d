"""`lightning fit` checks what a VLAB paper config needs before it builds anything, and lists it all at once.

Each case starts from a complete set-up (a synthetic MSRVTT tree in the real layout with its videos in
`videos/all`, CLIP weights, a BERT tokenizer and weights), removes one thing, and checks that exactly that
thing is listed with its fix; then everything at once, on one screen.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from vislang.shared.cli import build_cli
from vislang.shared.data.synthetic import SyntheticWorld, writers
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR
from vislang.vlab.model import build_vlab

CONFIGS = Path(__file__).resolve().parents[2] / "packages" / "vlab" / "configs"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> dict[str, Path]:
    """Everything msrvtt_caption.yaml needs, with the tiny preset."""
    base = tmp_path_factory.mktemp("setup")
    root = base / "msrvtt"
    writers.write_msrvtt(SyntheticWorld(seed=2, image_size=32, num_frames=8), root, num_videos=20)
    (root / "videos").rename(base / "all")  # the common download's folder: videos/all
    (root / "videos").mkdir()
    (base / "all").rename(root / "videos" / "all")
    clip = base / "clip.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in build_vlab("tiny", None).clip.state_dict().items()}, clip)
    from transformers import BertConfig, BertForPreTraining

    from vislang.vlab.model import PRESETS

    bert = base / "bert"
    shutil.copytree(SYNTHETIC_TOKENIZER_DIR, bert)
    vocab = sum(1 for _ in (bert / "vocab.txt").open()) if (bert / "vocab.txt").exists() else 30522
    BertForPreTraining(BertConfig(vocab_size=vocab, **asdict(PRESETS["tiny"].decoder))).save_pretrained(bert)
    return {"root": root, "clip": clip, "bert": bert}


def _args(setup: dict[str, Path], **overrides: str) -> list[str]:
    values = {
        "model.init_args.preset": "tiny",
        "model.init_args.clip_weights": str(setup["clip"]),
        "model.init_args.clip_tag": "null",
        "model.init_args.decoder_tokenizer": str(setup["bert"]),
        "model.init_args.decoder_weights": str(setup["bert"]),
        "model.init_args.gradient_checkpointing": "false",
        "data.init_args.root": str(setup["root"]),
        "data.init_args.image_size": "32",
        "data.init_args.num_workers": "0",
        "trainer.accelerator": "cpu",
        "trainer.precision": "32-true",
        "trainer.logger": "false",
        "trainer.callbacks": "[]",
    }
    values.update(overrides)
    return ["fit", "-c", str(CONFIGS / "msrvtt_caption.yaml"), *(f"--{k}={v}" for k, v in values.items())]


def _stops(args: list[str], capsys) -> list[str]:
    with pytest.raises(SystemExit) as stop:
        build_cli(args)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    header = [i for i, line in enumerate(lines) if "cannot start" in line]
    assert header, lines
    return lines[header[0] :]


def _listed(lines: list[str]) -> list[str]:
    return [line.strip().removeprefix("- ").split(":")[0] for line in lines if line.strip().startswith("- ")]


def test_a_complete_setup_passes_and_builds(complete, tmp_path) -> None:
    cli = build_cli([*_args(complete), f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=1"])
    assert cli.model.model.decoder is not None and cli.trainer.state.finished


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_config_on_a_cpu_machine(complete, capsys) -> None:
    lines = _stops(_args(complete, **{"trainer.accelerator": "gpu"}), capsys)
    assert _listed(lines) == ["trainer.accelerator"]
    assert "--trainer cpu" in lines[-1]


@pytest.mark.parametrize(
    ("key", "override"),
    [
        ("model.decoder_tokenizer", {"model.init_args.decoder_tokenizer": "/nonexistent/bert-base-uncased"}),
        ("model.clip_weights", {"model.init_args.clip_weights": "pretrained/open_clip/nothing.safetensors"}),
        ("model.decoder_weights", {"model.init_args.decoder_weights": "pretrained/no-bert"}),
        ("model.init_weights", {"model.init_args.init_weights": "runs/none.ckpt"}),
        ("data.root", {"data.init_args.root": "/nonexistent/msrvtt"}),
    ],
)
def test_each_missing_input_alone(complete, capsys, key: str, override: dict[str, str]) -> None:
    lines = _stops(_args(complete, **override), capsys)
    assert _listed(lines) == [key]
    assert lines[-1].strip().startswith("fix:")


def test_a_hub_name_offline_is_listed_without_retrying(complete, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = _stops(_args(complete, **{"model.init_args.decoder_tokenizer": "bert-base-uncased"}), capsys)
    assert _listed(lines) == ["model.decoder_tokenizer"]
    assert "and the hub is offline" in lines[1]


def test_missing_annotations_and_videos_are_named(complete, tmp_path, capsys) -> None:
    root = tmp_path / "msrvtt"
    shutil.copytree(complete["root"], root)
    (root / "MSRVTT_data.json").unlink()
    lines = _stops(_args(complete, **{"data.init_args.root": str(root)}), capsys)
    assert _listed(lines) == ["data.root"] and "MSRVTT_data.json" in lines[1]

    shutil.copy(complete["root"] / "MSRVTT_data.json", root)
    for video in sorted((root / "videos" / "all").glob("*.mp4"))[:2]:
        video.unlink()
    lines = _stops(_args(complete, **{"data.init_args.root": str(root)}), capsys)
    assert _listed(lines) == ["data.videos_dir"]
    assert re.search(r"data.videos_dir: 2 of 1\d listed videos are missing", lines[1])
    # the videos in the layout's default folder instead of videos/all
    lines = _stops(_args(complete, **{"data.init_args.videos_dir": "null"}), capsys)
    assert _listed(lines) == ["data.videos_dir"] and re.search(r"(\d+) of \1 listed videos", lines[1])


def test_a_retrieval_config_needs_no_decoder_tokenizer_but_a_caption_config_does(complete, tmp_path, capsys) -> None:
    retrieval = _args(
        complete, **{"model.init_args.decoder_tokenizer": "null", "model.init_args.decoder_weights": "null"}
    )
    retrieval[2] = str(CONFIGS / "msrvtt.yaml")
    cli = build_cli([*retrieval, f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=1"])
    assert cli.model.model.decoder is None
    lines = _stops(
        _args(complete, **{"model.init_args.decoder_tokenizer": "null", "model.init_args.decoder_weights": "null"}),
        capsys,
    )
    assert _listed(lines) == ["model.decoder_tokenizer"] and "need the decoder" in lines[1]


def test_everything_missing_at_once_fits_on_a_screen(capsys) -> None:
    # the shipped config as a new user runs it on this machine: nothing prepared, no GPU
    with pytest.raises(SystemExit):
        build_cli(["fit", "-c", str(CONFIGS / "msrvtt_caption.yaml"), "--data.init_args.root=/nonexistent/msrvtt"])
    error = capsys.readouterr().err.strip().splitlines()
    lines = error[[i for i, line in enumerate(error) if "cannot start" in line][0] :]
    expected = {"model.decoder_tokenizer", "model.clip_weights", "model.decoder_weights", "data.root"}
    if not torch.cuda.is_available():
        expected.add("trainer.accelerator")
    assert set(_listed(lines)) == expected
    assert len(lines) <= 24 and all(len(line) <= 400 for line in lines)
