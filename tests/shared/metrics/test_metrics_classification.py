"""Top-k with multi-view averaging, NLVR2 accuracy + consistency, SNLI-VE accuracy."""

import pytest
import torch

from vislang.shared.metrics import (
    NLVR2Metric,
    SNLIVEAccuracy,
    TopKAccuracy,
    multiview_topk_accuracy,
    nlvr2_scores,
    snli_ve_accuracy,
    topk_accuracy,
)


def test_topk_hand_computed():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    target = torch.tensor([1, 1, 0, 1])
    assert topk_accuracy(scores, target, topk=(1, 2, 3)) == {"top1": 25.0, "top2": 50.0, "top3": 100.0}


def test_view_averaging_softmax_differs_from_logits():
    # two views: a confident wrong view and two mildly right ones.
    views = torch.tensor([[[10.0, 0.0], [0.0, 3.0], [0.0, 3.0]]])  # (1 sample, 3 views, 2 classes)
    assert topk_accuracy(views, torch.tensor([1]), topk=(1,))["top1"] == 100.0  # softmax mean: 0.64 vs 0.36
    assert topk_accuracy(views, torch.tensor([1]), topk=(1,), view_reduction="logits")["top1"] == 0.0  # 3.33 vs 2


def test_multiview_rows_dedup_repeated_views():
    scores = torch.tensor([[0.0, 3.0], [0.0, 3.0], [10.0, 0.0], [10.0, 0.0], [10.0, 0.0]])
    video = torch.tensor([7, 7, 7, 7, 7])
    view = torch.tensor([0, 1, 2, 2, 2])  # view 2 repeated by sampler padding: counted once
    assert multiview_topk_accuracy(scores, torch.ones(5), video, view, topk=(1,))["top1"] == 100.0
    assert multiview_topk_accuracy(scores, torch.ones(5), video, torch.arange(5), topk=(1,))["top1"] == 0.0


def test_nlvr2_accuracy_and_consistency():
    labels = {"dev-1-0-0": "True", "dev-1-1-0": "False", "dev-1-2-0": "True", "dev-2-0-1": "False", "dev-2-1-1": "True"}
    preds = {"dev-1-0-0": "true", "dev-1-1-0": "False", "dev-1-2-0": "True", "dev-2-0-1": True, "dev-2-1-1": True}
    out = nlvr2_scores(preds, labels)
    assert out == {"accuracy": 80.0, "consistency": 50.0}  # sentence dev-1--0 all right, dev-2--1 not
    with pytest.raises(ValueError, match=r"1 NLVR2 predictions missing, e.g. \['dev-2-1-1'\]"):
        nlvr2_scores({k: v for k, v in preds.items() if k != "dev-2-1-1"}, labels)


def test_snli_ve():
    assert snli_ve_accuracy(["entailment", 1, 0], [2, "neutral", "entailment"]) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="unknown SNLI-VE label 'yes'"):
        snli_ve_accuracy(["yes"], [0])


def test_metrics_dedup():
    topk = TopKAccuracy(topk=(1,))
    topk.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), [0, 1])
    topk.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), [0])  # padding duplicate
    assert topk.compute() == {"top1": 50.0}
    nlvr = NLVR2Metric()
    nlvr.update(torch.tensor([1, 0]), torch.tensor([1, 1]), ["dev-1-0-0", "dev-1-1-0"], [0, 1])
    nlvr.update(torch.tensor([1]), torch.tensor([1]), ["dev-1-0-0"], [0])
    assert nlvr.compute() == {"accuracy": 50.0, "consistency": 0.0}
    ve = SNLIVEAccuracy()
    ve.update(torch.tensor([[0.1, 0.2, 0.9], [0.9, 0.0, 0.0]]), torch.tensor([2, 1]), [0, 1])
    assert ve.compute() == {"accuracy": 50.0}
