"""Ensemble weight fitting on the official VQA accuracy."""

from __future__ import annotations

import pytest
import torch

from vislang.shared.metrics.vqa import vqa_accuracy
from vislang.vqa_ensemble.ensemble import OfficialScorer, combine, fit_ensemble_weights, simplex_grid

VOCAB = ["yes", "no", "red", "blue"]


def test_simplex_grid_contains_every_vertex_and_sums_to_one() -> None:
    grid = simplex_grid(3, 0.25)
    assert len(grid) == 15 and all(abs(sum(w) - 1) < 1e-9 for w in grid)
    assert {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)} <= set(grid)
    with pytest.raises(ValueError, match="divide 1"):
        simplex_grid(2, 0.3)


def test_scorer_is_the_official_accuracy() -> None:
    answers = [("yes",) * 9 + ("no",), ("Red",) * 10, ("blue",) * 2 + ("red",) * 8]
    scorer = OfficialScorer(answers, VOCAB)
    labels = [1, 2, 3]
    expected = sum(vqa_accuracy(VOCAB[a], list(ans)) for a, ans in zip(labels, answers, strict=True)) / 3
    assert scorer(labels) == pytest.approx(expected)
    assert scorer([2]) == 0.0  # 2021 metric: unanimous "Red" is not normalised, "red" scores 0


def test_fitted_ensemble_beats_each_member_when_they_err_differently() -> None:
    # question k's answer is VOCAB[truth[k]]; member A is confidently right on the first half and weakly
    # wrong on the second, member B the other way round: only a mixture gets all of them.
    truth = [0, 2, 3, 1, 0, 2, 3, 1]
    answers = [(VOCAB[t],) * 10 for t in truth]
    probs = torch.full((2, 8, 4), 0.05)
    for k, t in enumerate(truth):
        wrong = (t + 1) % 4
        good, bad = (0, 1) if k < 4 else (1, 0)
        probs[good, k, t] = 0.9
        probs[bad, k, wrong], probs[bad, k, t] = 0.5, 0.4
    scorer = OfficialScorer(answers, VOCAB)
    members = [scorer(probs[m].argmax(-1).tolist()) for m in range(2)]
    weights, acc = fit_ensemble_weights(probs, scorer, grid_step=0.1)
    assert members == [0.5, 0.5] and acc == 1.0 and abs(sum(weights) - 1) < 1e-9
    assert scorer(combine(probs, weights).argmax(-1).tolist()) == acc


def test_fitted_ensemble_is_never_worse_than_its_best_member_on_the_fitting_split() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        probs = torch.rand(3, 40, 4, generator=g)
        answers = [tuple(VOCAB[int(i)] for i in torch.randint(0, 4, (10,), generator=g)) for _ in range(40)]
        scorer = OfficialScorer(answers, VOCAB)
        best_member = max(scorer(probs[m].argmax(-1).tolist()) for m in range(3))
        _, acc = fit_ensemble_weights(probs, scorer, grid_step=0.2)
        assert acc >= best_member


def test_ties_prefer_uniform_weights() -> None:
    probs = torch.zeros(2, 1, 4)
    probs[:, 0, 0] = 1.0  # both members agree: every weight vector has the same accuracy
    weights, acc = fit_ensemble_weights(probs, OfficialScorer([("yes",) * 10], VOCAB), grid_step=0.5)
    assert weights == (0.5, 0.5) and acc == 1.0
