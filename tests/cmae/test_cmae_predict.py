"""`lightning predict` with a CMAE classifier writes each validation file's five most probable classes, and a
re-run replaces the file instead of appending to it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vislang.shared.cli import build_cli
from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.synthetic.classification_writers import write_imagenet_folder

CONFIG = Path(__file__).resolve().parents[2] / "packages/cmae/configs/imagenet_finetune_vit_base.yaml"


def test_predict_writes_top5_per_file_and_a_rerun_replaces_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])
    root = write_imagenet_folder(SyntheticWorld(seed=1, image_size=32), tmp_path / "in", 16, 8)
    classes = sorted(p.name for p in (root / "val").iterdir())
    args = [
        "predict",
        "-c",
        str(CONFIG),
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
        "--trainer.precision=32-true",
        "--trainer.sync_batchnorm=false",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        f"--trainer.default_root_dir={tmp_path}",
        "--model.init_args.preset=tiny",
        f"--model.init_args.num_classes={len(classes)}",
        "--model.init_args.init_weights=null",
        f"--model.init_args.results_dir={tmp_path / 'results'}",
        f"--data.init_args.root={root}",
        "--data.init_args.image_size=32",
        "--data.init_args.num_workers=0",
        "--data.init_args.eval_batch_size=3",
    ]
    build_cli(args)
    path = tmp_path / "results" / "cmae_predictions.jsonl"
    first = [json.loads(line) for line in path.read_text().splitlines()]
    files = sorted(str(p) for p in (root / "val").rglob("*") if p.is_file())
    assert sorted(row["file"] for row in first) == files  # every validation file once, in no other order
    for row in first:
        assert len(row["top5"]) == min(5, len(classes)) and set(row["top5"]) <= set(classes)
        assert row["label"] == Path(row["file"]).parent.name
        assert (
            row["top5_scores"] == sorted(row["top5_scores"], reverse=True) and 0 < sum(row["top5_scores"]) <= 1 + 1e-6
        )
    build_cli(args)
    assert [json.loads(line) for line in path.read_text().splitlines()] == first
