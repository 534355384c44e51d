"""CMAE's configs through the real `lightning` CLI, on fixture trees in the real layouts."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vislang.cmae.convert import load_encoder
from vislang.cmae.model import build_encoder, get_config
from vislang.shared.cli import build_cli
from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.synthetic.classification_writers import write_imagenet_folder, write_kinetics400

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "packages" / "cmae" / "configs").glob("*.yaml"))
CONFIG = {c.stem: c for c in CONFIGS}
CPU = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
    "--trainer.sync_batchnorm=false",
]
TINY_DATA = [
    "--data.init_args.image_size=32",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=4",
    "--data.init_args.eval_batch_size=4",
]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    return write_imagenet_folder(SyntheticWorld(seed=1, image_size=32), tmp_path_factory.mktemp("in"), 16, 8)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("vislang.cmae.module.CMAE")
    assert printed["data"]["class_path"].startswith("vislang.cmae.data.CMAE")


@pytest.mark.parametrize("name", ["imagenet_pretrain_vit_base", "k400_pretrain", "ssv2_finetune"])
def test_missing_dataset_fails_at_once_naming_path_and_layout(name: str, tmp_path: Path, capsys) -> None:
    tiny = ["--model.init_args.preset=" + ("video_tiny" if "k400" in name or "ssv2" in name else "tiny")]
    if "finetune" in name:
        tiny.append("--model.init_args.init_weights=null")
    args = [
        "fit",
        "-c",
        str(CONFIG[name]),
        *CPU,
        *tiny,
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
    ]
    # no data folder at all: the preflight names it before any model is built
    with pytest.raises(SystemExit) as stop:
        build_cli([*args, f"--data.init_args.root={tmp_path / 'nowhere'}"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert f"data.root: {tmp_path / 'nowhere'} does not exist" in error and "packages/cmae/README.md" in error
    # a folder without the layout's files: the data module names the file and the layout, in one line
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        build_cli([*args, f"--data.init_args.root={tmp_path / 'empty'}"])
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and re.search(
        r"FileNotFoundError: \S+empty/\S+ not found: the \w+ layout is root/", lines[0]
    )


def test_pretrain_then_finetune_from_its_checkpoint(imagenet: Path, tmp_path: Path) -> None:
    """ImageNet recipe shrunk to the tiny preset: pre-train (reconstruction grid + probe), then fine-tune."""
    run = tmp_path / "pt"
    build_cli(
        [
            "fit",
            "-c",
            str(CONFIG["imagenet_pretrain_vit_base"]),
            *CPU,
            *TINY_DATA,
            "--model.init_args.preset=tiny",
            f"--data.init_args.root={imagenet}",
            "--data.init_args.max_shift=4",
            "--trainer.max_epochs=1",
            "--model.init_args.warmup_epochs=0",
            "--model.init_args.log_images=2",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={run}",
            "--trainer.check_val_every_n_epoch=1",
            f"--trainer.default_root_dir={run}",
            "--trainer.callbacks=[vislang.cmae.evaluation.LinearProbeCallback]",
            "--trainer.callbacks.epochs=5",
            "--trainer.enable_checkpointing=true",
        ]
    )
    grids = list(run.glob("*/version_0/reconstructions/*.png"))
    assert grids, "validation must log an original | masked | reconstruction grid"
    probe = yaml.safe_load(next(run.glob("*/version_0/linear_probe.json")).read_text())
    assert set(probe["class"]) == {"pretrained", "random_init", "majority_class"}
    checkpoint = next(run.glob("**/*.ckpt"))
    # the Lightning checkpoint converts to the encoder (online branch)
    encoder = build_encoder(get_config("tiny"))
    assert load_encoder(encoder, checkpoint).ok
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    torch.testing.assert_close(encoder.blocks[0].attn.qkv.weight, state["model.encoder.blocks.0.attn.qkv.weight"])

    build_cli(
        [
            "fit",
            "-c",
            str(CONFIG["imagenet_finetune_vit_base"]),
            *CPU,
            *TINY_DATA,
            "--model.init_args.preset=tiny",
            "--model.init_args.num_classes=5",
            f"--model.init_args.init_weights={checkpoint}",
            f"--data.init_args.root={imagenet}",
            "--trainer.fast_dev_run=2",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            f"--trainer.default_root_dir={tmp_path / 'ft'}",
        ]
    )


def test_video_pretrain_and_multiview_finetune(tmp_path: Path) -> None:
    root = write_kinetics400(SyntheticWorld(seed=2, image_size=32, num_frames=8), tmp_path / "k400", num_videos=10)
    video = [
        "--data.init_args.num_frames=4",
        "--data.init_args.sampling_rate=1",
        f"--data.init_args.root={root}",
        "--trainer.fast_dev_run=1",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    build_cli(
        [
            "fit",
            "-c",
            str(CONFIG["k400_pretrain"]),
            *CPU,
            *TINY_DATA,
            *video,
            "--model.init_args.preset=video_tiny",
            "--model.init_args.mask_ratio=0.75",
        ]
    )
    cli = build_cli(
        [
            "validate",
            "-c",
            str(CONFIG["k400_finetune"]),
            *CPU,
            *TINY_DATA,
            *video,
            "--model.init_args.preset=video_tiny",
            "--model.init_args.num_classes=4",
            "--model.init_args.init_weights=null",
            "--data.init_args.num_clips=2",
            "--data.init_args.num_crops=3",
        ]
    )
    assert "val/top1" in cli.trainer.callback_metrics
