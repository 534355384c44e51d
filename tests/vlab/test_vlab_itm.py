"""VLAB's video-text matching head: ALBEF-style hard-negative training and UMT-style top-k re-ranking."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from vislang.shared.cli import build_cli
from vislang.shared.data.synthetic import SyntheticWorld, writers
from vislang.shared.metrics import retrieval_metrics
from vislang.vlab.metrics import rerank_top_k
from vislang.vlab.model import build_vlab, sample_hard_negatives
from vislang.vlab.module import _MAX_CAPTIONS_PER_VIDEO, VLABModule

CONFIG = Path(__file__).resolve().parents[2] / "packages" / "vlab" / "configs" / "msrvtt.yaml"


def _right_padded(lengths: list[int], vocab: int = 50, width: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, vocab, (len(lengths), width))
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, 0), mask


def test_itm_loss_is_a_scalar_and_trains_the_head_decoder_and_blending() -> None:
    torch.manual_seed(0)
    model = build_vlab("tiny", decoder_vocab_size=50)
    memory = model.decoder_memory(model.encode_video_tokens(torch.randn(3, 4, 3, 32, 32)))
    ids, mask = _right_padded([7, 4, 5])
    assert model.itm_logits(memory, ids, mask).shape == (3, 2)
    loss = model.itm_loss(memory, ids, mask, similarity=torch.randn(3, 3))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("itm_head.weight", "visual_to_decoder.weight", "blend.attention_gate"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    cross = model.decoder.bert.encoder.layer[0].crossattention
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in cross.parameters())


def test_itm_reads_the_last_caption_token_whatever_the_padding() -> None:
    torch.manual_seed(0)
    model = build_vlab("tiny", decoder_vocab_size=50).eval()
    memory = torch.randn(2, 10, 64)
    ids, mask = _right_padded([4, 6])
    with torch.no_grad():
        batched = model.itm_logits(memory, ids, mask)
        alone = model.itm_logits(memory[:1], ids[:1, :4], mask[:1, :4])
        ids[0, 4:] = 7  # anything in the padding
        repadded = model.itm_logits(memory, ids, mask)
    assert torch.allclose(batched[0], alone[0], atol=1e-5)
    assert torch.allclose(batched, repadded, atol=1e-6)


def test_hard_negatives_never_pick_the_positive_and_prefer_similar_items() -> None:
    torch.manual_seed(0)
    for _ in range(200):
        batch = int(torch.randint(2, 9, ()))
        similarity = 20 * torch.randn(batch, batch)
        similarity.diagonal().add_(50.0)  # the positives dominate the softmax
        negative_video, negative_text = sample_hard_negatives(similarity)
        assert (negative_video != torch.arange(batch)).all()
        assert (negative_text != torch.arange(batch)).all()
    # items that also match (here: texts 0 and 1 are the same caption) are never negatives either
    same = torch.zeros(3, 3, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    for _ in range(50):
        negative_video, negative_text = sample_hard_negatives(torch.zeros(3, 3), same)
        assert negative_text[0] == 2 and negative_text[1] == 2 and negative_video[0] == 2
    # ALBEF's softmax weighting: the far more similar wrong text is the one drawn
    similarity = torch.tensor([[10.0, 9.0, -5.0, -5.0], [0.0, 1.0, 0.0, 0.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    draws = torch.stack([sample_hard_negatives(similarity)[1][0] for _ in range(100)])
    assert (draws == 1).float().mean() > 0.9
    with pytest.raises(ValueError, match="at least 2"):
        sample_hard_negatives(torch.zeros(1, 1))


def _r1(sim: torch.Tensor) -> float:
    return retrieval_metrics(sim, torch.arange(sim.shape[0]))["R@1"]


def test_rerank_with_k1_keeps_r1_whatever_the_itm_says() -> None:
    torch.manual_seed(0)
    sim = torch.randn(12, 12)
    sim.diagonal().add_(0.8)
    adversarial = lambda rows, cols: torch.randn(len(rows))  # noqa: E731
    assert _r1(rerank_top_k(sim, 1, adversarial)) == _r1(sim)
    # k=0 is "off"
    assert torch.equal(rerank_top_k(sim, 0, adversarial), sim)


def test_rerank_keeps_every_metric_when_itm_agrees_and_fixes_a_wrong_top1() -> None:
    torch.manual_seed(0)
    sim = torch.randn(10, 10)
    sim.diagonal().add_(1.0)
    agreeing = lambda rows, cols: 3.0 * sim[rows, cols] - 7.0  # noqa: E731  (same order, other scale)
    assert retrieval_metrics(rerank_top_k(sim, 4, agreeing), torch.arange(10)) == retrieval_metrics(
        sim, torch.arange(10)
    )

    # query 0's right target is contrastively second: an ITM that knows better moves it to the top
    sim = torch.eye(4) + torch.tensor([[0.0, 2.0, 0.0, 0.0]] + [[0.0] * 4] * 3)
    oracle = lambda rows, cols: (rows == cols).float()  # noqa: E731
    assert _r1(sim) == 75.0
    assert _r1(rerank_top_k(sim, 2, oracle)) == 100.0
    assert _r1(rerank_top_k(sim, 1, oracle)) == 75.0  # k=1 cannot reach the second candidate
    # re-scored candidates stay above the rest even when the ITM scores are far below the contrastive ones
    reranked = rerank_top_k(sim, 2, lambda rows, cols: (rows == cols).float() - 100.0)
    assert reranked[0, 0] > reranked[0, 1] > reranked[0, 2:].max()


@pytest.fixture
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("msrvtt_itm")
    writers.write_msrvtt(SyntheticWorld(seed=2, image_size=32, num_frames=8), root, num_videos=20)
    return root


def test_itm_trains_and_reranks_through_the_cli(
    _plain_argv, msrvtt_root: Path, tmp_path: Path, monkeypatch, tiny_cli_args
) -> None:
    common = [
        "-c",
        str(CONFIG),
        *tiny_cli_args,
        f"--data.init_args.root={msrvtt_root}",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = build_cli(["fit", *common, "--trainer.fast_dev_run=1", "--model.init_args.itm_weight=1.0"])
    assert torch.isfinite(cli.trainer.callback_metrics["train/itm_loss"])

    def test_results(name: str) -> dict[str, float]:
        results_dir = tmp_path / name
        build_cli(
            [
                "test",
                *common,
                "--trainer.enable_checkpointing=false",
                "--model.init_args.itm_rerank_k=2",
                f"--model.init_args.results_dir={results_dir}",
            ]
        )
        return json.loads((results_dir / "vlab_test_results.json").read_text())["retrieval"]

    # the real ITM head (untrained): every metric is there, the stored memories were all used
    results = test_results("itm")
    assert set(results) >= {"t2v/R@1", "t2v/MnR", "v2t/R@1", "v2t/MnR", "rsum", "chance/R@1"}

    # an ITM that knows the answer, over all (k=2 of 2) candidates: re-ranking makes retrieval perfect
    scored: list[tuple[int, int]] = []

    def oracle(self, text_indices: list[int], video_keys: list[int], batch_size: int = 64) -> torch.Tensor:
        scored.extend(zip(text_indices, video_keys, strict=True))
        assert all(i in self._rerank_text for i in text_indices) and all(k in self._rerank_memory for k in video_keys)
        owners = torch.tensor(text_indices) // _MAX_CAPTIONS_PER_VIDEO
        return (owners == torch.tensor(video_keys)).float()

    monkeypatch.setattr(VLABModule, "_itm_pair_scores", oracle)
    results = test_results("oracle")
    assert results["t2v/R@1"] == 100.0 and results["v2t/R@1"] == 100.0
    # both directions re-scored every (text, video) pair of the 2 x 2 test matrix
    assert len(scored) == 2 * 4 and len(set(scored)) == 4
