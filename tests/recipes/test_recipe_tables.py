"""The recipe tables: the arithmetic, the paper side, and the README blocks printed by the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vislang.shared.recipe import (
    PAPERS,
    differing_fields,
    optimizer_steps_per_epoch,
    paper_configs,
    readme_block,
    recipe,
)

REPO = Path(__file__).resolve().parents[2]
# configs that train nothing: the ensemble's weight fitting (validate) and its test-set prediction
NOT_TRAINED = {"vqa_ensemble/vqa2_ensemble", "vqa_ensemble/vqa2_ensemble_fit"}
PACKAGES = sorted({c.parts[-3] for c in paper_configs()})


def test_every_paper_config_has_a_recipe() -> None:
    # shard configs (*_shards.yaml) read the same data as their folder twin: same recipe, no table of their own
    configs = [c for c in REPO.glob("packages/*/configs/*.yaml") if not c.stem.startswith("demo")]
    configs = [c for c in configs if not c.stem.endswith("_shards")]
    keys = {f"{c.parts[-3]}/{c.stem}" for c in configs}
    assert sorted(keys - NOT_TRAINED - set(PAPERS)) == []
    assert sorted(set(PAPERS) - keys) == []  # no recipe for a config that is gone


@pytest.mark.parametrize(
    ("items", "batch", "world", "accumulate", "drop_last", "steps"),
    [
        (10, 2, 2, 1, False, 3),  # 5 items a process -> batches 2, 2, 1
        (10, 2, 2, 1, True, 2),  # the short last batch dropped
        (11, 2, 2, 1, True, 3),  # the sampler pads to 6 a process
        (40, 2, 1, 10, False, 2),  # 20 batches, a step every 10
        (42, 2, 1, 10, False, 3),  # 21 batches: the epoch's last batch steps too
    ],
)
def test_optimizer_steps_per_epoch(items, batch, world, accumulate, drop_last, steps) -> None:
    assert optimizer_steps_per_epoch(items, batch, world, accumulate, drop_last) == steps


def test_pixellm_epoch_is_per_gpu_so_more_gpus_do_not_shorten_it() -> None:
    """The released samples_per_epoch is per GPU: 500 steps an epoch at 8 GPUs as at 1 (the past defect: 8x fewer)."""
    config = REPO / "packages/pixellm/configs/muse.yaml"
    at_8, at_1 = recipe(config), recipe(config, gpus=1)
    assert (at_8.gpus, at_8.global_batch, at_8.steps_per_epoch["train"], at_8.steps) == (8, 160, 500, 5000)
    assert at_1.steps_per_epoch["train"] == 500 and at_1.global_batch == 20


@pytest.mark.parametrize("config", paper_configs(), ids=lambda c: f"{c.parts[-3]}/{c.stem}")
def test_every_difference_from_the_paper_is_explained(config: Path) -> None:
    paper = PAPERS[f"{config.parts[-3]}/{config.stem}"]
    unexplained = [f for f in differing_fields(config) if not paper.notes.get(f)]
    assert unexplained == [], f"{config.name}: ours differs from the paper in {unexplained} without a note"


@pytest.mark.parametrize("package", PACKAGES)
def test_readme_recipes_block_is_what_the_command_prints(package: str) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "vislang.shared.recipe", "--package", package],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert printed == readme_block(package)
    readme = (REPO / "packages" / package / "README.md").read_text()
    assert printed in readme, (
        f"packages/{package}/README.md: the Recipes block differs from "
        f"`python -m vislang.shared.recipe --package {package}`; paste its output between the markers"
    )


def test_command_names_a_config_without_a_recipe() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vislang.shared.recipe", "--config", "packages/cmae/configs/demo.yaml"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2 and "demo.yaml: no paper recipe" in done.stderr
