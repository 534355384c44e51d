"""vislang.singlestream: grid encoder, fusion, heads, data module on synthetic layouts, one training step."""

import pytest
import torch

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer, tiny_bert_config
from vislang.singlestream.model import GridEncoder, SingleStreamModel, VisualEmbedder, build_cnn, vqa_loss


@pytest.fixture(scope="module")
def tiny_model():
    tok = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    torch.manual_seed(0)
    return tok, SingleStreamModel(
        GridEncoder(build_cnn("tiny"), 64), VisualEmbedder(), tiny_bert_config(tok), 10
    ).eval()


def test_grid_and_padding_mask(tiny_model):
    _, model = tiny_model
    images = torch.randn(2, 3, 64, 96)
    pixel_mask = torch.ones(2, 64, 96, dtype=torch.bool)
    pixel_mask[1, :, 64:] = False  # second image is 64x64, padded on the right
    grid, valid = model.encode_image(images, pixel_mask)
    assert grid.shape == (2, 64, 4, 6)
    assert valid[0].all() and valid[1, :, :4].all() and not valid[1, :, 4:].any()


def test_padded_visual_tokens_do_not_change_the_text(tiny_model):
    tok, model = tiny_model
    enc = tok(["a red circle"], return_tensors="pt")
    images = torch.randn(1, 3, 64, 64)
    h1, _ = model(enc["input_ids"], enc["attention_mask"], images)
    padded = torch.cat([images, torch.randn(1, 3, 64, 32)], dim=3)
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[:, :, :64] = True
    h2, _ = model(enc["input_ids"], enc["attention_mask"], padded, mask)
    # the padded CNN sees different borders, so compare the fusion alone on identical visual tokens
    grid, valid = model.encode_image(images)
    visual = model.embed_visual(grid, valid)
    extra = torch.randn(1, 8, 64)
    padded_visual = type(visual)(
        torch.cat([visual.tokens, extra], 1), torch.cat([visual.mask, torch.zeros(1, 8, dtype=torch.bool)], 1)
    )
    a = model.fuse(enc["input_ids"], enc["attention_mask"], visual)
    b = model.fuse(enc["input_ids"], enc["attention_mask"], padded_visual)
    assert torch.allclose(a, b[:, : a.shape[1]], atol=1e-5)
    assert h1.shape[1] == enc["input_ids"].shape[1] + 16 and h2.shape[1] == enc["input_ids"].shape[1] + 24


def test_mlm_head_is_tied_and_vqa_loss_sums_over_answers(tiny_model):
    _, model = tiny_model
    assert model.mlm_head.word_embeddings.weight is model.bert.embeddings.word_embeddings.weight
    logits, target = torch.randn(4, 10), torch.rand(4, 10)
    per_answer = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(vqa_loss(logits, target), per_answer.sum(1).mean())


def test_paper_backbones_on_meta_match_torchvision():
    import torchvision

    with torch.device("meta"):
        for arch, reference in [("resnet50", torchvision.models.resnet50), ("resnet101", torchvision.models.resnet101)]:
            assert sum(p.numel() for p in build_cnn(arch).parameters()) == sum(
                p.numel() for p in reference().parameters()
            )
