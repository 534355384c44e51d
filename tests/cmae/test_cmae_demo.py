"""The demo's evaluation (few-label fine-tuning, kNN and linear probes), its driver, and (slow) a shrunk demo run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vislang.cmae.evaluation import (
    few_label_indices,
    finetune_accuracy,
    knn_accuracy,
    train_linear_probe,
)
from vislang.cmae.model import build_encoder, get_config
from vislang.shared.cli import build_cli

CONFIG = Path(__file__).resolve().parents[2] / "packages" / "cmae" / "configs" / "demo.yaml"
DRIVER = Path(__file__).resolve().parents[2] / "packages" / "cmae" / "scripts" / "demo.py"
_spec = importlib.util.spec_from_file_location("cmae_demo_driver", DRIVER)
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)  # the driver is a script beside the package (`make demo-cmae`), not a module in it


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


def test_few_label_subset_is_class_balanced_seeded_and_disjoint_per_class() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    subset = few_label_indices(labels, 0.1, seed=3)
    assert torch.bincount(labels[subset]).tolist() == [5, 3, 2]
    assert len(subset.unique()) == len(subset)
    assert torch.equal(subset, few_label_indices(labels, 0.1, seed=3))
    assert not torch.equal(subset, few_label_indices(labels, 0.1, seed=4))
    with pytest.raises(ValueError, match="label fraction"):
        few_label_indices(labels, 0.0)


def test_knn_and_linear_probe_read_class_structure_and_only_that() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    centres = torch.randn(4, 16, generator=generator) * 3
    features = centres[labels] + torch.randn(200, 16, generator=generator)
    train, val = slice(0, 120), slice(120, 200)
    assert knn_accuracy(features[train], labels[train], features[val], labels[val], k=10) > 95
    assert train_linear_probe(features[train], labels[train], features[val], labels[val], 4, epochs=200) > 95
    noise = torch.randn(200, 16, generator=generator)  # features that carry no label: about chance (25 %)
    assert knn_accuracy(noise[train], labels[train], noise[val], labels[val], k=10) < 50


def _bright_or_dark(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose class is their brightness (a task any encoder learns in a few steps)."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    images = torch.randn(count, 3, 32, 32, generator=generator) * 0.5 + (2.0 * labels - 1.0).view(-1, 1, 1, 1)
    return images, labels


def test_finetuning_learns_and_starts_from_the_given_encoder() -> None:
    config = get_config("tiny")
    generator = torch.Generator().manual_seed(0)
    (train_x, train_y), (val_x, val_y) = _bright_or_dark(64, generator), _bright_or_dark(64, generator)
    accuracy = finetune_accuracy(config, None, train_x, train_y, val_x, val_y, steps=30, batch_size=16, seed=0)
    assert accuracy > 90
    # the same seed gives the same number; the encoder state is loaded strictly (a wrong one is refused)
    again = finetune_accuracy(config, None, train_x, train_y, val_x, val_y, steps=30, batch_size=16, seed=0)
    assert again == accuracy
    state = build_encoder(config).state_dict()
    finetune_accuracy(config, state, train_x, train_y, val_x, val_y, steps=1, batch_size=4)
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:8]
    with pytest.raises(RuntimeError, match="size mismatch"):
        finetune_accuracy(config, state, train_x, train_y, val_x, val_y, steps=1, batch_size=4)


def test_demo_config_ends_with_the_evaluation_and_the_driver_overrides_reach_it(tmp_path: Path, capsys) -> None:
    """The driver sets `random_init` through `--trainer.callbacks.random_init`: it must land on FewLabelEvaluation."""
    args = demo._command(1, "mae", 0.0, tmp_path, tmp_path / "images", [])[3:]  # drop `python -m vislang.shared`
    with pytest.raises(SystemExit) as exit_info:
        build_cli([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    evaluation = printed["trainer"]["callbacks"][-1]
    assert evaluation["class_path"] == "vislang.cmae.evaluation.FewLabelEvaluation"
    assert evaluation["init_args"]["random_init"] is False
    assert printed["model"]["init_args"]["ct_weight"] == 0.0 and printed["seed_everything"] == 1
    assert printed["data"]["init_args"]["synthetic_style"] == "object_centric"


def test_driver_summary_reads_every_run_and_reports_the_bar(tmp_path: Path) -> None:
    def write(name: str, finetune: dict[str, float]) -> None:
        path = tmp_path / name / "version_0" / "evaluation.json"
        path.parent.mkdir(parents=True)
        scores = {
            "finetune": finetune,
            "knn": dict.fromkeys(finetune, 30.0),
            "linear_probe": dict.fromkeys(finetune, 30.0),
        }
        path.write_text(
            json.dumps({**scores, "majority_class": 21.0, "seed": 0, "labels": {"train": 400, "of": 4000, "val": 800}})
        )

    write("seed0_cmae", {"pretrained": 60.0, "random_init": 40.0})
    write("seed0_mae", {"pretrained": 55.0})
    write("seed1_cmae", {"pretrained": 45.0, "random_init": 40.0})
    write("seed1_mae", {"pretrained": 50.0})
    table, passed = demo.summary([0, 1], tmp_path)
    assert not passed
    assert "seed 0: fine-tuning CMAE - random init = +20.0 points (meets" in table
    assert "CMAE - MAE = +5.0 points" in table
    assert "seed 1: fine-tuning CMAE - random init = +5.0 points (MISSES" in table
    assert "CMAE - MAE = -5.0 points" in table


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a few minutes on two free cores; much longer on a busy machine
def test_one_demo_run_finetuning_from_the_pretrained_encoder_beats_random_init_by_the_bar(tmp_path: Path) -> None:
    """The demo shrunk to one of its four runs (`lightning fit --config demo.yaml`: seed 0, CMAE): fine-tuning on
    10 % of the labels from the pre-trained encoder beats the same fine-tuning from random init by the demo's
    bar. Shrinking further does not keep the claim: 3 pre-training epochs and 200 fine-tuning steps gave
    36.0 vs 36.1 % (measured), so the test runs the demo's own budget."""
    build_cli(
        [
            "fit",
            "-c",
            str(CONFIG),
            f"--data.init_args.root={tmp_path / 'images'}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    results = json.loads(next(tmp_path.glob("cmae/version_*/evaluation.json")).read_text())
    finetune = results["finetune"]
    assert finetune["pretrained"] >= finetune["random_init"] + demo.FINETUNE_BAR, finetune
