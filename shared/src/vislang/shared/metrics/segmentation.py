"""Multi-target segmentation: gIoU and cIoU as PixelLM's MUSE evaluation and LISA's refCOCO evaluation.

Protocol (``reference/pixellm.md`` §4.3; PixelLM ``train_ds.py::ar_validate``, ``utils/matcher.py``):

1. Per question, predictions (``P x H x W`` logits) are matched to ground truths (``G x H x W``) by the
   Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on cost = sigmoid BCE + Dice, 1:1
   (Mask2Former's ``batch_sigmoid_ce_loss`` / ``batch_dice_loss``). The official matcher scores 12,544
   random points (``point_sample``, bilinear, ``align_corners=False``); by default we use every pixel,
   which is deterministic. ``matching="ordered"`` pairs the i-th prediction with the i-th mask (LISA's
   refCOCO ``validate``).
2. Unmatched predictions are paired with an empty ground truth, unmatched ground truths with an empty
   prediction: ``max(P, G)`` pairs per question.
3. Per pair, on the binarised prediction (logit > 0): IoU = I / (U + 1e-5) as the official
   ``intersection / (union + 1e-5)``; a pair whose union is empty scores ``empty_pair_iou`` (official: 1.0,
   which hands an extra, empty prediction a free 1.0; ``0.0`` or ``None`` = excluded are strict modes).
4. gIoU = mean IoU over all pairs of the split; cIoU = sum I / (sum U + 1e-10). Both in **percent**, as
   papers report (the official script prints fractions). Pairs are counted per question (the official
   meter weights by ``max(sum P, sum G)`` per *image*, which differs only with several questions per image).

Two protocols (``protocol=``):

* ``"strict"`` (default): the above; an extra prediction is binarised like every other and its positive
  pixels count in the union (a false positive costs cIoU), and gIoU averages over the question's pairs.
* ``"official"``: ``ar_validate`` to the last digit. Extra (unmatched) predictions are not binarised: the
  official ``intersectionAndUnionGPU`` histograms their raw logits into two bins over [0, 1], so only
  logits in [0.5, 1] count as "positive" pixels (a confident false positive with logits > 1 costs
  nothing, and scores 1.0 if no logit falls in [0.5, 1]); and per image the sum of its pairs' IoUs is
  divided by ``max(sum of predictions, sum of ground truths)`` over the image's questions, not by its
  number of pairs. Needs each question's image (``image_ids``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vislang.shared.metrics.ddp import SampleMetric, first_occurrence

__all__ = [
    "SegmentationIoU",
    "match_masks",
    "official_pair_scores",
    "pair_intersection_union",
    "segmentation_scores",
]

MUSE_NUM_POINTS = 12544
_IOU_EPS = 1e-5  # official: intersection / (union + 1e-5)
_CIOU_EPS = 1e-10  # official: intersection_meter.sum / (union_meter.sum + 1e-10)


def _mask_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """(P, N) logits x (G, N) binary targets -> (P, G) mean sigmoid BCE + Dice cost."""
    n = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    bce = (pos @ targets.T + neg @ (1 - targets).T) / n
    prob = logits.sigmoid()
    dice = 1 - (2 * prob @ targets.T + 1) / (prob.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1)
    return bce + dice


def _point_sample(masks: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of (K, H, W) masks at (N, 2) coords in [0, 1]^2 -> (K, N) (Mask2Former point_sample)."""
    grid = (2.0 * coords - 1.0)[None, :, None, :].expand(masks.shape[0], -1, -1, -1)
    return F.grid_sample(masks[:, None].float(), grid, align_corners=False)[:, 0, :, 0]


