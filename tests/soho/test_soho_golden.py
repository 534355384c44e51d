"""Parity with the official SOHO code: fixtures made by ``golden/make_golden.py`` from researchmm/soho@95824a8.

The visual dictionary (training forwards with momentum updates -- including codes that receive no features --,
the straight-through gradient, an eval forward) and the gated pre-training neck (C5 -> pool -> 1x1 conv + BN
-> VD -> pos_line -> BN gate -> MVM mask -> 2-D sine -> LN; its gradient w.r.t. C5, the BN statistics and the
table after the step) are compared within 1e-5, with the official settings (README "Differences" table).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from vislang.shared.checkpoint import load_into
from vislang.singlestream.model import GridEncoder
from vislang.soho.convert import convert_official_neck
from vislang.soho.model import SOHOEmbedder, VisualDictionary

GOLDEN = Path(__file__).parent / "golden"
TOL = dict(atol=1e-5, rtol=1e-5)


def _subset(tensors: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.mark.parametrize("case", ["fresh", "random"])
def test_visual_dictionary_matches_the_official_momentum_updates(case):
    fx, meta = load_file(GOLDEN / "vd.safetensors"), json.loads((GOLDEN / "vd.json").read_text())
    vd = VisualDictionary(meta["num_tokens"], meta["dim"], decay=meta["decay"], eps=meta["eps"])
    if case == "fresh":  # our initial state is the official one: codes random, counters and sums zero
        for name, official in _subset(fx, "fresh.initial.").items():
            assert name == "embed" or torch.equal(getattr(vd, name), official), name
    missing, unexpected = vd.load_state_dict(_subset(fx, f"{case}.initial."), strict=False)
    assert missing == ["updates"] and not unexpected
    vd.train()
    dead = next(c for c in meta["cases"] if c["name"] == case)["codes_without_features"]
    for step in range(meta["steps"]):
        x = fx[f"{case}.step{step}.x"].clone().requires_grad_(True)
        quantized, index = vd(x)
        assert torch.equal(index, fx[f"{case}.step{step}.index"])
        assert torch.allclose(quantized, fx[f"{case}.step{step}.quantized"], **TOL)
        for name, official in _subset(fx, f"{case}.step{step}.after.").items():
            assert torch.allclose(getattr(vd, name), official, **TOL), (step, name)
        assert dead[step] and set(index.tolist()).isdisjoint(dead[step])  # some codes got no feature
        if step == 0:
            (quantized * fx[f"{case}.step0.weight"]).sum().backward()
            assert torch.allclose(x.grad, fx[f"{case}.step0.grad"], **TOL)  # straight through
            if case == "fresh":  # the official table: a code that never received a feature is the zero vector
                assert (vd.embed[dead[0]] == 0).all()
    vd.eval()
    quantized, index = vd(fx[f"{case}.eval.x"])
    assert torch.equal(index, fx[f"{case}.eval.index"])
    assert torch.allclose(quantized, fx[f"{case}.eval.quantized"], **TOL)


def _official_neck(meta: dict) -> nn.Module:
    """Our grid neck + SOHO embedder with the official settings, holding the fixture's (converted) weights."""
    c_in, dim = meta["in_channels"], meta["out_channels"]
    cnn = ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 8, c_in), stem_width=4, num_classes=0)  # only C5 width
    neck = nn.Module()
    neck.encoder = GridEncoder(cnn, dim, neck_relu=False, valid_mask="official")
    dictionary = VisualDictionary(meta["num_tokens"], dim, decay=meta["decay"], quantize_from="updated")
    neck.embedder = SOHOEmbedder(
        dim, dictionary, visual_input="gate", gate_norm=True, mvm_mask_prob=1.0, mvm_anchor="batch", vd_statistics="all"
    )
    return neck


def _pixel_mask(meta: dict) -> torch.Tensor:
    mask = torch.zeros(len(meta["img_shapes"]), *meta["pad_shape"], dtype=torch.bool)
    for b, (h, w, _) in enumerate(meta["img_shapes"]):
        mask[b, :h, :w] = True
    return mask


def test_pretraining_neck_matches_the_official_gated_neck(monkeypatch):
    fx, meta = load_file(GOLDEN / "neck.safetensors"), json.loads((GOLDEN / "neck.json").read_text())
    neck = _official_neck(meta)
    report = load_into(neck, convert_official_neck(_subset(fx, "initial.")))
    assert not report.unexpected and not report.mismatched
    assert all(k.startswith("encoder.trunk.") or k == "embedder.dictionary.updates" for k in report.missing)
    anchor = meta["train_anchor"]
    monkeypatch.setattr(neck.embedder, "draw_anchor", lambda valid: torch.full((valid.shape[0],), anchor))

    def run(c5: torch.Tensor):
        grid = neck.encoder.neck(c5)
        valid = neck.encoder.valid_cells(_pixel_mask(meta), grid.shape[2:])
        return neck.embedder(grid, valid, pretraining=True)

    neck.train()
    c5 = fx["c5"].clone().requires_grad_(True)
    visual = run(c5)
    assert torch.equal(visual.mask.long(), fx["train.visual_mask"])
    assert torch.equal(visual.extras["mvm_labels"], fx["train.labels"])
    assert (fx["train.labels"] != -100).sum() > 0  # the fixture does mask visual words
    assert torch.allclose(visual.tokens, fx["train.tokens"], **TOL)
    (visual.tokens * fx["train.weight"]).sum().backward()
    assert torch.allclose(c5.grad, fx["train.c5_grad"], **TOL)
    after = convert_official_neck(_subset(fx, "after_train."))
    own = neck.state_dict()
    for key, official in after.items():  # BN running statistics and the dictionary after the step
        assert torch.allclose(own[key].to(official.dtype), official, **TOL), key

    neck.eval()
    with torch.no_grad():
        visual = run(fx["c5"])
    assert torch.equal(visual.mask.long(), fx["eval.visual_mask"])
    assert torch.allclose(visual.tokens, fx["eval.tokens"], **TOL)
    assert "mvm_labels" not in visual.extras


def test_the_official_valid_mask_differs_from_the_fixed_one_on_this_batch():
    """The fixture's batch is not square, so the official height-as-width mask is visibly wrong there."""
    meta = json.loads((GOLDEN / "neck.json").read_text())
    neck = _official_neck(meta)
    official = neck.encoder.valid_cells(_pixel_mask(meta), (4, 6))
    neck.encoder.valid_mask = "covered"
    fixed = neck.encoder.valid_cells(_pixel_mask(meta), (4, 6))
    # image 1 is 200 x 300 in a 256 x 384 batch: grid column 5 (pixels 320-383) is padding, but the official
    # mask is 256 x 256 (the height as width), filled up to column 256 and stretched over all six columns
    assert not fixed[1, :, 5].any() and official[1, :, 5].all()
    assert torch.equal(fixed[:, :, :5], official[:, :, :5])
