"""PixelLM's evaluation read-outs: the per-pair record of one question and the score table.

The scores themselves are `vislang.shared.metrics.SegmentationIoU` (MUSE's gIoU / cIoU, reference
pixellm.md §4.3); what is here explains them per question (`pixellm_test_pairs.json`) and prints them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vislang.pixellm.data import Matching
from vislang.shared.metrics.segmentation import match_masks, pair_intersection_union

__all__ = ["format_table", "matched_pairs"]


def matched_pairs(
    pred: Tensor, gt: Tensor, matching: Matching, num_points: int | None, seed: int
) -> list[dict[str, Any]]:
    """One question's masks as the metric pairs them: each (prediction, target) pair with its intersection
    and union, then the unmatched predictions (`gt` None) and the unmatched targets (`pred` None).

    `seed` is the metric's seed for this question (`SegmentationIoU.seed + index`), so that with
    `num_points` the same random points are drawn as in the score.
    """
    generator = torch.Generator().manual_seed(seed) if num_points else None
    pred_index, gt_index = match_masks(pred, gt, matching, num_points, generator)
    generator = torch.Generator().manual_seed(seed) if num_points else None
    inter, union = pair_intersection_union(pred, gt, matching, num_points, generator)
    pairs: list[tuple[int | None, int | None]] = list(zip(pred_index, gt_index, strict=True))
    pairs += [(a, None) for a in range(pred.shape[0]) if a not in pred_index]
    pairs += [(None, b) for b in range(gt.shape[0]) if b not in gt_index]
    return [
        {"pred": a, "gt": b, "intersection": float(i), "union": float(u)}
        for (a, b), i, u in zip(pairs, inter.tolist(), union.tolist(), strict=True)
    ]


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows = (model state, dataset), columns gIoU / cIoU."""
    lines = [f"{'model':<10} {'dataset':<28} {'gIoU':>7} {'cIoU':>7}"]
    for state, per_set in results.items():
        for name, scores in per_set.items():
            lines.append(f"{state:<10} {name:<28} {scores['gIoU']:7.2f} {scores['cIoU']:7.2f}")
    return "\n".join(lines)
