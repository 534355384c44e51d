"""Retrieval metrics: hand-built score matrices, ties, multi-positive, blockwise equality, properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vislang.shared.metrics import (
    RetrievalMetric,
    blockwise_similarity,
    dual_softmax,
    positives_from_keys,
    retrieval_metrics,
    retrieval_ranks,
    transpose_positives,
)


def test_planted_ranks_single_positive():
    # Row i's correct target is column i; planted 0-based ranks 0, 2, 5, 11.
    sim = torch.zeros(4, 12)
    for row, rank in enumerate([0, 2, 5, 11]):
        sim[row] = -torch.arange(12, dtype=torch.float)  # column c scores -c: column order = rank order
        sim[row, row], sim[row, rank] = sim[row, rank].item(), sim[row, row].item()
    positives = torch.arange(4)
    assert retrieval_ranks(sim, positives).tolist() == [0, 2, 5, 11]
    out = retrieval_metrics(sim, positives)
    assert out == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0, "MdR": 4.5, "MnR": 5.5}  # median(0,2,5,11)=3.5


def test_ties_count_against_the_query():
    sim = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.5, 0.9, 0.9, 0.9], [0.0, 0.0, 0.0, 0.0]])
    # row 0: positive col 0 tied with 2 wrong targets -> rank 2; row 1: col 1 tied with 2 -> rank 2;
    # row 2: all tied -> rank 3 (every wrong target counts).
    assert retrieval_ranks(sim, [[0], [1], [3]]).tolist() == [2, 2, 3]
    assert retrieval_metrics(sim, [[0], [1], [3]])["R@1"] == 0.0


def test_multi_positive_best_ranked_counts_three_images_five_captions():
    # Text retrieval (rows = 3 images, columns = 15 captions, captions 5i..5i+4 belong to image i).
    gen = torch.Generator().manual_seed(0)
    sim = torch.rand(3, 15, generator=gen) * 0.5
    sim[0, 3] = 2.0  # image 0: one of its captions on top -> rank 0
    sim[1, [0, 1]] = 3.0  # image 1: two wrong captions above its best (caption 7) -> rank 2
    sim[1, 7] = 1.0
    sim[2, 10:15] = -1.0  # image 2: all its captions last -> rank 10
    positives = [list(range(5 * i, 5 * i + 5)) for i in range(3)]
    mask = torch.zeros(3, 15, dtype=torch.bool)
    for i, cols in enumerate(positives):
        mask[i, cols] = True
    assert retrieval_ranks(sim, positives).tolist() == [0, 2, 10]
    assert retrieval_ranks(sim, mask).tolist() == [0, 2, 10]
    # Image retrieval: each caption has a single correct image.
    t2i = transpose_positives(positives, 15)
    assert t2i[7] == [1] and len(t2i) == 15
    assert retrieval_ranks(sim.T, t2i).shape == (15,)
    assert positives_from_keys([5, 6, 5], [6, 5, 7]) == [[1], [0], [1]]


def test_errors_are_one_line():
    with pytest.raises(ValueError, match=r"without any positive target: \[1\]"):
        retrieval_ranks(torch.zeros(2, 3), [[0], []])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_ranks(torch.tensor([[float("nan"), 0.0]]), [[0]])
    with pytest.raises(ValueError, match="describe 1 queries"):
        retrieval_ranks(torch.zeros(2, 3), [[0]])


def test_blockwise_equals_matmul_and_blocks_do_not_change_ranks():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(37, 8, generator=gen), torch.randn(23, 8, generator=gen)
    sim = blockwise_similarity(a, b, block_size=5)
    torch.testing.assert_close(sim, a @ b.T, rtol=0, atol=1e-5)
    pos = torch.randint(0, 23, (37,), generator=gen)
    assert retrieval_metrics(sim, pos, block_size=4) == retrieval_metrics(sim, pos, block_size=1000)


def test_dual_softmax_matches_dense_formula():
    gen = torch.Generator().manual_seed(2)
    sim = torch.randn(13, 9, generator=gen, dtype=torch.float64)
    expected0 = sim * torch.softmax(sim / 0.05, dim=0) * 13
    expected1 = sim * torch.softmax(sim / 0.05, dim=1) * 9
    torch.testing.assert_close(dual_softmax(sim.clone(), 0.05, dim=0, block_size=4), expected0)
    torch.testing.assert_close(dual_softmax(sim.clone(), 0.05, dim=1, block_size=4), expected1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**31 - 1), st.integers(1, 12))
def test_recall_never_decreases_with_k(n, m, seed, levels):
    gen = torch.Generator().manual_seed(seed)
    sim = torch.randint(0, levels, (n, m), generator=gen).float()  # few levels -> many ties
    pos = torch.randint(0, m, (n,), generator=gen)
    ks = list(range(1, m + 2))
    out = retrieval_metrics(sim, pos, ks=ks)
    recalls = [out[f"R@{k}"] for k in ks]
    assert all(x <= y for x, y in zip(recalls, recalls[1:], strict=False))
    assert recalls[-1] == 100.0
    assert 1 <= out["MdR"] <= m and 1 <= out["MnR"] <= m


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_perfect_similarity_scores_100(n, seed):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sim = torch.eye(n)[:, perm]  # query i's only high score is at its positive column
    out = retrieval_metrics(sim, [[int(torch.nonzero(perm == i))] for i in range(n)])
    assert out["R@1"] == out["R@5"] == out["R@10"] == 100.0
    assert out["MdR"] == out["MnR"] == 1.0


def test_metric_both_directions_with_duplicates():
    gen = torch.Generator().manual_seed(3)
    video = torch.nn.functional.normalize(torch.randn(4, 6, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(video.repeat_interleave(2, 0) + 0.3 * torch.randn(8, 6, generator=gen), dim=-1)
    text_key = torch.arange(4).repeat_interleave(2)  # two captions per video
    metric = RetrievalMetric()
    metric.update(text[:5], text_key[:5], torch.arange(5), video[text_key[:5]], text_key[:5])
    metric.update(text[4:], text_key[4:], torch.arange(4, 8), video[text_key[4:]], text_key[4:])  # index 4 twice
    out = metric.compute()
    sim = text @ video.T
    pos = [[int(k)] for k in text_key]
    expected_t2v = retrieval_metrics(sim, pos)
    expected_v2t = retrieval_metrics(sim.T, transpose_positives(pos, 4))
    assert {k[4:]: v for k, v in out.items() if k.startswith("t2v/")} == pytest.approx(expected_t2v)
    assert {k[4:]: v for k, v in out.items() if k.startswith("v2t/")} == pytest.approx(expected_v2t)
    assert out["rsum"] == pytest.approx(
        sum(v for k, v in {**expected_t2v}.items() if k.startswith("R@"))
        + sum(v for k, v in expected_v2t.items() if k.startswith("R@"))
    )
    dsl = RetrievalMetric(dual_softmax_temperature=0.05)
    dsl.update(text, text_key, torch.arange(8), video[text_key], text_key)
    expected_dsl = retrieval_metrics(sim * torch.softmax(sim / 0.05, dim=0) * 8, pos)
    assert {k[4:]: v for k, v in dsl.compute().items() if k.startswith("t2v/")} == pytest.approx(expected_dsl)


def test_video_to_text_conventions_with_several_captions_per_video() -> None:
    """ALBEF ranks single captions, CLIP4Clip ranks each video's caption group by its best caption."""
    from vislang.shared.metrics import video_to_text_metrics

    # texts 0,1 belong to video 0; texts 2,3,4 to video 1; text 5 to video 2 (rows: videos)
    text_key = torch.tensor([0, 0, 1, 1, 1, 2])
    positives = [[0], [0], [1], [1], [1], [2]]
    sim_v2t = torch.tensor(
        [
            [0.5, 0.1, 0.9, 0.8, 0.7, 0.0],  # video 0: three captions of video 1 above its best, one group
            [0.0, 0.0, 0.6, 0.1, 0.1, 0.2],  # video 1: its own caption first
            [0.3, 0.28, 0.1, 0.0, 0.0, 0.25],  # video 2: two captions of video 0 above, one group
        ]
    )
    captions = video_to_text_metrics(sim_v2t, positives, text_key, "captions")
    groups = video_to_text_metrics(sim_v2t, positives, text_key, "groups")
    # 0-based ranks: captions (3, 0, 2), groups (1, 0, 1)
    assert captions["MnR"] == pytest.approx(1 + 5 / 3) and groups["MnR"] == pytest.approx(1 + 2 / 3)
    assert captions["R@1"] == groups["R@1"] == pytest.approx(100 / 3)
    assert captions["R@5"] == groups["R@5"] == pytest.approx(100.0)
    assert captions["MdR"] == 3.0 and groups["MdR"] == 2.0
    # one caption per video: the two conventions agree
    single = torch.tensor([[0.2, 0.9, 0.1], [0.3, 0.4, 0.5], [0.6, 0.1, 0.7]])
    one = [[0], [1], [2]]
    assert video_to_text_metrics(single, one, torch.arange(3), "captions") == video_to_text_metrics(
        single, one, torch.arange(3), "groups"
    )
    with pytest.raises(ValueError, match="video_to_text"):
        video_to_text_metrics(single, one, torch.arange(3), "group")