def match_masks(
    pred_logits: Tensor,
    gt_masks: Tensor,
    matching: str = "hungarian",
    num_points: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[int], list[int]]:
    """Match one question's predictions to its ground-truth masks.

    Args:
        pred_logits: ``(P, H, W)`` mask logits.
        gt_masks: ``(G, H, W)`` binary masks.
        matching: ``"hungarian"`` (MUSE) or ``"ordered"`` (refCOCO: i-th with i-th).
        num_points: Score the cost on this many random points (MUSE: 12,544) instead of all pixels.
        generator: RNG for the points (give one per question for reproducible, DDP-exact numbers).

    Returns:
        ``(pred_indices, gt_indices)`` of the matched pairs, ``min(P, G)`` each.
    """
    p, g = pred_logits.shape[0], gt_masks.shape[0]
    if matching == "ordered":
        return list(range(min(p, g))), list(range(min(p, g)))
    if matching != "hungarian":
        raise ValueError(f"matching must be 'hungarian' or 'ordered', got {matching!r}")
    if p == 0 or g == 0:
        return [], []
    logits, targets = pred_logits.double(), gt_masks.double()
    if num_points is not None:
        coords = torch.rand(num_points, 2, generator=generator, dtype=torch.float32).to(pred_logits.device)
        logits, targets = _point_sample(logits, coords).double(), _point_sample(targets, coords).double()
    else:
        logits, targets = logits.flatten(1), targets.flatten(1)
    cost = _mask_cost(logits, targets).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    return rows.tolist(), cols.tolist()


