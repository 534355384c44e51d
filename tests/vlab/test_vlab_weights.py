"""VLAB's starting weights: the CLIP architecture its pretrained tag needs, BERT in the decoder,
a frozen image stream, and a retrieval-only model without a decoder."""

from __future__ import annotations

from dataclasses import asdict

import open_clip
import pytest
import torch
from transformers import BertConfig, BertForPreTraining

from vislang.shared.checkpoint import save_state_dict
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer
from vislang.vlab.model import PRESETS, build_vlab, clip_uses_quick_gelu, load_bert_decoder, load_clip_state_dict
from vislang.vlab.module import VLABModule


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random values in every parameter (LayerNorm too), so no wrong mapping or activation can hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(parameter + 0.02 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.slow  # builds four ViT-B/32 CLIP towers (about a minute on 2 shared cores)
def test_openai_weights_give_open_clips_own_outputs_for_the_openai_tag(tmp_path) -> None:
    # OpenAI-layout weights (random values), loaded by open_clip's own OpenAI loader: the reference.
    # OpenAI released fp16 weights and open_clip's loader rounds through fp16, so the values are fp16's.
    reference = open_clip.create_model("ViT-B-32", pretrained=None)
    _randomise(reference)
    path = tmp_path / "ViT-B-32-openai.pt"
    torch.save({k: v.half().float() if v.is_floating_point() else v for k, v in reference.state_dict().items()}, path)
    official = open_clip.load_openai_model(str(path), device="cpu").eval()

    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    text = open_clip.get_tokenizer("ViT-B-32")(["a red circle moves left", "two squares"])
    with torch.no_grad():
        expected_image, expected_text = official.encode_image(images), official.encode_text(text)

    outputs = {}
    for tag in ("openai", None):
        model = build_vlab("vlab_b32", None, clip_tag=tag).eval()
        missing, unexpected = load_clip_state_dict(model, torch.load(path, weights_only=True))
        assert unexpected == []
        with torch.no_grad():
            outputs[tag] = (model.clip.encode_image(images), model.clip.encode_text(text))
    torch.testing.assert_close(outputs["openai"][0], expected_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["openai"][1], expected_text, atol=1e-5, rtol=1e-5)
    # the plain config (GELU) is not the architecture these weights were trained with
    assert (outputs[None][0] - expected_image).abs().max() > 1e-3


def test_clip_tag_is_checked_against_open_clips_tags() -> None:
    assert clip_uses_quick_gelu("ViT-B-16", "openai") is True
    assert clip_uses_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    with pytest.raises(ValueError, match="clip_tag: open_clip has no pretrained tag 'opneai' for ViT-B-16"):
        clip_uses_quick_gelu("ViT-B-16", "opneai")


def _tiny_bert(tmp_path, vocab_size: int, **overrides) -> tuple[BertForPreTraining, object]:
    sizes = dict(asdict(PRESETS["tiny"].decoder), **overrides)
    bert = BertForPreTraining(BertConfig(vocab_size=vocab_size, **sizes))
    _randomise(bert, seed=3)
    directory = tmp_path / "bert"
    bert.save_pretrained(directory, safe_serialization=True)
    return bert, directory


def test_decoder_weights_load_hugging_face_bert_and_only_cross_attention_is_new(tmp_path) -> None:
    tokenizer = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    bert, directory = _tiny_bert(tmp_path, len(tokenizer))
    model = build_vlab("tiny", len(tokenizer), tokenizer.pad_token_id)
    report = load_bert_decoder(model, str(directory))
    assert report.unexpected == [] and report.mismatched == []
    # new: the cross-attention; not in the file but tied to the word embeddings: the output layer
    assert any(".crossattention." in key for key in report.missing)
    assert all(".crossattention." in key or key.startswith("cls.predictions.decoder.") for key in report.missing)
    source = bert.state_dict()
    loaded = model.decoder.state_dict()
    for name, value in loaded.items():
        if ".crossattention." in name:
            continue
        torch.testing.assert_close(value, source[name], rtol=0, atol=0, msg=name)
    # the same weights under TF-era names (LayerNorm gamma/beta) in a pickle file load identically
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in source.items()
    }
    torch.save(renamed, tmp_path / "pytorch_model.bin")
    other = build_vlab("tiny", len(tokenizer), tokenizer.pad_token_id)
    load_bert_decoder(other, str(tmp_path / "pytorch_model.bin"))
    for name, value in other.decoder.state_dict().items():
        if ".crossattention." not in name:
            torch.testing.assert_close(value, loaded[name], rtol=0, atol=0, msg=name)


