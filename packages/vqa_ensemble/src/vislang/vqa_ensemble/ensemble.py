"""Ensembling (entry §1, "model ensemble"): a weighted average of the members' answer probabilities, with
weights fitted on a validation split to maximise the *official* VQA accuracy.

Candidate weights lie on a grid over the probability simplex (step ``grid_step``). Picking the candidate with
the best validation accuracy overfits a small validation split: differences of a few questions decide
between neighbouring weights and do not carry over to new questions. So the fit maximises

    accuracy(w) - prior * |w - uniform|_1

a prior toward equal weights, and the strength ``prior`` is chosen by K-fold cross-validation on the
validation split itself (``cross_validate_prior``): for each strength, weights fitted on K-1 folds are scored
on the remaining fold, and the strength with the best mean held-out accuracy wins (ties: the stronger prior).
With ``prior = 0`` this is the plain grid search; the grid contains each member alone, so the plain search is
never worse than the best member *on the split it was fitted on* -- which says nothing about new questions.

Questions about one image succeed or fail together, so a split of a few hundred images is a small sample
however many questions it has. Last, ``gain_over_equal`` compares the fitted weights with equal weights on the
fitting split, with a standard error clustered by image; unequal weights are kept only when they win by at
least ``min_gain_se`` standard errors (2 by default) -- otherwise the split cannot tell them apart and equal
weights, the prior, stand.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from vislang.shared.metrics.vqa import vqa_accuracy

__all__ = [
    "PRIORS",
    "OfficialScorer",
    "combine",
    "cross_validate_prior",
    "fit_ensemble_weights",
    "gain_over_equal",
    "simplex_grid",
]

PRIORS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 1.0)
"""Prior strengths tried by cross-validation (accuracy in [0, 1] per unit of L1 distance from uniform);
1.0 forces equal weights."""


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

    def per_question(self, labels: Sequence[int]) -> Tensor:
        """(N,) accuracy in [0, 1] of predicting ``labels[q]`` for every question ``q``."""
        out = []
        for q, a in enumerate(labels):
            key = (q, int(a))
            if key not in self._cache:
                self._cache[key] = vqa_accuracy(self.vocab[int(a)], list(self.answers[q]), self.version)
            out.append(self._cache[key])
        return torch.tensor(out, dtype=torch.float64)

    def __call__(self, labels: Sequence[int]) -> float:
        """Mean accuracy (in [0, 1]) of predicting ``labels[q]`` for every question ``q``."""
        return float(self.per_question(labels).mean()) if len(labels) else 0.0


def _candidates(probabilities: Tensor, scorer: OfficialScorer, grid_step: float) -> tuple[Tensor, Tensor, Tensor]:
    """Grid weights (C, M), their L1 distance from uniform (C,), per-question accuracy (C, N)."""
    m = probabilities.shape[0]
    grid = torch.tensor(simplex_grid(m, grid_step), dtype=torch.float64)
    distance = (grid - 1.0 / m).abs().sum(1)
    accuracy = torch.stack([scorer.per_question(combine(probabilities, w).argmax(-1).tolist()) for w in grid])
    return grid, distance, accuracy


def _best(accuracy: Tensor, distance: Tensor, prior: float) -> int:
    """Index of the candidate maximising mean accuracy - prior * distance; ties go to the most uniform one."""
    objective = accuracy.mean(1) - prior * distance
    top = objective.max()
    tied = torch.nonzero(objective >= top - 1e-12).flatten()
    return int(tied[distance[tied].argmin()])


def fit_ensemble_weights(
    probabilities: Tensor, scorer: OfficialScorer, grid_step: float = 0.1, prior: float = 0.0
) -> tuple[tuple[float, ...], float]:
    """Grid-search simplex weights maximising the official accuracy of ``argmax(sum_m w_m p_m)`` minus
    ``prior`` times their L1 distance from equal weights.

    Args:
        probabilities: (M, N, A) member probabilities on the validation questions.
        scorer: Scores predicted labels against those questions' human answers.
        grid_step: Grid resolution (0.1 -> 11 candidates for two members, 66 for three).
        prior: Strength of the pull toward equal weights (0 = plain grid search).

    Returns:
        (weights, accuracy in [0, 1] on these questions) of the chosen candidate.
    """
    grid, distance, accuracy = _candidates(probabilities, scorer, grid_step)
    k = _best(accuracy, distance, prior)
    return tuple(float(x) for x in grid[k]), float(accuracy[k].mean())


def cross_validate_prior(
    probabilities: Tensor,
    scorer: OfficialScorer,
    grid_step: float = 0.1,
    priors: Sequence[float] = PRIORS,
    folds: int = 5,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> tuple[tuple[float, ...], float, dict[str, float]]:
    """Choose the prior strength by K-fold cross-validation, then fit the weights on all questions with it.

    Args:
        groups: A group id per question (VQA: its image). Folds then hold whole groups: questions about one
            image succeed or fail together, and folds that split an image would make the fit look more stable
            than it is on new images.

    Returns:
        (weights, chosen prior, {prior: mean held-out accuracy in percent over the folds}).
    """
    if not priors:
        raise ValueError("priors: give at least one prior strength")
    grid, distance, accuracy = _candidates(probabilities, scorer, grid_step)
    n = accuracy.shape[1]
    keys = torch.as_tensor(list(groups) if groups is not None else range(n))
    if keys.numel() != n:
        raise ValueError(f"{keys.numel()} group ids for {n} questions")
    unique, member_of = keys.unique(return_inverse=True)
    shuffled = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))
    fold_of = torch.empty_like(shuffled)
    fold_of[shuffled] = torch.arange(len(unique)) % min(folds, len(unique))
    parts = [torch.nonzero(fold_of[member_of] == f).flatten() for f in range(min(folds, len(unique)))]
    report: dict[str, float] = {}
    for prior in priors:
        held = []
        for f, part in enumerate(parts):
            rest = torch.cat([p for g, p in enumerate(parts) if g != f])
            k = _best(accuracy[:, rest], distance, prior)
            held.append(float(accuracy[k, part].sum()))
        report[str(prior)] = round(100 * sum(held) / n, 3)
    best = max(report.values())
    chosen = max(p for p in priors if report[str(p)] >= best - 1e-9)  # ties: the stronger prior
    k = _best(accuracy, distance, chosen)
    return tuple(float(x) for x in grid[k]), chosen, report


def gain_over_equal(
    probabilities: Tensor, scorer: OfficialScorer, weights: Sequence[float], groups: Sequence[int] | None = None
) -> tuple[float, float]:
    """(accuracy gain of ``weights`` over equal weights, its standard error), in percent, on these questions.

    The standard error is clustered by ``groups`` (VQA: the image): ``sqrt(sum_g (D_g - n_g gain)^2) / n`` with
    ``D_g`` the summed per-question difference of group ``g`` and ``n_g`` its size.
    """
    m = probabilities.shape[0]
    diff = scorer.per_question(combine(probabilities, weights).argmax(-1).tolist()) - scorer.per_question(
        combine(probabilities, [1.0 / m] * m).argmax(-1).tolist()
    )
    n = diff.numel()
    keys = torch.as_tensor(list(groups) if groups is not None else range(n))
    _, member_of = keys.unique(return_inverse=True)
    sums = torch.zeros(int(member_of.max()) + 1, dtype=diff.dtype).index_add_(0, member_of, diff)
    sizes = torch.zeros_like(sums).index_add_(0, member_of, torch.ones_like(diff))
    gain = float(diff.mean())
    se = float(((sums - sizes * gain) ** 2).sum().sqrt()) / n
    return 100 * gain, 100 * se
