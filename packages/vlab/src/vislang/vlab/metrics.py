"""VLAB's evaluation beyond the shared metrics: open-ended QA by exact match, and the ITM re-ranking of
the contrastive top-k (UMT's `k_test`) that `VLABModule` applies to `RetrievalMetric`'s similarities."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

from vislang.shared.metrics import SampleMetric

__all__ = ["ExactMatchAccuracy", "format_scores", "rerank_top_k"]


def _normalise_answer(answer: str) -> str:
    # exact match after the decoder tokenizer's own normalisation (lower case, single spaces)
    return " ".join(answer.lower().split())


class ExactMatchAccuracy(SampleMetric):
    """Open-ended QA accuracy: generated answer == ground truth (VALOR/COSA's `validate_qa`), in percent,
    beside the majority-answer baseline of the same questions (the chance level of open-ended QA).
    Exact under DDP: samples are kept once by dataset index."""

    def __init__(self) -> None:
        super().__init__()
        self._add_string_state("prediction")
        self._add_string_state("answer")

    def update(self, predictions: list[str], answers: list[str], index: Tensor) -> None:
        self._append_index(index, len(predictions))
        self._append_strings("prediction", [_normalise_answer(p) for p in predictions])
        self._append_strings("answer", [_normalise_answer(a) for a in answers])

    def compute(self) -> dict[str, float]:
        keep = self._kept()
        predictions = self._gathered_strings("prediction", keep)
        answers = self._gathered_strings("answer", keep)
        correct = sum(p == a for p, a in zip(predictions, answers, strict=True))
        majority = Counter(answers).most_common(1)[0][1]
        return {
            "accuracy": 100.0 * correct / len(answers),
            "chance/majority_answer": 100.0 * majority / len(answers),
            "count": float(len(answers)),
        }


def rerank_top_k(sim: Tensor, k: int, score_pairs: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Re-score each row's top-k entries of `sim` (queries × targets) with a cross-encoder (UMT's `k_test`).

    `score_pairs(rows, cols)` scores the (query, target) pairs given by two (P,) index tensors. As in
    ALBEF/UMT, only the top-k of a query are candidates: their new scores are shifted above every
    other entry of the matrix, so they rank first among themselves by the cross-encoder's score,
    and the remaining targets keep their contrastive order behind them. Returns a new matrix.
    """
    k = min(k, sim.shape[1])
    if k <= 0:
        return sim.clone()
    top = sim.topk(k, dim=1).indices  # (N, k)
    rows = torch.arange(sim.shape[0], device=sim.device).repeat_interleave(k)
    cols = top.reshape(-1)
    scores = torch.as_tensor(score_pairs(rows.cpu(), cols.cpu()), dtype=torch.float64).reshape(-1)
    # shift the cross-encoder scores above the whole matrix: min(new) > max(old)
    shifted = scores - scores.min() + sim.max().double() + 1.0
    out = sim.double().clone()
    out[rows, cols] = shifted.to(out.device)
    return out


def format_scores(results: dict[str, dict[str, float]]) -> str:
    """A small table: one block per task, each score beside its chance level where one exists."""
    lines = []
    for task, scores in results.items():
        lines.append(f"[{task}]")
        lines.extend(f"  {name:>24}: {value:8.2f}" for name, value in scores.items())
    return "\n".join(lines)
