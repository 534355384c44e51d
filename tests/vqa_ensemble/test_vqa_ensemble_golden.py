"""Parity with the official MCAN (MILVLG/mcan-vqa @ 6b165e9, large config) on the same weights.

The fixture (``golden/``, written by ``golden/make_golden.py`` from the official code) holds the official
state dict as a seeded recipe with per-tensor checksums, the inputs and the official outputs. The official
network encodes the question with GloVe + LSTM and the entry with BERT, so the comparison starts at the first
tensor both take: the question features entering the co-attention stack (``MCAN.answer_logits``). Covered:
image projection, 6 SA + 6 SGA layers (8 heads), both AttFlat reductions, the fusion LayerNorm and the
3129-answer classifier; not covered: MCAN's embedding + LSTM (not used by the entry) and our BERT +
``text_proj`` / ``box_proj`` (not in MCAN; the fixture runs with ``use_boxes=False``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from vislang.vqa_ensemble.convert import MCAN_TEXT_ENCODER_KEYS, mcan_from_official
from vislang.vqa_ensemble.model import MCAN, PRESETS

GOLDEN = Path(__file__).parent / "golden"


def _generator():
    spec = importlib.util.spec_from_file_location("mcan_make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def official() -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    manifest = json.loads((GOLDEN / "mcan_large_weights.json").read_text(encoding="utf-8"))
    state = _generator().regenerate(manifest)
    return manifest, state, load_file(str(GOLDEN / "mcan_large_io.safetensors"))


def test_regenerated_weights_are_the_ones_the_official_network_ran(official) -> None:
    manifest, state, _ = official
    assert list(state) == [t["key"] for t in manifest["tensors"]]
    for t in manifest["tensors"]:
        values = state[t["key"]].double()
        assert values.flatten()[:4].tolist() == pytest.approx(t["first"], rel=1e-6), t["key"]
        assert float(values.sum()) == pytest.approx(t["sum"], rel=1e-6, abs=1e-6), t["key"]


def test_preset_large_is_the_official_large_config(official) -> None:
    cfg, large = official[0]["config"], PRESETS["large"]
    got = (large.layers, large.hidden, large.heads, large.ff, large.flat_mlp, large.flat_glimpses, large.flat_out)
    want = tuple(cfg[k] for k in ("LAYER", "HIDDEN_SIZE", "MULTI_HEAD", "FF_SIZE", "FLAT_MLP_SIZE", "FLAT_GLIMPSES"))
    assert got == (*want, cfg["FLAT_OUT_SIZE"]) and large.dropout == cfg["DROPOUT_R"]


def test_large_member_matches_official_mcan_within_1e5(official) -> None:
    manifest, state, io = official
    bert = BertModel(
        BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        add_pooling_layer=False,
    )
    with torch.device("meta"):  # 2e8 parameters: skip their random init, the converted weights are assigned
        model = MCAN(bert, manifest["answer_size"], manifest["config"]["IMG_FEAT_SIZE"], PRESETS["large"], False)
    converted = mcan_from_official({"state_dict": {f"module.{k}": v for k, v in state.items()}})  # DataParallel
    missing, unexpected = model.load_state_dict(converted, strict=False, assign=True)
    assert not unexpected and all(k.startswith(("bert.", "text_proj.")) for k in missing)
    assert sum(v.numel() for v in converted.values()) == sum(
        v.numel() for k, v in state.items() if not k.startswith(MCAN_TEXT_ENCODER_KEYS)
    )
    model.eval()
    captured = {}
    model.flat_text.register_forward_hook(lambda m, i, o: captured.__setitem__("lang", o))
    model.flat_image.register_forward_hook(lambda m, i, o: captured.__setitem__("img", o))
    with torch.no_grad():
        logits = model.answer_logits(
            io["lang_feat"], io["ques_ix"] == 0, io["img_feat"], io["img_feat"].abs().sum(-1) != 0
        )
    torch.testing.assert_close(captured["lang"], io["attflat_lang"], atol=1e-5, rtol=0)
    torch.testing.assert_close(captured["img"], io["attflat_img"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, io["logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sigmoid(logits), io["scores"], atol=1e-5, rtol=0)


def test_converter_names_a_missing_key(official) -> None:
    state = dict(official[1])
    del state["backbone.dec_list.3.norm2.a_2"]
    with pytest.raises(KeyError, match=r"backbone\.dec_list\.3\.norm2\.a_2"):
        mcan_from_official(state)
    state = dict(official[1])
    state["backbone.extra.weight"] = torch.zeros(3)
    with pytest.raises(KeyError, match="3 values this converter does not map"):
        mcan_from_official(state)
