"""Parity with the official PixelLM (MaverickRen/PixelLM @ ebf0792) on fixtures its own code produced.

`golden/make_golden.py` built the official `PixelLMForCausalLM` (small LLaMA and CLIP, random weights
everywhere), saved its state dict as the official merge script saves a release (no `vision_tower` key), the
336-px CLIP it loaded, the inputs and its outputs. Here the release is converted with
`vislang.pixellm.convert`, our model runs the same inputs and must match within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vislang.pixellm.convert import load_pixellm_weights
from vislang.pixellm.model import codebook_hidden_states
from vislang.shared.metrics.segmentation import segmentation_scores

GOLDEN = Path(__file__).parent / "golden" / "model"
TOL = 1e-4


@pytest.fixture(scope="module")
def run(golden_meta, golden_layout_model):
    meta = golden_meta
    inputs, expected = load_file(GOLDEN / "inputs.safetensors"), load_file(GOLDEN / "outputs.safetensors")
    model, image_id = golden_layout_model()
    report = load_pixellm_weights(model, GOLDEN / "release", vision_weights=GOLDEN / "clip")
    assert not report.unexpected and not report.mismatched

    resized = tuple(inputs["resized"].tolist())
    original = tuple(inputs["original"].tolist())
    pixels = torch.zeros(1, 3, 448, 448)
    pixels[0, :, : resized[0], : resized[1]] = F.interpolate(inputs["small_image"][None], resized, mode="nearest")[0]
    grid = torch.arange(32) * 14  # a patch holds content if its top-left pixel does (official nearest resize)
    patch_mask = (grid[:, None] < resized[0]) & (grid[None, :] < resized[1])
    rows, masks = [], []
    for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), strict=True):
        at = ids.index(meta["image_token_index"])
        rows.append(ids[:at] + [image_id] * 256 + ids[at + 1 :])
        masks.append(mask[:at] + [1] * 256 + mask[at + 1 :])
    input_ids, attention = torch.tensor(rows), torch.tensor(masks)
    b = input_ids.shape[0]
    with torch.no_grad():
        image_tokens, image_mask, features = model.encode_image(
            pixels.expand(b, -1, -1, -1), patch_mask[None].expand(b, -1, -1)
        )
        embeds, llm_mask = model.embed_inputs(input_ids, attention, image_tokens, image_mask)
        out = model.llm(
            inputs_embeds=embeds,
            attention_mask=llm_mask,
            position_ids=model.position_ids(attention),
            output_hidden_states=True,
            use_cache=False,
        )
        states, _ = codebook_hidden_states(out.hidden_states[-1], input_ids, meta["codebook_ids"], 6)
        states = torch.cat(states)  # the image's targets: question 1's then question 2's
        emb = model.text_hidden_fcs(states).reshape(states.shape[0], 2, 3, -1)
        prompts = model.fusion(emb)
        owner = torch.zeros(states.shape[0], dtype=torch.long)
        fused, levels = model.decoder([f[:1] for f in features], owner, prompts)
        final = model.masks_from_hidden([states], [f[:1] for f in features], torch.tensor([resized]), [original])[0]
    return expected, {"level0": levels[0], "level1": levels[1], "fused": fused, "masks": final}


@pytest.mark.parametrize("name", ["level0", "level1", "fused", "masks"])
def test_matches_the_official_pixellm(run, name) -> None:
    expected, ours = run
    assert ours[name].shape == expected[name].shape
    assert expected[name].abs().mean() > 0.05  # non-trivial logits
    assert (expected[name] > 0).any() and (expected[name] < 0).any()  # the mask's sign varies
    torch.testing.assert_close(ours[name], expected[name], atol=TOL, rtol=0)


def test_release_without_clip_weights_names_what_is_missing(golden_layout_model) -> None:
    model, _ = golden_layout_model()
    with pytest.raises(ValueError, match="holds no vision tower.*vision_weights"):
        load_pixellm_weights(model, GOLDEN / "release")


def _eval_cases():
    meta = json.loads((GOLDEN.parent / "eval" / "scores.json").read_text())
    tensors = load_file(GOLDEN.parent / "eval" / "cases.safetensors")
    preds, gts, counter = [], [], {}
    for image in meta["image_of_question"]:
        q = counter.get(image, 0)
        counter[image] = q + 1
        preds.append(tensors[f"image{image}_q{q}_pred"])
        gts.append(tensors[f"image{image}_q{q}_gt"])
    return meta, preds, gts


def test_official_protocol_reproduces_ar_validate() -> None:
    """The official `ar_validate` scored these constructed questions (extra non-empty predictions, one with
    logits > 1, a missing prediction, several questions per image); protocol="official" gives its numbers."""
    meta, preds, gts = _eval_cases()
    scores = segmentation_scores(preds, gts, num_points=12544, protocol="official", image_ids=meta["image_of_question"])
    assert scores["gIoU"] == pytest.approx(100 * meta["giou"], abs=1e-4)
    assert scores["cIoU"] == pytest.approx(100 * meta["ciou"], abs=1e-4)
    # the strict count (default) differs on exactly these cases: false positives cost cIoU, pairs are per question
    strict = segmentation_scores(preds, gts, num_points=12544)
    assert strict["cIoU"] < scores["cIoU"] - 1 and strict["gIoU"] != pytest.approx(scores["gIoU"], abs=0.1)
