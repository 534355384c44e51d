"""Ensemble weight fitting on the official VQA accuracy."""

from __future__ import annotations

import pytest
import torch

from vislang.shared.metrics.vqa import vqa_accuracy
from vislang.vqa_ensemble.ensemble import (
    PRIORS,
    OfficialScorer,
    combine,
    cross_validate_prior,
    fit_ensemble_weights,
    gain_over_equal,
    simplex_grid,
)

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


def _members(g: torch.Generator, n: int, right: tuple[float, float]) -> tuple[torch.Tensor, OfficialScorer]:
    """Two members over 6 answers; member m boosts the true answer on ``right[m]`` of the questions, a wrong one else."""
    vocab = [f"a{i}" for i in range(6)]
    truth = torch.randint(0, 6, (n,), generator=g)
    probs = torch.rand(2, n, 6, generator=g) * 0.5
    for m in range(2):
        hit = torch.rand(n, generator=g) < right[m]
        wrong = (truth + torch.randint(1, 6, (n,), generator=g)) % 6  # a confident mistake when it misses
        probs[m, torch.arange(n), torch.where(hit, truth, wrong)] += 0.6 * torch.rand(n, generator=g)
        probs[m, torch.arange(n), truth] += 0.2 * torch.rand(n, generator=g)
    return probs, OfficialScorer([(vocab[int(t)],) * 10 for t in truth], vocab)


def test_cross_validated_prior_generalises_better_than_the_plain_grid_search() -> None:
    # Equally good members, 80 fitting questions, 4000 new ones from the same process: the plain grid search
    # chases noise (weights like 0.3 / 0.7), the cross-validated prior does not. Measured over 6 draws.
    plain, cv = [], []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        (fit_p, fit_s), (new_p, new_s) = _members(g, 80, (0.55, 0.55)), _members(g, 4000, (0.55, 0.55))
        w_plain, _ = fit_ensemble_weights(fit_p, fit_s, grid_step=0.05)
        w_cv, prior, report = cross_validate_prior(fit_p, fit_s, grid_step=0.05)
        assert set(report) == {str(p) for p in PRIORS} and prior in PRIORS
        plain.append(new_s(combine(new_p, w_plain).argmax(-1).tolist()))
        cv.append(new_s(combine(new_p, w_cv).argmax(-1).tolist()))
    assert sum(cv) / 6 > sum(plain) / 6 + 0.002


def test_cross_validation_keeps_unequal_weights_when_members_are_unequal() -> None:
    g = torch.Generator().manual_seed(0)
    (fit_p, fit_s), (new_p, new_s) = _members(g, 400, (0.7, 0.15)), _members(g, 4000, (0.7, 0.15))
    weights, prior, _ = cross_validate_prior(fit_p, fit_s, grid_step=0.05)
    assert weights[0] > 0.6 and prior < 1.0
    assert new_s(combine(new_p, weights).argmax(-1).tolist()) > new_s(combine(new_p, (0.5, 0.5)).argmax(-1).tolist())


def test_a_strong_prior_gives_equal_weights() -> None:
    g = torch.Generator().manual_seed(1)
    probs, scorer = _members(g, 200, (0.7, 0.15))
    assert fit_ensemble_weights(probs, scorer, grid_step=0.1, prior=1.0)[0] == (0.5, 0.5)
    assert fit_ensemble_weights(probs, scorer, grid_step=0.1, prior=0.0)[0] != (0.5, 0.5)


def test_ties_prefer_uniform_weights() -> None:
    probs = torch.zeros(2, 1, 4)
    probs[:, 0, 0] = 1.0  # both members agree: every weight vector has the same accuracy
    weights, acc = fit_ensemble_weights(probs, OfficialScorer([("yes",) * 10], VOCAB), grid_step=0.5)
    assert weights == (0.5, 0.5) and acc == 1.0


def test_gain_over_equal_weights_has_an_image_clustered_standard_error() -> None:
    # 4 images x 3 questions; member 0 right on images 0-2, member 1 right on image 3 only; each member's right
    # answer scores 0.9, a wrong one 0.6, so equal weights follow member 0 (and err on image 3)
    vocab = ["a", "b"]
    answers = [("a",) * 10] * 9 + [("b",) * 10] * 3
    probs = torch.zeros(2, 12, 2)
    probs[0, :, 0] = 0.9
    probs[1, :9, 1], probs[1, 9:, 1] = 0.6, 0.9
    probs[1, 9:, 0] = 0.0
    images = [k // 3 for k in range(12)]
    scorer = OfficialScorer(answers, vocab)
    gain, se = gain_over_equal(probs, scorer, (1.0, 0.0), images)
    assert gain == pytest.approx(0.0)  # member 0 alone = equal weights here
    gain, se = gain_over_equal(probs, scorer, (0.0, 1.0), images)
    # member 1 alone: +100 on image 3's questions, -100 on the other nine -> mean -50 %
    assert gain == pytest.approx(-50.0)
    # clustered by image: per-image sums -3, -3, -3, +3 (in fractions) minus n_g * gain = -1.5 each:
    # -1.5, -1.5, -1.5, +4.5 -> sqrt(3 * 1.5^2 + 4.5^2) / 12
    assert se == pytest.approx(100 * (3 * 1.5**2 + 4.5**2) ** 0.5 / 12)
    # ignoring the images (every question its own cluster) understates the error
    assert gain_over_equal(probs, scorer, (0.0, 1.0))[1] < se
