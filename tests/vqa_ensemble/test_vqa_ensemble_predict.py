"""`lightning predict` of a VQA member writes the official results file for the test split, and a re-run
replaces it (written under a temporary name, then renamed) instead of adding to it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vislang.shared.cli import build_cli
from vislang.shared.metrics.vqa import read_vqa_results
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR

CONFIGS = Path(__file__).resolve().parents[2] / "packages" / "vqa_ensemble" / "configs"


def test_member_predict_twice_gives_the_same_rows(vqa_world, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])
    f = vqa_world["features"]
    out = tmp_path / "results"
    args = [
        "predict",
        "-c",
        str(CONFIGS / "demo.yaml"),
        f"--data.init_args.root={vqa_world['root']}",
        f"--data.init_args.features={{region: [{', '.join(f['region'])}], grid: [{', '.join(f['grid'])}]}}",
        f"--data.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
        "--data.init_args.min_answer_count=2",
        "--data.init_args.heldout_fraction=0.0",
        "--data.init_args.test_subtype=test2015",
        "--data.init_args.eval_batch_size=4",
        "--model.init_args.feature_set=region",
        f"--model.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
        f"--model.init_args.results_dir={out}",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--seed_everything=0",
    ]
    cli = build_cli(args)
    question_ids = [item.question_id for item in cli.datamodule.splits["test"].items]
    first = (out / "predict_results.json").read_text()
    assert len(read_vqa_results(out / "predict_results.json", question_ids=question_ids)) == len(question_ids) > 0

    build_cli(args)
    again = (out / "predict_results.json").read_text()
    assert again == first and len(json.loads(again)) == len(question_ids)  # replaced, not appended
    assert not list(out.glob(".*partial"))
