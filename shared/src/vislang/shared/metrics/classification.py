"""Classification-style metrics: top-1/top-5 with multi-view averaging, NLVR2, SNLI-VE.

* Video classification tests several views per video (VideoMAE K400: 5 clips x 3 crops). VideoMAE's
  ``merge`` applies a softmax to each view's logits, drops repeated (clip, crop) views -- which is exactly
  the DDP padding dedup -- and averages; ``view_reduction="logits"`` averages raw logits instead (some
  forks). Top-k uses ``torch.topk`` (timm's ``accuracy``), percent.
* NLVR2 (``lil-lab/nlvr`` ``nlvr2/eval/metrics.py``): accuracy (the script's "precision") with labels
  compared case-insensitively, and consistency = fraction of sentences (identifier with the pair-id field
  blanked) whose every image pair is right. Missing predictions are refused. Percent.
* SNLI-VE (``necla-ml/SNLI-VE``): three-way accuracy; labels as ALBEF ``ve_dataset``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vislang.shared.metrics.ddp import SampleMetric, first_occurrence

__all__ = [
    "NLVR2Metric",
    "SNLI_VE_LABELS",
    "SNLIVEAccuracy",
    "TopKAccuracy",
    "average_views",
    "multiview_topk_accuracy",
    "nlvr2_scores",
    "snli_ve_accuracy",
    "topk_accuracy",
]

SNLI_VE_LABELS: dict[str, int] = {"contradiction": 0, "neutral": 1, "entailment": 2}  # ALBEF ve_dataset.py


def average_views(scores: Tensor, view_reduction: str = "softmax") -> Tensor:
    """``(N, V, C)`` per-view logits -> ``(N, C)``: mean of softmax scores (VideoMAE) or of raw logits."""
    if scores.ndim == 2:
        return scores
    if scores.ndim != 3:
        raise ValueError(f"expected (N, C) or (N, views, C) scores, got shape {tuple(scores.shape)}")
    if view_reduction == "softmax":
        return scores.double().softmax(-1).mean(1)
    if view_reduction == "logits":
        return scores.double().mean(1)
    raise ValueError(f"view_reduction must be 'softmax' or 'logits', got {view_reduction!r}")


def _topk_correct(scores: Tensor, target: Tensor, topk: Sequence[int]) -> dict[int, Tensor]:
    maxk = min(max(topk), scores.shape[-1])
    pred = scores.topk(maxk, dim=-1).indices
    hit = pred == target.reshape(-1, 1).to(pred.device)
    return {k: hit[:, :k].any(1) for k in topk}


def topk_accuracy(
    scores: Tensor, target: Tensor, topk: Sequence[int] = (1, 5), view_reduction: str = "softmax"
) -> dict[str, float]:
    """Top-k accuracy in percent: ``{"top1": ..., "top5": ...}``.

    Args:
        scores: ``(N, C)`` logits, or ``(N, V, C)`` with the views (clips x crops) of each sample.
        target: ``(N,)`` class indices.
        topk: The k's to report.
        view_reduction: How views are averaged (see :func:`average_views`).
    """
    scores = average_views(scores, view_reduction)
    if scores.shape[0] != target.numel() or scores.shape[0] == 0:
        raise ValueError(f"got {scores.shape[0]} score rows for {target.numel()} targets")
    return {f"top{k}": float(c.sum()) * 100 / c.numel() for k, c in _topk_correct(scores, target, topk).items()}


def multiview_topk_accuracy(
    scores: Tensor,
    target: Tensor,
    video: Tensor,
    view: Tensor,
    topk: Sequence[int] = (1, 5),
    view_reduction: str = "softmax",
) -> dict[str, float]:
    """Top-k when each view is a separate item (VideoMAE's test set of clips x crops rows).

    Repeated ``(video, view)`` rows (e.g. sampler padding) count once, as VideoMAE's ``merge`` skips them;
    views of one video are then averaged.

    Args:
        scores: ``(M, C)`` logits, one row per view.
        target: ``(M,)`` class of each row's video.
        video: ``(M,)`` video id of each row.
        view: ``(M,)`` view id (e.g. ``clip * num_crops + crop``) of each row.
    """
    keep = first_occurrence(torch.stack([video.long(), view.long()], 1))
    scores, target, video = scores[keep].double(), target[keep], video[keep]
    if view_reduction == "softmax":
        scores = scores.softmax(-1)
    elif view_reduction != "logits":
        raise ValueError(f"view_reduction must be 'softmax' or 'logits', got {view_reduction!r}")
    videos, inverse = torch.unique(video, return_inverse=True)
    summed = torch.zeros(len(videos), scores.shape[1], dtype=scores.dtype).index_add_(0, inverse, scores)
    counts = torch.zeros(len(videos), dtype=scores.dtype).index_add_(
        0, inverse, torch.ones_like(inverse, dtype=scores.dtype)
    )
    video_target = torch.zeros(len(videos), dtype=torch.long).scatter_(0, inverse, target.long())
    return topk_accuracy(summed / counts[:, None], video_target, topk)


def _nlvr2_label(value: Any) -> str:
    return str(value).lower()


def nlvr2_scores(predictions: Mapping[str, Any], labels: Mapping[str, Any]) -> dict[str, float]:
    """NLVR2 accuracy and consistency in percent, as ``nlvr2/eval/metrics.py``.

    Args:
        predictions: identifier (``split-setid-pairid-sentenceid``) -> predicted label ("True"/"False",
            or a bool).
        labels: identifier -> gold label.
    """
    missing = sorted(labels.keys() - predictions.keys())
    if missing:
        raise ValueError(f"{len(missing)} NLVR2 predictions missing, e.g. {missing[:5]}")
    correct = 0
    consistent: dict[str, bool] = {}
    for identifier, label in labels.items():
        parts = identifier.split("-")
        if len(parts) < 4:
            raise ValueError(f"NLVR2 identifier {identifier!r} is not split-setid-pairid-sentenceid")
        parts[2] = ""
        sentence = "-".join(parts)
        ok = _nlvr2_label(predictions[identifier]) == _nlvr2_label(label)
        correct += ok
        consistent[sentence] = consistent.get(sentence, True) and ok
    return {
        "accuracy": correct * 100 / len(labels),
        "consistency": sum(consistent.values()) * 100 / len(consistent),
    }


def snli_ve_accuracy(predictions: Sequence[int | str], labels: Sequence[int | str]) -> float:
    """SNLI-VE three-way accuracy in percent; labels as ints or names (:data:`SNLI_VE_LABELS`)."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"got {len(predictions)} predictions for {len(labels)} labels")

    def as_int(v: int | str) -> int:
        if isinstance(v, str):
            if v not in SNLI_VE_LABELS:
                raise ValueError(f"unknown SNLI-VE label {v!r}; expected one of {list(SNLI_VE_LABELS)}")
            return SNLI_VE_LABELS[v]
        return int(v)

    return sum(as_int(p) == as_int(t) for p, t in zip(predictions, labels, strict=True)) * 100 / len(labels)


class TopKAccuracy(SampleMetric):
    """Top-k accuracy (percent) over an epoch, exact under DDP; views of a sample are averaged first."""

    def __init__(self, topk: Sequence[int] = (1, 5), view_reduction: str = "softmax", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.topk = tuple(topk)
        self.view_reduction = view_reduction
        self._add_states(*(f"correct{k}" for k in self.topk))

    def update(self, scores: Tensor, target: Tensor, index: Tensor | Sequence[int]) -> None:
        """``scores``: ``(B, C)`` or ``(B, V, C)``; ``target``: ``(B,)``; ``index``: dataset indices."""
        avg = average_views(scores.detach(), self.view_reduction)
        self._append_index(index, avg.shape[0])
        for k, c in _topk_correct(avg, target, self.topk).items():
            getattr(self, f"correct{k}").append(c.long())

    def compute(self) -> dict[str, float]:
        keep = self._kept()
        return {f"top{k}": float(self._gathered(f"correct{k}", keep).sum()) * 100 / keep.numel() for k in self.topk}


class NLVR2Metric(SampleMetric):
    """NLVR2 accuracy and consistency (percent) over an epoch, exact under DDP."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._add_states("prediction", "target")
        self._add_string_state("identifier")

    def update(
        self, prediction: Tensor, target: Tensor, identifiers: Sequence[str], index: Tensor | Sequence[int]
    ) -> None:
        """``prediction``/``target``: ``(B,)`` bool or 0/1; ``identifiers``: NLVR2 identifiers."""
        self._append_index(index, len(identifiers))
        self.prediction.append(prediction.detach().long().reshape(-1))
        self.target.append(target.detach().long().reshape(-1))
        self._append_strings("identifier", list(identifiers))

    def compute(self) -> dict[str, float]:
        keep = self._kept()
        ids = self._gathered_strings("identifier", keep)
        preds = self._gathered("prediction", keep).bool().tolist()
        targets = self._gathered("target", keep).bool().tolist()
        return nlvr2_scores(dict(zip(ids, preds, strict=True)), dict(zip(ids, targets, strict=True)))


class SNLIVEAccuracy(SampleMetric):
    """SNLI-VE three-way accuracy (percent) over an epoch, exact under DDP."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._add_states("correct")

    def update(self, prediction: Tensor, target: Tensor, index: Tensor | Sequence[int]) -> None:
        """``prediction``: ``(B,)`` class ids or ``(B, 3)`` logits; ``target``: ``(B,)`` class ids."""
        if prediction.ndim == 2:
            prediction = prediction.argmax(-1)
        self._append_index(index, target.numel())
        self.correct.append((prediction.reshape(-1) == target.reshape(-1)).long())

    def compute(self) -> dict[str, float]:
        keep = self._kept()
        return {"accuracy": float(self._gathered("correct", keep).sum()) * 100 / keep.numel()}
