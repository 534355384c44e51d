"""Preflight: before any model is built or anything is downloaded, name every input a run lacks.

`lightning fit|validate|test|predict` calls `run_preflight` between parsing the config and building
the model, the data module and the trainer. It gathers, in one list:

* generic checks that every package's configs get: each `*_weights` argument of the model and data
  module names an existing file or directory, each `*tokenizer` argument a local tokenizer directory or
  a hub name already in the Hugging Face cache (or, online, one that can be downloaded), and the
  trainer's accelerator exists on this machine;
* the checks a model or data module class adds with a `preflight(init_args, context)` classmethod (a
  dataset's annotation files and the videos they list, what the chosen tasks need, ...).

Each problem is a `Missing(key, problem, fix)`; the run stops with all of them at once, short enough
to read on one screen, instead of failing on the first one after minutes of building and retrying.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Missing",
    "PreflightContext",
    "check_accelerator",
    "check_path",
    "check_tokenizer",
    "format_missing",
    "hub_reachable",
    "run_preflight",
]

SYNTHETIC_SWITCHES = ("synthetic_images", "synthetic_samples", "synthetic_videos")
"""Data-module arguments that make `prepare_data` write the synthetic world into the data folder."""

MAX_LISTED = 12
"""At most this many problems are printed (and how many more there are), so the list fits a screen."""


@dataclass(frozen=True)
class Missing:
    """One thing a run needs and does not have.

    Attributes:
        key: the config key it comes from, e.g. `model.clip_weights` or `data.root`.
        problem: what is missing, with the value that was given.
        fix: what to do about it (where to get it, which command prepares it).
    """

    key: str
    problem: str
    fix: str


@dataclass
class PreflightContext:
    """What a class's `preflight` may look at besides its own arguments.

    Attributes:
        stage: `fit`, `validate`, `test` or `predict`.
        model: the model's `init_args` (all arguments, defaults filled in).
        data: the data module's `init_args`.
        trainer: the trainer's arguments.
    """

    stage: str
    model: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    trainer: Mapping[str, Any] = field(default_factory=dict)


def check_path(key: str, value: str | os.PathLike[str] | None, fix: str) -> list[Missing]:
    """`[Missing]` if `value` is set and names no existing file or directory, else `[]`."""
    if value is None or Path(value).expanduser().exists():
        return []
    return [Missing(key, f"{value} does not exist", fix)]


_HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached now (False at once when HF_HUB_OFFLINE is set).

    One TCP connection with a short timeout, instead of the minute of retries `from_pretrained` spends
    before it reports that it is offline.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{_HUB_HOST}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or (443 if endpoint.startswith("https") else 80))), timeout):
            return True
    except OSError:
        return False


def _tokenizer_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("tokenizer_config.json", "tokenizer.json", "vocab.txt"):
        found = try_to_load_from_cache(name, filename)
        if isinstance(found, str):
            return True
    return False


def check_tokenizer(
    key: str, value: str | None, fix: str, *, online: Callable[[], bool] = hub_reachable
) -> list[Missing]:
    """A tokenizer given as a directory must exist; a hub name must be cached, or the hub reachable.

    When the hub is unreachable the run would otherwise retry for over a minute and then fail with a
    long traceback: here it is listed with its fix, and `HF_HUB_OFFLINE=1` is set for the rest of the
    run so that nothing else retries either.
    """
    if value is None:
        return []
    from vislang.shared.text import _is_path_like, package_path

    try:
        value = str(package_path(value))
    except FileNotFoundError as err:
        return [Missing(key, str(err), fix)]
    path = Path(value).expanduser()
    if path.is_dir():
        return []

    if _is_path_like(value) or _tokenizer_cached(value):
        return check_path(key, value, fix)
    if online():
        return []
    os.environ["HF_HUB_OFFLINE"] = "1"
    return [Missing(key, f"{value!r} is neither a local directory nor a cached hub model, and the hub is offline", fix)]


def check_accelerator(trainer: Mapping[str, Any]) -> list[Missing]:
    """The configured accelerator and device count exist on this machine."""
    import torch

    accelerator = str(trainer.get("accelerator") or "auto")
    fix = "run on the CPU with `--trainer cpu` (or `--trainer.accelerator cpu`)"
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            return [Missing("trainer.accelerator", f"{accelerator!r}, but this machine has no CUDA device", fix)]
        devices = trainer.get("devices")
        if isinstance(devices, int) and devices > torch.cuda.device_count():
            return [
                Missing(
                    "trainer.devices",
                    f"{devices} GPUs asked for, {torch.cuda.device_count()} present",
                    f"set --trainer.devices {torch.cuda.device_count()} (batch sizes are per device)",
                )
            ]
    if accelerator == "mps" and not torch.backends.mps.is_available():
        return [Missing("trainer.accelerator", "'mps', but MPS is not available here", fix)]
    return []


def _generic(group: str, init_args: Mapping[str, Any], package: str) -> list[Missing]:
    """Path-like arguments every package shares by name: `*_weights`, `*tokenizer`, and the data module's
    `root`/`*_root` folders (unless a `SYNTHETIC_SWITCHES` argument asks `prepare_data` to write them)."""
    found: list[Missing] = []
    writes_synthetic = any(init_args.get(name) for name in SYNTHETIC_SWITCHES)
    for name, value in init_args.items():
        if isinstance(value, Mapping) and "class_path" not in value:  # a typed group (SOHO's `paper:`)
            found += _generic(f"{group}.{name}", value, package)
            continue
        if not isinstance(value, str):
            continue
        key = f"{group}.{name}"
        if group == "data" and (name == "root" or name.endswith("_root")) and not writes_synthetic:
            found += check_path(key, value, f"point it at the dataset folder (layouts: packages/{package}/README.md)")
        elif name.endswith("_weights"):
            found += check_path(key, value, "give the path of the weights file, or null to start from random weights")
        elif name.endswith("tokenizer"):
            found += check_tokenizer(
                key,
                value,
                f"a local directory with the tokenizer files; or, for a hub model, on a machine with internet "
                f"`hf download <hub id> --local-dir <dir>`, then {key}: <dir>",
            )
    return found


def _class(class_path: str | None) -> type | None:
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None  # the parser has already refused an unknown class_path


def run_preflight(stage: str, config: Mapping[str, Any]) -> list[Missing]:
    """Every input the subcommand's config needs and lacks (empty when the run can start).

    Args:
        stage: the subcommand.
        config: the subcommand's parsed config as a dict (`model`, `data`, `trainer` groups).
    """
    model, data = config.get("model") or {}, config.get("data") or {}
    context = PreflightContext(
        stage=stage,
        model=dict(model.get("init_args") or {}),
        data=dict(data.get("init_args") or {}),
        trainer=dict(config.get("trainer") or {}),
    )
    found = check_accelerator(context.trainer)
    # the paper's package (the model's), whose README documents the data layouts, also for shared data modules
    paper = (model.get("class_path") or "vislang.?.").split(".")[1]
    for group, spec, init_args in (("model", model, context.model), ("data", data, context.data)):
        cls = _class(spec.get("class_path"))
        own = getattr(cls, "preflight", None)
        if own is not None:
            found += own(init_args, context)
        found += [m for m in _generic(group, init_args, paper) if m.key not in {f.key for f in found}]
    return found


def format_missing(prog: str, missing: Iterable[Missing]) -> str:
    """The message the CLI prints: one line per problem and one indented line with its fix."""
    missing = list(missing)
    lines = [f"{prog}: cannot start, {len(missing)} input(s) missing (nothing was built or downloaded):"]
    for item in missing[:MAX_LISTED]:
        lines.append(f"  - {item.key}: {item.problem}")
        lines.append(f"      fix: {item.fix}")
    if len(missing) > MAX_LISTED:
        lines.append(f"  ... and {len(missing) - MAX_LISTED} more")
    return "\n".join(lines)
