"""Which checkpoint each tab serves: the one given on the command line, else the one the package's demo wrote.

The demos write under `demo_outputs/` of the directory `make` ran in (the repository root), so the
app looks there (`--demo-root`, default: the working directory). When neither exists, the tab says
which command makes one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR

__all__ = ["DEMOS", "Demo", "Resolved", "checkpoint_hparams", "resolve_checkpoint", "resolve_relative"]


@dataclass(frozen=True)
class Demo:
    """Where a package's demo leaves its checkpoint and how to make it."""

    flag: str
    paths: tuple[str, ...]  # relative to the demo root; globs allowed, newest match wins
    command: str
    note: str = ""


DEMOS: dict[str, Demo] = {
    # packages/pixellm/configs/demo.yaml: ModelCheckpoint(dirpath=demo_outputs/pixellm/checkpoints, save_last)
    "pixellm": Demo("--pixellm-ckpt", ("demo_outputs/pixellm/checkpoints/last.ckpt",), "make demo-pixellm"),
    # packages/vlab/configs/demo.yaml: ModelCheckpoint(dirpath=demo_outputs/vlab/checkpoints, save_last)
    "vlab": Demo("--vlab-ckpt", ("demo_outputs/vlab/checkpoints/last.ckpt",), "make demo-vlab"),
    # packages/vqa_ensemble/scripts/demo.py: `lightning validate` of demo_ensemble.yaml writes the fitted weights and the
    # member list to this JSON; the detector's checkpoint is found beside it (see `--vqa-detector`)
    "vqa": Demo("--vqa-ckpt", ("demo_outputs/vqa_ensemble/ensemble/weights.json",), "make demo-vqa_ensemble"),
    "vqa_detector": Demo(
        "--vqa-detector", ("demo_outputs/vqa_ensemble/detector/demo/checkpoints/last.ckpt",), "make demo-vqa_ensemble"
    ),
    # packages/cmae/configs/demo.yaml sets `enable_checkpointing: false`: `make demo-cmae` keeps no weights.
    # With checkpointing on, Lightning's default ModelCheckpoint saves into the CSV logger's version folder.
    "cmae": Demo(
        "--cmae-ckpt",
        ("demo_outputs/cmae/version_*/checkpoints/*.ckpt",),
        "lightning fit --config packages/cmae/configs/demo.yaml --trainer.enable_checkpointing=true",
        note="`make demo-cmae` alone keeps no checkpoint (its config sets enable_checkpointing: false)",
    ),
}


@dataclass(frozen=True)
class Resolved:
    """A tab's checkpoint (None: there is none) and the sentence the page shows about it."""

    path: Path | None
    message: str


def resolve_checkpoint(
    name: str, explicit: str | os.PathLike[str] | None, demo_root: str | os.PathLike[str]
) -> Resolved:
    """The checkpoint of tab `name`: `explicit` if given (it must exist), else the demo's, else None."""
    demo = DEMOS[name]
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            return Resolved(
                None,
                f"{demo.flag} {path}: no such file; pass an existing checkpoint or run "
                f"`{demo.command}` and start the app without {demo.flag}",
            )
        return Resolved(path, f"checkpoint from {demo.flag}: {path}")
    root = Path(demo_root)
    found: list[Path] = []
    for pattern in demo.paths:
        found += [p for p in root.glob(pattern) if p.is_file()]
    if found:
        path = max(found, key=lambda p: p.stat().st_mtime)
        return Resolved(path, f"no {demo.flag} given: using the checkpoint `{demo.command}` wrote, {path}")
    where = ", ".join(str(root / p) for p in demo.paths)
    note = f" ({demo.note})" if demo.note else ""
    return Resolved(
        None,
        f"no checkpoint: pass {demo.flag} PATH, or run `{demo.command}` in {root.resolve()} "
        f"to make one (looked for {where}){note}",
    )


def resolve_relative(value: str | None, anchor: str | os.PathLike[str]) -> str | None:
    """A path recorded in a checkpoint, relative to where its run started, made usable from here.

    Demo configs name files relative to the repository root (`shared/src/.../synthetic_wordpiece`,
    `demo_outputs/...`). Tried in turn: as given (absolute or relative to the working directory),
    relative to each parent folder of `anchor` (the checkpoint file), and, for the synthetic tokenizer,
    the copy vislang-shared ships. Anything else (a hub name) is returned unchanged.
    """
    if not value:
        return value
    path = Path(value)
    if path.is_absolute() or path.exists():
        return value
    for parent in Path(anchor).resolve().parents:
        if (parent / path).exists():
            return str(parent / path)
    if path.name == SYNTHETIC_TOKENIZER_DIR.name:
        return str(SYNTHETIC_TOKENIZER_DIR)
    return value


def checkpoint_hparams(path: str | os.PathLike[str], key: str = "hyper_parameters") -> dict[str, Any]:
    """The `hyper_parameters` (or `datamodule_hyper_parameters`, ...) of a Lightning checkpoint, read
    safely (`weights_only`) and memory-mapped."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated file, another format, a pickle that needs code
        raise ValueError(f"{path}: not a readable Lightning checkpoint ({type(error).__name__}: {error})") from None
    if "hyper_parameters" not in checkpoint:
        raise ValueError(f"{path}: no 'hyper_parameters' entry: not a Lightning checkpoint of a vislang model")
    return dict(checkpoint.get(key) or {})