def test_similarities_then_score_is_compute_and_a_reranker_can_change_them() -> None:
    """The public path a re-ranker takes: `similarities()`, change the matrices, `score()`."""
    import dataclasses

    gen = torch.Generator().manual_seed(5)
    video = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    text_key = torch.tensor([4, 0, 1, 1, 2, 3, 0])  # two captions for videos 0 and 1, out of order
    text = torch.nn.functional.normalize(video[text_key] + 0.5 * torch.randn(7, 8, generator=gen), dim=-1)
    index = torch.tensor([60, 0, 10, 11, 20, 30, 1])
    for temperature in (None, 0.05):
        # block_size 2 splits every matrix into several blocks; dual softmax's column pass streams over them
        metric = RetrievalMetric(dual_softmax_temperature=temperature, block_size=2, video_to_text="groups")
        metric.update(text[:4], text_key[:4], index[:4], video[text_key[:4]], text_key[:4])
        metric.update(text[3:], text_key[3:], index[3:], video[text_key[3:]], text_key[3:])  # index 11 twice
        found = metric.similarities()
        assert found.text_index.tolist() == [0, 1, 10, 11, 20, 30, 60]
        assert found.text_key.tolist() == [0, 0, 1, 1, 2, 3, 4] and found.visual_key.tolist() == [0, 1, 2, 3, 4]
        assert found.positives == [[0], [0], [1], [1], [2], [3], [4]]
        sim = text[[1, 6, 2, 3, 4, 5, 0]] @ video.T
        if temperature is None:
            torch.testing.assert_close(found.text_to_visual, sim)
            torch.testing.assert_close(found.visual_to_text, sim.T)
        else:
            torch.testing.assert_close(found.text_to_visual, sim * torch.softmax(sim / temperature, dim=0) * 7)
            torch.testing.assert_close(found.visual_to_text, (sim * torch.softmax(sim / temperature, dim=1) * 5).T)
        assert metric.score(found) == metric.compute()
        # a perfect re-ranker: every text's own video first, every video's own texts first
        perfect = torch.tensor(found.positives).reshape(-1, 1) == torch.arange(5)
        oracle = dataclasses.replace(found, text_to_visual=perfect.double(), visual_to_text=perfect.T.double())
        scores = metric.score(oracle)
        assert scores["t2v/R@1"] == scores["v2t/R@1"] == 100.0 and scores["num_text"] == 7.0
