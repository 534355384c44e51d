"""The shared preflight: generic checks every package's configs get, and the message the CLI prints."""

from __future__ import annotations

import torch

from vislang.shared.preflight import MAX_LISTED, Missing, format_missing, run_preflight
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR


def _config(model: dict, data: dict, accelerator: str = "cpu") -> dict:
    return {
        "model": {"class_path": "vislang.soho.module.SOHOModule", "init_args": model},
        "data": {"class_path": "vislang.singlestream.data.SingleStreamDataModule", "init_args": data},
        "trainer": {"accelerator": accelerator, "devices": 1},
    }


def test_generic_checks_name_weights_tokenizers_and_data_folders(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    ok = run_preflight(
        "fit",
        _config({"init_weights": str(weights), "tokenizer": str(SYNTHETIC_TOKENIZER_DIR)}, {"root": str(tmp_path)}),
    )
    assert ok == []
    found = run_preflight(
        "fit",
        _config(
            {"init_weights": str(tmp_path / "none.ckpt"), "tokenizer": "bert-base-uncased-not-cached"},
            {"root": str(tmp_path / "data"), "synthetic_images": 0, "synthetic_image_size": 64},
        ),
    )
    assert [m.key for m in found] == ["model.init_weights", "model.tokenizer", "data.root"]
    # the layouts live in the paper's README, also when the data module is shared
    assert "packages/soho/README.md" in found[-1].fix


def test_a_data_folder_the_synthetic_world_will_write_is_not_missing(tmp_path) -> None:
    found = run_preflight("fit", _config({}, {"root": str(tmp_path / "later"), "synthetic_images": 100}))
    assert found == []


def test_accelerator_without_the_device() -> None:
    found = run_preflight("fit", _config({}, {}, accelerator="gpu"))
    if torch.cuda.is_available():
        assert found == []
    else:
        assert [m.key for m in found] == ["trainer.accelerator"]


def test_the_message_lists_each_problem_with_its_fix_and_stays_on_a_screen() -> None:
    many = [Missing(f"model.k{i}", f"problem {i}", f"fix {i}") for i in range(MAX_LISTED + 5)]
    lines = format_missing("lightning fit", many).splitlines()
    assert lines[0].startswith(f"lightning fit: cannot start, {MAX_LISTED + 5} input(s) missing")
    assert lines[1:3] == ["  - model.k0: problem 0", "      fix: fix 0"]
    assert lines[-1] == "  ... and 5 more" and len(lines) == 2 + 2 * MAX_LISTED
