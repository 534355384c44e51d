"""CMAE / CMAE-V pre-training from WebDataset shards written from folder datasets (the shard configs)."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest
import torch

from vislang.cmae.data import CMAEPretrainDataModule
from vislang.shared.cli import build_cli
from vislang.shared.data.shards import IMAGE_EXTENSIONS, ShardLoader, write_shards
from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.synthetic.classification_writers import write_imagenet_folder, write_kinetics400

CONFIGS = Path(__file__).resolve().parents[2] / "packages" / "cmae" / "configs"
CPU = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
    "--trainer.sync_batchnorm=false",
    "--trainer.logger=false",
    "--trainer.callbacks=[]",
    "--trainer.enable_checkpointing=false",
]
TINY_DATA = [
    "--data.init_args.image_size=32",
    "--data.init_args.num_workers=0",
    "--data.init_args.batch_size=4",
    "--data.init_args.eval_batch_size=4",
    "--data.init_args.shuffle_buffer=8",
]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


def _write(dataset: str, root: Path, out: Path, per_shard: int) -> CMAEPretrainDataModule:
    datamodule = CMAEPretrainDataModule(dataset=dataset, root=str(root), image_size=32, num_frames=4)
    samples, total = datamodule.shard_samples("train")
    write_shards(samples, out, per_shard, total=total)
    return datamodule


def test_imagenet_pretrain_shards_config_trains_two_epochs(tmp_path: Path) -> None:
    root = write_imagenet_folder(SyntheticWorld(seed=1, image_size=32), tmp_path / "in", 16, 8)
    datamodule = _write("imagenet_folder", root, tmp_path / "shards", per_shard=4)
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
        first = tar.getnames()[:4]
        label = int(tar.extractfile(first[0]).read())
        meta = tar.extractfile(first[1]).read().decode()
    assert {Path(n).stem for n in first} == {"000000000"}  # one sample: class, metadata, image, class name
    assert [Path(n).suffix for n in first[:2]] + [Path(n).suffix for n in first[3:]] == [".cls", ".json", ".txt"]
    assert Path(first[2]).suffix.lstrip(".") in IMAGE_EXTENSIONS
    assert f'"class": "{datamodule.classes[label]}"' in meta
    cli = build_cli(
        [
            "fit",
            "-c",
            str(CONFIGS / "imagenet_pretrain_shards.yaml"),
            *CPU,
            *TINY_DATA,
            f"--data.init_args.root={root}",
            f"--data.init_args.train_shards={tmp_path / 'shards'}",
            "--model.init_args.preset=tiny",
            "--trainer.max_epochs=2",
            "--trainer.limit_val_batches=1",
            "--trainer.check_val_every_n_epoch=1",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    loader = cli.trainer.train_dataloader
    assert isinstance(loader, ShardLoader)
    assert cli.trainer.global_step == 2 * len(loader) > 0
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


def test_k400_pretrain_shards_config_reads_videos_from_shards(tmp_path: Path) -> None:
    root = write_kinetics400(SyntheticWorld(seed=2, image_size=32, num_frames=8), tmp_path / "k400", num_videos=12)
    _write("kinetics400", root, tmp_path / "shards", per_shard=3)
    cli = build_cli(
        [
            "fit",
            "-c",
            str(CONFIGS / "k400_pretrain_shards.yaml"),
            *CPU,
            *TINY_DATA,
            "--data.init_args.num_frames=4",
            "--data.init_args.sampling_rate=1",
            f"--data.init_args.root={root}",
            f"--data.init_args.train_shards={tmp_path / 'shards'}",
            "--model.init_args.preset=video_tiny",
            "--model.init_args.mask_ratio=0.75",
            "--trainer.fast_dev_run=2",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert isinstance(cli.trainer.train_dataloader, ShardLoader)
    assert cli.trainer.global_step == 2
