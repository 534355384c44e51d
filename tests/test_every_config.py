"""Every shipped config of every package parses through the real `lightning` CLI and names its own package.

Parsing validates each key and type against the classes' signatures (a misspelled key or a wrong type is an
error here, not an hour into a run) without building models or touching data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from vislang.shared.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("packages/*/configs/*.yaml"))


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


def test_every_package_ships_a_demo_config() -> None:
    # packages/app trains nothing: it serves the checkpoints the other packages' demos write
    packages = sorted(p.parent.name for p in REPO.glob("packages/*/pyproject.toml") if p.parent.name != "app")
    without_demo = [p for p in packages if not (REPO / "packages" / p / "configs" / "demo.yaml").is_file()]
    assert without_demo == []


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c.parts[-3]}/{c.stem}" for c in CONFIGS])
def test_config_parses_and_uses_its_own_package(config: Path, capsys) -> None:
    package = config.parts[-3]
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    for group in ("model", "data"):
        class_path = printed[group]["class_path"]
        assert class_path.startswith((f"vislang.{package}.", "vislang.shared.")), f"{group}: {class_path}"