def pair_intersection_union(
    pred_logits: Tensor,
    gt_masks: Tensor,
    matching: str = "hungarian",
    num_points: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Intersection and union (pixel counts, float64) of each of the ``max(P, G)`` pairs of one question.

    Matched pairs come first (in prediction order), then unmatched predictions against empty masks, then
    unmatched ground truths against empty predictions.
    """
    if pred_logits.ndim != 3 or gt_masks.ndim != 3 or pred_logits.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"expected (P, H, W) logits and (G, H, W) masks, got {tuple(pred_logits.shape)} and {tuple(gt_masks.shape)}"
        )
    pi, gi = match_masks(pred_logits, gt_masks, matching, num_points, generator)
    pred = (pred_logits > 0).flatten(1)
    gt = gt_masks.bool().flatten(1)
    inter, union = [], []
    for a, b in zip(pi, gi, strict=True):
        inter.append((pred[a] & gt[b]).sum())
        union.append((pred[a] | gt[b]).sum())
    for a in sorted(set(range(pred.shape[0])) - set(pi)):
        inter.append(torch.zeros((), dtype=torch.long, device=pred.device))
        union.append(pred[a].sum())
    for b in sorted(set(range(gt.shape[0])) - set(gi)):
        inter.append(torch.zeros((), dtype=torch.long, device=pred.device))
        union.append(gt[b].sum())
    if not inter:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.stack(inter).double().cpu(), torch.stack(union).double().cpu()


def _histogram_foreground(values: Tensor) -> Tensor:
    """Count of values in the upper of two bins over [0, 1] (``torch.histc(x, bins=2, min=0, max=1)[1]``):
    0.5 <= x <= 1. The official code applies it to raw logits of extra predictions."""
    return ((values >= 0.5) & (values <= 1)).sum()


def official_pair_scores(
    pred_logits: Tensor,
    gt_masks: Tensor,
    num_points: int | None = MUSE_NUM_POINTS,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per pair of one question, as ``ar_validate`` scores it: (intersection, union, IoU) of class 1.

    Matched predictions are binarised (logit > 0); unmatched predictions keep their raw logits against an
    empty mask (``_histogram_foreground``); unmatched ground truths meet an all-zero prediction; IoU =
    I / (U + 1e-5), plus 1.0 where U = 0.
    """
    pi, gi = match_masks(pred_logits, gt_masks, "hungarian", num_points, generator)
    gt = gt_masks.bool().flatten(1)
    inter, union = [], []
    for a, b in zip(pi, gi, strict=True):
        pred = pred_logits[a].flatten() > 0
        inter.append((pred & gt[b]).sum())
        union.append((pred | gt[b]).sum())
    for a in sorted(set(range(pred_logits.shape[0])) - set(pi)):
        logits = pred_logits[a].flatten()
        inter.append(torch.zeros((), dtype=torch.long, device=gt.device))  # an all-zero target
        union.append(_histogram_foreground(logits))
    for b in sorted(set(range(gt.shape[0])) - set(gi)):
        inter.append(torch.zeros((), dtype=torch.long, device=gt.device))
        union.append(gt[b].sum())
    if not inter:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty, empty
    i, u = torch.stack(inter).double().cpu(), torch.stack(union).double().cpu()
    return i, u, i / (u + _IOU_EPS) + (u == 0).double()


def _official_scores(
    inter: Tensor, union: Tensor, iou: Tensor, image_of_question: Tensor, num_pred: Tensor, num_gt: Tensor
) -> dict[str, float]:
    """gIoU = sum of pair IoUs / sum over images of max(sum P, sum G); cIoU = sum I / (sum U + 1e-10)."""
    images, image_index = torch.unique(image_of_question, return_inverse=True)
    per_image_pred = torch.zeros(images.numel(), dtype=torch.float64).index_add_(0, image_index, num_pred.double())
    per_image_gt = torch.zeros(images.numel(), dtype=torch.float64).index_add_(0, image_index, num_gt.double())
    denominator = float(torch.maximum(per_image_pred, per_image_gt).sum())
    giou = 100 * float(iou.sum()) / denominator if denominator else float("nan")
    ciou = 100 * float(inter.sum()) / (float(union.sum()) + _CIOU_EPS)
    return {"gIoU": giou, "cIoU": ciou}


def _scores(inter: Tensor, union: Tensor, empty_pair_iou: float | None) -> dict[str, float]:
    iou = inter / (union + _IOU_EPS)
    empty = union == 0
    iou = iou[~empty] if empty_pair_iou is None else torch.where(empty, torch.full_like(iou, empty_pair_iou), iou)
    giou = 100 * float(iou.sum()) / iou.numel() if iou.numel() else float("nan")
    ciou = 100 * float(inter.sum()) / (float(union.sum()) + _CIOU_EPS)
    return {"gIoU": giou, "cIoU": ciou}


def segmentation_scores(
    pred_logits: list[Tensor],
    gt_masks: list[Tensor],
    matching: str = "hungarian",
    num_points: int | None = None,
    empty_pair_iou: float | None = 1.0,
    seed: int = 0,
    protocol: str = "strict",
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """gIoU and cIoU (percent) over a list of questions; see the module docstring for the protocols.

    Args:
        pred_logits: One ``(P, H, W)`` logit tensor per question (``P`` may be 0).
        gt_masks: One ``(G, H, W)`` binary mask tensor per question.
        matching: ``"hungarian"`` (MUSE) or ``"ordered"`` (refCOCO).
        num_points: ``None`` = cost over all pixels; ``12544`` = MUSE's sampled points.
        empty_pair_iou: IoU of a pair with an empty union: 1.0 (official), 0.0, or ``None`` to exclude it.
        seed: With ``num_points``, question ``i`` samples its points from ``Generator().manual_seed(seed + i)``.
        protocol: ``"strict"`` or ``"official"`` (``ar_validate``; Hungarian matching only).
        image_ids: With ``"official"``, the image of each question (default: one image per question).
    """
    if len(pred_logits) != len(gt_masks):
        raise ValueError(f"got {len(pred_logits)} prediction sets for {len(gt_masks)} questions")
    _check_protocol(protocol, matching)
    if protocol == "official":
        metric = SegmentationIoU(num_points=num_points, seed=seed, protocol="official")
        metric.update(pred_logits, gt_masks, list(range(len(pred_logits))), image_ids=image_ids)
        return metric.compute()
    inters, unions = [], []
    for i, (p, g) in enumerate(zip(pred_logits, gt_masks, strict=True)):
        gen = torch.Generator().manual_seed(seed + i) if num_points is not None else None
        inter, union = pair_intersection_union(p, g, matching, num_points, gen)
        inters.append(inter)
        unions.append(union)
    return _scores(torch.cat(inters), torch.cat(unions), empty_pair_iou)


def _check_protocol(protocol: str, matching: str) -> None:
    if protocol not in ("strict", "official"):
        raise ValueError(f"protocol must be 'strict' or 'official', got {protocol!r}")
    if protocol == "official" and matching != "hungarian":
        raise ValueError("protocol='official' is MUSE's ar_validate: it needs matching='hungarian'")


class SegmentationIoU(SampleMetric):
    """gIoU / cIoU accumulated over an epoch, exact under DDP.

    Per-pair intersections and unions are stored with the question's dataset index and the pair's
    position, so duplicated questions (sampler padding) are dropped pair by pair. With ``num_points`` the
    random points of a question are seeded by ``seed + index``, so the numbers do not depend on sharding.
    """

    def __init__(
        self,
        matching: str = "hungarian",
        num_points: int | None = None,
        empty_pair_iou: float | None = 1.0,
        seed: int = 0,
        protocol: str = "strict",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_protocol(protocol, matching)
        self.matching, self.num_points, self.empty_pair_iou, self.seed = matching, num_points, empty_pair_iou, seed
        self.protocol = protocol
        self._add_states("intersection", "union", "pair")
        if protocol == "official":  # per pair its IoU; per question its image and counts
            self._add_states("iou", "question", "image", "num_pred", "num_gt")

    def update(
        self,
        pred_logits: Sequence[Tensor],
        gt_masks: Sequence[Tensor],
        index: Tensor | Sequence[int],
        image_ids: Tensor | Sequence[int] | None = None,
    ) -> None:
        """Add a batch of questions: per question ``(P, H, W)`` logits, ``(G, H, W)`` masks, dataset index, and
        (``protocol="official"``) the index of its image."""
        index_list = torch.as_tensor(index).long().reshape(-1).tolist()
        if not len(pred_logits) == len(gt_masks) == len(index_list):
            raise ValueError("pred_logits, gt_masks and index must have one entry per question")
        images = index_list if image_ids is None else torch.as_tensor(image_ids).long().reshape(-1).tolist()
        if len(images) != len(index_list):
            raise ValueError("image_ids must have one entry per question")
        for p, g, q, image in zip(pred_logits, gt_masks, index_list, images, strict=True):
            gen = torch.Generator().manual_seed(self.seed + q) if self.num_points is not None else None
            if self.protocol == "official":
                inter, union, iou = official_pair_scores(p, g, self.num_points, gen)
                self.iou.append(iou.to(self.device))
                for name, value in (
                    ("question", q),
                    ("image", image),
                    ("num_pred", p.shape[0]),
                    ("num_gt", g.shape[0]),
                ):
                    getattr(self, name).append(torch.tensor([value], dtype=torch.long, device=self.device))
            else:
                inter, union = pair_intersection_union(p, g, self.matching, self.num_points, gen)
            k = inter.numel()
            self.intersection.append(inter.to(self.device))
            self.union.append(union.to(self.device))
            self.index.append(torch.full((k,), q, dtype=torch.long, device=self.device))
            self.pair.append(torch.arange(k, dtype=torch.long, device=self.device))

    def compute(self) -> dict[str, float]:
        index = self._state("index").long()
        keep = first_occurrence(torch.stack([index, self._state("pair").long()], dim=1))
        if self.protocol == "official":
            questions = first_occurrence(self._state("question").long()[:, None])
            return _official_scores(
                self._state("intersection")[keep].double().cpu(),
                self._state("union")[keep].double().cpu(),
                self._state("iou")[keep].double().cpu(),
                *(self._state(name).long()[questions].cpu() for name in ("image", "num_pred", "num_gt")),
            )
        return _scores(
            self._state("intersection")[keep].double(), self._state("union")[keep].double(), self.empty_pair_iou
        )
