"""MCAN with a BERT question encoder: shapes, masks, presets, BERT's own learning rate."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer, tiny_bert_config
from vislang.vqa_ensemble.model import MCAN, PRESETS, SGA, AttFlat


@pytest.fixture(scope="module")
def mcan() -> MCAN:
    torch.manual_seed(0)
    bert = BertModel(
        tiny_bert_config(load_tokenizer(SYNTHETIC_TOKENIZER_DIR), hidden=32, layers=1), add_pooling_layer=False
    )
    return MCAN(bert, num_answers=11, visual_dim=12, config=PRESETS["tiny"]).eval()


def _inputs(b: int = 3, length: int = 7, n: int = 5):
    ids = torch.randint(5, 100, (b, length))
    attention = torch.ones(b, length, dtype=torch.long)
    attention[0, 4:] = 0
    ids[0, 4:] = 0
    visual = torch.randn(b, n, 12)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 2:] = False
    boxes = torch.rand(b, n, 4).sort(-1).values[..., [0, 1, 2, 3]]
    return ids, attention, visual, mask, boxes


def test_logits_shape_and_padding_is_ignored(mcan: MCAN) -> None:
    ids, attention, visual, mask, boxes = _inputs()
    with torch.no_grad():
        logits = mcan(ids, attention, visual, mask, boxes)
        assert logits.shape == (3, 11) and torch.isfinite(logits).all()
        # changing what sits under the masks (padded boxes of sample 1, padded words of sample 0) changes nothing
        visual2, boxes2, ids2 = visual.clone(), boxes.clone(), ids.clone()
        visual2[1, 2:] = 100.0
        boxes2[1, 2:] = 0.5
        ids2[0, 4:] = 42
        again = mcan(ids2, attention, visual2, mask, boxes2)
        assert torch.allclose(logits, again, atol=1e-5)
        # ... while a real box does matter
        visual2[1, 0] += 1.0
        assert not torch.allclose(logits[1], mcan(ids2, attention, visual2, mask, boxes2)[1], atol=1e-4)


def test_batch_independence_and_extra_padding(mcan: MCAN) -> None:
    ids, attention, visual, mask, boxes = _inputs()
    with torch.no_grad():
        full = mcan(ids, attention, visual, mask, boxes)
        # sample 2 alone, with three extra padded boxes appended, gives the same answer scores
        v = torch.cat([visual[2:], torch.zeros(1, 3, 12)], 1)
        m = torch.cat([mask[2:], torch.zeros(1, 3, dtype=torch.bool)], 1)
        b = torch.cat([boxes[2:], torch.zeros(1, 3, 4)], 1)
        assert torch.allclose(full[2:], mcan(ids[2:], attention[2:], v, m, b), atol=1e-5)


def test_attflat_weights_sum_to_one_over_real_tokens() -> None:
    c = PRESETS["tiny"]
    flat = AttFlat(c).eval()
    x = torch.randn(2, 6, c.hidden)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 3:] = True
    with torch.no_grad():
        scores = flat.score(x).masked_fill(pad.unsqueeze(-1), float("-inf")).softmax(1)
    assert torch.allclose(scores.sum(1), torch.ones(2, 1)) and (scores[0, 3:] == 0).all()
    sga = SGA(c).eval()
    assert sga(x, torch.randn(2, 4, c.hidden), pad, torch.zeros(2, 4, dtype=torch.bool)).shape == x.shape


def test_paper_presets_build_on_meta_with_bert_base() -> None:
    bert_base = BertConfig()  # bert-base-uncased's architecture (110 M parameters)
    with torch.device("meta"):
        large = MCAN(BertModel(bert_base, add_pooling_layer=False), 3129, 1024, PRESETS["large"])
        small = MCAN(BertModel(bert_base, add_pooling_layer=False), 3129, 2048, PRESETS["small"])
    assert large.classifier.out_features == 3129
    co_large = sum(p.numel() for p in large.co_attention_parameters())
    co_small = sum(p.numel() for p in small.co_attention_parameters())
    bert = sum(p.numel() for p in large.bert.parameters())
    assert 100e6 < bert < 115e6
    # MCAN-large's co-attention stack is about four times MCAN-small's (width 1024 vs 512)
    assert 3.0 < co_large / co_small < 4.5
    assert not {id(p) for p in large.co_attention_parameters()} & {id(p) for p in large.bert.parameters()}
