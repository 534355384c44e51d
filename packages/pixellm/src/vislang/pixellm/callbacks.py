"""`lightning predict`'s writer for PixelLM: an overlay picture and one JSON line per question."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from vislang.shared.data.images import as_rgb_array
from vislang.shared.predictions import gather_objects, write_json_lines

__all__ = ["PALETTE", "OverlayWriter", "write_overlay_png"]

PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
]
"""Mask k is drawn in `PALETTE[k % 8]` (the overlays and the app's legend)."""


def write_overlay_png(
    image: np.ndarray | str | Path | Image.Image, masks: np.ndarray, path: str | Path, alpha: float = 0.5
) -> Path:
    """Blend each mask (K, H, W) over the image (any input `segment` takes) in its own colour and save a PNG."""
    base = as_rgb_array(image)
    out = base.astype(np.float32).copy()
    for k, mask in enumerate(np.asarray(masks, dtype=bool)):
        if mask.shape != base.shape[:2]:
            raise ValueError(f"mask {k} is {mask.shape}, the image {base.shape[:2]}")
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(PALETTE[k % len(PALETTE)], dtype=np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(path, format="PNG")
    return path


class OverlayWriter(BasePredictionWriter):
    """`lightning predict` callback: per question an overlay PNG of its masks and one JSON line of results.

    Each run replaces the previous run's files: rows and pictures go to a temporary folder beside the output
    and are renamed into place when prediction ends (an interrupted run leaves the previous results intact).
    A question is written once even when the robust loader repeated it as a stand-in for an unreadable image.
    Under DDP every rank draws its own pictures and rank 0 writes the rows of all ranks.

    Args:
        output_dir: where `overlays/<loader>-<index>.png` and `predictions.jsonl` go.
    """

    def __init__(self, output_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self._rows: dict[tuple[int, int], dict[str, Any]] = {}

    @property
    def _partial(self) -> Path:
        return self.output_dir / ".predict.partial"

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._rows = {}
        if trainer.is_global_zero:
            shutil.rmtree(self._partial, ignore_errors=True)  # an interrupted run's leftovers
            (self._partial / "overlays").mkdir(parents=True)
        trainer.strategy.barrier("pixellm_overlay_writer_start")

    def write_on_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for item in prediction:
            key = (dataloader_idx, int(item["index"]))
            if key in self._rows:
                continue
            name = f"{dataloader_idx}-{item['index']}.png"
            write_overlay_png(item["image"], item["masks"].numpy(), self._partial / "overlays" / name)
            record = {k: v for k, v in item.items() if k != "masks"}
            self._rows[key] = {**record, "overlay": f"overlays/{name}"}

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        rows = {key: row for part in gather_objects(self._rows) for key, row in part.items()}
        trainer.strategy.barrier("pixellm_overlay_writer_end")
        if trainer.is_global_zero:
            overlays = self.output_dir / "overlays"
            shutil.rmtree(overlays, ignore_errors=True)
            os.replace(self._partial / "overlays", overlays)
            write_json_lines(self.output_dir / "predictions.jsonl", (rows[key] for key in sorted(rows)))
            shutil.rmtree(self._partial, ignore_errors=True)
        self._rows = {}
