"""The documented demo, end to end (about six minutes on two CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vislang.vqa_ensemble import demo


@pytest.mark.slow
def test_demo_trains_members_and_an_ensemble_above_the_baselines(tmp_path: Path) -> None:
    result = demo.main(["--out", str(tmp_path / "demo")])
    val, test = result["val"], result["test"]
    # fitted on val: never below the best member there (the weight grid contains each member alone)
    assert val["ensemble"] >= max(val["member0"], val["member1"])
    members = [v for k, v in test.items() if k.startswith("member")]
    ensemble = next(v for k, v in test.items() if k.startswith("ensemble"))
    baseline = test["majority answer per question type"]
    assert min(members) > baseline and ensemble > baseline
    for name in ("region", "grid"):
        assert (tmp_path / "demo" / "features" / name / "val2014" / "store.json").is_file()
    assert (tmp_path / "demo" / "ensemble" / "results" / "test_ensemble_results.json").is_file()
