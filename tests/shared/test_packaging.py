"""Each distribution installs on its own: namespace package, declared dependencies, no cross-imports."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
LIBRARIES = {"shared", "singlestream"}  # distributions that papers build on; every other is one paper
DISTRIBUTIONS = [REPO / "shared", *sorted(p.parent for p in (REPO / "packages").glob("*/pyproject.toml"))]


def imported_top_level_modules(source_dir: Path) -> set[str]:
    modules: set[str] = set()
    for path in source_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def declared_distributions(distribution_dir: Path) -> set[str]:
    project = tomllib.loads((distribution_dir / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name.lower().replace("_", "-") for r in project.get("dependencies", [])}


def test_vislang_is_a_namespace_package() -> None:
    offenders = [p for p in REPO.glob("*/**/src/vislang/__init__.py")] + list(
        REPO.glob("shared/src/vislang/__init__.py")
    )
    assert offenders == [], "vislang must stay a namespace package so each distribution installs alone"


@pytest.mark.parametrize("distribution_dir", DISTRIBUTIONS, ids=[d.name for d in DISTRIBUTIONS])
def test_every_third_party_import_is_a_declared_dependency(distribution_dir: Path) -> None:
    declared = declared_distributions(distribution_dir)
    module_to_distributions = packages_distributions()
    missing = {}
    for module in imported_top_level_modules(distribution_dir / "src"):
        if module in sys.stdlib_module_names or module == "vislang":
            continue
        providers = {d.lower().replace("_", "-") for d in module_to_distributions.get(module, [])}
        assert providers, f"{module!r} is imported by {distribution_dir.name} but no installed distribution provides it"
        # lightning re-exports pytorch_lightning's modules; torch brings no separate distribution for functorch
        if not providers & declared:
            missing[module] = sorted(providers)
    assert missing == {}, f"{distribution_dir.name}/pyproject.toml lacks dependencies for imports: {missing}"


@pytest.mark.parametrize("distribution_dir", DISTRIBUTIONS[1:], ids=[d.name for d in DISTRIBUTIONS[1:]])
def test_paper_packages_depend_on_shared_and_never_on_each_other(distribution_dir: Path) -> None:
    declared = declared_distributions(distribution_dir)
    assert "vislang-shared" in declared
    own = distribution_dir.name
    vislang_declared = {d.removeprefix("vislang-").replace("-", "_") for d in declared if d.startswith("vislang-")}
    if own != "app":  # vislang-app serves several papers (DESIGN.md): it may import the ones it declares
        # a paper package stands on the libraries only: shared, and the single-stream core (SOHO, Pixel-BERT)
        assert vislang_declared <= LIBRARIES, f"{own} depends on another paper: {sorted(vislang_declared - LIBRARIES)}"
    allowed = {"shared", own} | vislang_declared
    for path in (distribution_dir / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "vislang" and len(parts) > 1:
                    assert parts[1] in allowed, f"{path}: imports {name}; move what is shared to vislang.shared"
