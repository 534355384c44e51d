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
    # packages/app trains nothing (it serves the checkpoints the other packages' demos write), and
    # packages/singlestream is the core SOHO and Pixel-BERT train through their own configs
    libraries = ("app", "singlestream")
    packages = sorted(p.parent.name for p in REPO.glob("packages/*/pyproject.toml") if p.parent.name not in libraries)
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
        assert class_path.startswith((f"vislang.{package}.", "vislang.shared.", "vislang.singlestream.")), (
            f"{group}: {class_path}"
        )


def _interpolations(tree: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(key path, "${...}" text) of every value in a raw config that interpolates another."""
    if isinstance(tree, dict):
        return [found for key, value in tree.items() for found in _interpolations(value, (*path, str(key)))]
    if isinstance(tree, list):
        return [found for i, value in enumerate(tree) for found in _interpolations(value, (*path, str(i)))]
    return [(path, tree)] if isinstance(tree, str) and "${" in tree else []


def _at(tree: object, path: tuple[str, ...]) -> object:
    for key in path:
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    return tree


INTERPOLATING = [c for c in CONFIGS if "${" in c.read_text()]


def test_some_shipped_configs_write_shared_values_once() -> None:
    # a value model and data must agree on is written once and interpolated (omegaconf parser mode)
    assert len(INTERPOLATING) >= 1


@pytest.mark.parametrize("config", INTERPOLATING, ids=[f"{c.parts[-3]}/{c.stem}" for c in INTERPOLATING])
def test_interpolated_values_resolve_to_their_source(config: Path, capsys) -> None:
    from omegaconf import OmegaConf

    raw = yaml.safe_load(config.read_text())
    resolved = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    for path, text in _interpolations(raw):
        value = _at(printed, path)
        assert "${" not in str(value), f"{'.'.join(path)}: {text} was not resolved"
        assert value == _at(resolved, path), f"{'.'.join(path)}: {value!r} != {_at(resolved, path)!r}"
