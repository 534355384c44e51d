"""The SOHO and Pixel-BERT demos end to end (each about six minutes on two CPU cores)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vislang.shared.cli import build_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("package", ["pixelbert", "soho"])
def test_demo_retrieval_far_above_chance_and_vqa_above_the_majority_answer(package, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    cli = build_cli(
        [
            "fit",
            f"--config={REPO / 'packages' / package / 'configs' / 'demo.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
            f"--model.init_args.tokenizer={REPO / 'shared/src/vislang/shared/assets/synthetic_wordpiece'}",
            f"--data.init_args.root={tmp_path / 'data'}",
        ],
        run=True,
    )
    retrieval, vqa = cli.model.scores["retrieval"], cli.model.scores["vqa"]
    # measured (READMEs), chance 1.0: image->text / text->image R@1 26.0 / 18.4 (Pixel-BERT), 11.0 / 10.8 (SOHO)
    assert retrieval["tr/R@1"] >= 8 * retrieval["tr/chance_R@1"]
    assert retrieval["ir/R@1"] >= 5 * retrieval["ir/chance_R@1"]
    assert vqa["overall"] >= 1.8 * cli.model.baselines["vqa"]["majority"]
