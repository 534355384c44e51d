"""gIoU / cIoU with Hungarian and ordered matching, empty pairs, sampled points, permutation invariance."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vislang.shared.metrics import SegmentationIoU, match_masks, pair_intersection_union, segmentation_scores

A = torch.zeros(4, 4)
A[:2, :2] = 1  # 4 pixels, top-left
B = torch.zeros(4, 4)
B[2:, 2:] = 1  # 4 pixels, bottom-right


def logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), 5.0, -5.0)


A_PLUS = A.clone()
A_PLUS[0, 2] = 1  # A plus one pixel: I = 4, U = 5 against A
GT = torch.stack([A, B])
PRED = torch.stack([logits(B), logits(A_PLUS)])


def test_hungarian_matches_by_cost_not_order():
    assert match_masks(PRED, GT) == ([0, 1], [1, 0])
    inter, union = pair_intersection_union(PRED, GT)
    assert inter.tolist() == [4.0, 4.0] and union.tolist() == [4.0, 5.0]
    out = segmentation_scores([PRED], [GT])
    assert out["gIoU"] == pytest.approx(100 * (4 / (4 + 1e-5) + 4 / (5 + 1e-5)) / 2, abs=1e-12)
    assert out["cIoU"] == pytest.approx(100 * 8 / (9 + 1e-10), abs=1e-12)


def test_ordered_matching_is_the_refcoco_protocol():
    out = segmentation_scores([PRED], [GT], matching="ordered")
    assert out == {"gIoU": 0.0, "cIoU": 0.0}  # B vs A and A+ vs B do not overlap
    with pytest.raises(ValueError, match="hungarian"):
        segmentation_scores([PRED], [GT], matching="greedy")


def test_extra_empty_prediction_gets_empty_pair_iou():
    pred = torch.stack([logits(A), torch.full((4, 4), -5.0)])  # second prediction is empty
    gt = A[None]
    iou_a = 4 / (4 + 1e-5)
    assert segmentation_scores([pred], [gt])["gIoU"] == pytest.approx(100 * (iou_a + 1.0) / 2)  # official free 1.0
    assert segmentation_scores([pred], [gt], empty_pair_iou=0.0)["gIoU"] == pytest.approx(100 * iou_a / 2)
    assert segmentation_scores([pred], [gt], empty_pair_iou=None)["gIoU"] == pytest.approx(100 * iou_a)
    assert segmentation_scores([pred], [gt])["cIoU"] == pytest.approx(100 * 4 / (4 + 1e-10))


def test_extra_nonempty_prediction_and_missed_ground_truth_score_zero():
    pred = torch.stack([logits(A), logits(B)])
    out = segmentation_scores([pred], [A[None]])  # P > G: B paired with an empty mask (I 0, U 4)
    assert out["gIoU"] == pytest.approx(100 * (4 / (4 + 1e-5)) / 2)
    assert out["cIoU"] == pytest.approx(100 * 4 / 8)
    out = segmentation_scores([logits(A)[None]], [GT])  # P < G: B paired with an empty prediction
    assert out["cIoU"] == pytest.approx(100 * 4 / 8)
    out = segmentation_scores([torch.zeros(0, 4, 4)], [GT])  # no prediction at all (codebook count % 6 != 0)
    assert out["gIoU"] == 0.0 and out["cIoU"] == 0.0


def test_sampled_points_agree_on_a_clear_case_and_are_seeded():
    gen = torch.Generator().manual_seed(0)
    gt = (torch.rand(3, 32, 32, generator=gen) > 0.5).float()
    pred = torch.where(gt[[2, 0, 1]].bool(), 3.0, -3.0)
    assert match_masks(pred, gt, num_points=12544, generator=torch.Generator().manual_seed(1)) == ([0, 1, 2], [2, 0, 1])
    a = segmentation_scores([pred], [gt], num_points=64, seed=5)
    b = segmentation_scores([pred], [gt], num_points=64, seed=5)
    assert a == b and a["gIoU"] == pytest.approx(100.0, abs=1e-4)  # perfect masks once matched
    assert a == segmentation_scores([pred], [gt])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 5))
def test_matching_is_invariant_to_permuting_predictions(seed, p, g):
    gen = torch.Generator().manual_seed(seed)
    gt = (torch.rand(g, 8, 8, generator=gen) > 0.6).float()
    pred = torch.randn(p, 8, 8, generator=gen) * 3
    perm = torch.randperm(p, generator=gen)
    rows, cols = match_masks(pred, gt)
    prows, pcols = match_masks(pred[perm], gt)
    assert {(int(perm[r]), c) for r, c in zip(prows, pcols, strict=False)} == set(zip(rows, cols, strict=False))
    out, pout = segmentation_scores([pred], [gt]), segmentation_scores([pred[perm]], [gt])
    assert pout["gIoU"] == pytest.approx(out["gIoU"], abs=1e-9)
    assert pout["cIoU"] == pytest.approx(out["cIoU"], abs=1e-9)


def test_metric_equals_function_and_dedups_padding():
    gen = torch.Generator().manual_seed(4)
    preds = [torch.randn(int(torch.randint(0, 4, (1,), generator=gen)), 6, 6, generator=gen) for _ in range(5)]
    gts = [
        (torch.rand(int(torch.randint(1, 4, (1,), generator=gen)), 6, 6, generator=gen) > 0.5).float() for _ in range(5)
    ]
    metric = SegmentationIoU()
    metric.update(preds[3:], gts[3:], [3, 4])
    metric.update(preds[:4], gts[:4], [0, 1, 2, 3])  # question 3 seen twice
    assert metric.compute() == segmentation_scores(preds, gts)


def test_official_protocol_histograms_extra_logits_and_divides_per_image() -> None:
    """Hand-computed `ar_validate` numbers: an extra prediction counts only its logits in [0.5, 1]; per image
    the pair IoUs are divided by max(#pred, #gt) over its questions (not by its pairs)."""
    from vislang.shared.metrics.segmentation import official_pair_scores

    gt = torch.zeros(1, 4, 4)
    gt[0, :2, :2] = 1  # 4 pixels
    matched = gt[0] * 4 - 2  # a perfect prediction
    extra = torch.full((4, 4), 3.0)  # confident everywhere: no logit in [0.5, 1]
    extra[3, 3], extra[3, 2] = 0.7, 1.0  # two logits in [0.5, 1]
    inter, union, iou = official_pair_scores(torch.stack([matched, extra]), gt, num_points=None)
    assert inter.tolist() == [4, 0] and union.tolist() == [4, 2]
    assert iou.tolist() == pytest.approx([4 / (4 + 1e-5), 0.0])
    _, union_high, iou_high = official_pair_scores(torch.stack([matched, torch.full((4, 4), 3.0)]), gt, None)
    assert union_high.tolist() == [4, 0] and iou_high[1] == 1.0  # a confident false positive scores 1.0
    # image 0: question A (1 gt, matched + extra: pairs 1 + 0), question B (1 gt, no prediction: 0)
    preds, gts = [torch.stack([matched, extra]), torch.zeros(0, 4, 4)], [gt, gt]
    scores = segmentation_scores(preds, gts, protocol="official", image_ids=[0, 0])
    assert scores["gIoU"] == pytest.approx(100 * (4 / (4 + 1e-5)) / max(2, 2))  # 2 predictions, 2 ground truths
    assert scores["cIoU"] == pytest.approx(100 * 4 / (4 + 2 + 4))
    strict = segmentation_scores(preds, gts)  # strict: the extra prediction's 16 positive pixels count
    assert strict["cIoU"] == pytest.approx(100 * 4 / (4 + 16 + 4))
    assert strict["gIoU"] == pytest.approx(100 * (4 / (4 + 1e-5)) / 3)  # three pairs
    with pytest.raises(ValueError, match="matching='hungarian'"):
        segmentation_scores(preds, gts, matching="ordered", protocol="official")


def test_official_protocol_metric_is_exact_with_duplicated_questions() -> None:
    """Sampler padding repeats questions: they count once, and the image's max(#pred, #gt) too."""
    gt = torch.zeros(1, 4, 4)
    gt[0, 1:3, 1:3] = 1
    pred = (gt * 4 - 2) + torch.tensor([[[0.0] * 4] * 3 + [[0.0, 0.0, 0.0, 5.0]]])
    metric = SegmentationIoU(protocol="official")
    metric.update([pred, torch.zeros(0, 4, 4)], [gt, gt], [0, 1], image_ids=[7, 7])
    once = metric.compute()
    metric.update([pred], [gt], [0], image_ids=[7])  # a padded duplicate of question 0
    assert metric.compute() == once