def test_decoder_weights_of_another_size_are_refused_in_one_line(tmp_path) -> None:
    tokenizer = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    _, directory = _tiny_bert(tmp_path, len(tokenizer), hidden_size=32, intermediate_size=64)
    model = build_vlab("tiny", len(tokenizer), tokenizer.pad_token_id)
    with pytest.raises(
        ValueError, match=r"decoder_weights: .*model.safetensors does not fit the preset's decoder"
    ) as err:
        load_bert_decoder(model, str(directory))
    assert "\n" not in str(err.value)


def test_module_starts_its_decoder_from_bert(tmp_path) -> None:
    tokenizer = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    bert, directory = _tiny_bert(tmp_path, len(tokenizer))
    module = VLABModule(preset="tiny", decoder_tokenizer=str(SYNTHETIC_TOKENIZER_DIR), decoder_weights=str(directory))
    embedding = module.model.decoder.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(embedding, bert.bert.embeddings.word_embeddings.weight, rtol=0, atol=0)


def test_freeze_image_stream_keeps_it_at_its_weights_through_a_step() -> None:
    module = VLABModule(preset="tiny", decoder_tokenizer=None, freeze_image_stream=True)
    image_stream = {n: p.detach().clone() for n, p in module.model.clip.visual.named_parameters()}
    assert image_stream and not any(p.requires_grad for p in module.model.clip.visual.parameters())
    assert all(p.requires_grad for p in module.model.video_visual.parameters())
    video = torch.randn(2, 4, 3, 32, 32)
    embedding, _ = module.model.encode_video(video)
    text = module.model.encode_text(module.clip_tokenizer(["a red circle", "a blue square"]))
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1.0)
    (embedding @ text.t()).trace().neg().backward()
    optimizer.step()
    for name, parameter in module.model.clip.visual.named_parameters():
        torch.testing.assert_close(parameter, image_stream[name], rtol=0, atol=0, msg=name)
    moved = [
        n for n, p in module.model.video_visual.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    ]
    assert moved, "the video stream should still train"


def test_retrieval_only_model_has_no_decoder_and_says_so_when_asked_to_generate(tmp_path) -> None:
    module = VLABModule(preset="tiny", decoder_tokenizer=None)
    assert module.model.decoder is None and module.tokenizer is None
    assert not any(
        name.startswith(("decoder.", "itm_head.", "visual_to_decoder.")) for name, _ in module.named_parameters()
    )
    tokens = torch.zeros(1, 4, 17, 64)
    with pytest.raises(ValueError, match="retrieval only"):
        module._generate(tokens, ["what colour?"], "qa")
    # a full VLAB checkpoint fine-tunes into a retrieval-only one: the decoder's keys are dropped
    full = VLABModule(preset="tiny", decoder_tokenizer=str(SYNTHETIC_TOKENIZER_DIR))
    save_state_dict({f"model.{k}": v for k, v in full.model.state_dict().items()}, tmp_path / "full.safetensors")
    retrieval = VLABModule(preset="tiny", decoder_tokenizer=None, init_weights=str(tmp_path / "full.safetensors"))
    torch.testing.assert_close(retrieval.model.clip.logit_scale, full.model.clip.logit_scale)
    with pytest.raises(ValueError, match="decoder_tokenizer: null builds no decoder"):
        VLABModule(preset="tiny", decoder_tokenizer=None, itm_weight=1.0)
