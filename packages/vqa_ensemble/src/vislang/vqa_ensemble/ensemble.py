"""Ensembling (entry §1, "model ensemble"): a weighted average of the members' answer probabilities, with
weights fitted on a validation split to maximise the *official* VQA accuracy.

The weights are searched exhaustively on a grid over the probability simplex (step ``grid_step``). The
grid contains every vertex -- a single member with weight 1 -- so on the split it was fitted on, the
fitted ensemble is by construction at least as accurate as its best member. Ties are broken towards the
most uniform weights (the least fitted to noise). The claim on a disjoint held-out split is empirical.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from vislang.shared.metrics.vqa import vqa_accuracy

__all__ = ["OfficialScorer", "combine", "fit_ensemble_weights", "simplex_grid"]


def simplex_grid(num_members: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector with entries in {0, step, 2 step, ..., 1} summing to 1."""
    if num_members < 1:
        raise ValueError("need at least one member")
    n = round(1 / step)
    if n < 1 or abs(n * step - 1) > 1e-9:
        raise ValueError(f"grid_step must divide 1, got {step}")
    grid = [c for c in itertools.product(range(n + 1), repeat=num_members - 1) if sum(c) <= n]
    return [tuple(x / n for x in (*c, n - sum(c))) for c in grid]


def combine(probabilities: Tensor, weights: Sequence[float]) -> Tensor:
    """Weighted average over members: (M, N, A) probabilities -> (N, A)."""
    w = torch.as_tensor(list(weights), dtype=probabilities.dtype, device=probabilities.device)
    if w.numel() != probabilities.shape[0]:
        raise ValueError(f"{w.numel()} weights for {probabilities.shape[0]} members")
    return torch.einsum("m,mna->na", w, probabilities)


class OfficialScorer:
    """Official (2021) accuracy of answer label ``a`` on question ``q``, computed once per pair and cached."""

    def __init__(self, answers: Sequence[Sequence[str]], vocab: Sequence[str], version: str = "2021") -> None:
        self.answers, self.vocab, self.version = answers, vocab, version
        self._cache: dict[tuple[int, int], float] = {}

    def __call__(self, labels: Sequence[int]) -> float:
        """Mean accuracy (in [0, 1]) of predicting ``labels[q]`` for every question ``q``."""
        total = 0.0
        for q, a in enumerate(labels):
            key = (q, int(a))
            if key not in self._cache:
                self._cache[key] = vqa_accuracy(self.vocab[int(a)], list(self.answers[q]), self.version)
            total += self._cache[key]
        return total / max(1, len(labels))


def fit_ensemble_weights(
    probabilities: Tensor, scorer: OfficialScorer, grid_step: float = 0.1
) -> tuple[tuple[float, ...], float]:
    """Grid-search simplex weights maximising the official accuracy of ``argmax(sum_m w_m p_m)``.

    Args:
        probabilities: (M, N, A) member probabilities on the validation questions.
        scorer: Scores predicted labels against those questions' human answers.
        grid_step: Grid resolution (0.1 -> 11 candidates for two members, 66 for three).

    Returns:
        (weights, accuracy in [0, 1]) of the best candidate.
    """
    m = probabilities.shape[0]
    uniform = torch.full((m,), 1.0 / m)
    best: tuple[float, float, tuple[float, ...]] | None = None
    for w in simplex_grid(m, grid_step):
        acc = scorer(combine(probabilities, w).argmax(-1).tolist())
        closeness = -float((torch.tensor(w) - uniform).abs().sum())
        if best is None or (acc, closeness) > best[:2]:
            best = (acc, closeness, w)
    assert best is not None
    return best[2], best[0]
