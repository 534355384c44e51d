"""What `lightning predict` writes: rows gathered from every rank into one file that replaces the previous
run's (written under a temporary name and renamed, so a re-run never appends and an interrupted run leaves
the previous file whole)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["gather_objects", "replace_text", "write_json_lines"]


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank (in rank order) under torch.distributed, else ``[obj]``; picklable objects only."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def replace_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


def write_json_lines(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    """One JSON object per line, replacing any earlier file at ``path`` (see `replace_text`)."""
    return replace_text(path, "".join(json.dumps(row) + "\n" for row in rows))
