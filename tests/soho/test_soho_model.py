"""SOHO presets on the meta device and MVM masking (one pre-training step: tests/shared/test_singlestream_steps.py)."""

import torch

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer
from vislang.soho.model import SOHOEmbedder, SOHOSpec, VisualDictionary

RESNET101_TRUNK = 44_549_160 - 2_049_000  # torchvision resnet101 minus its fc


def test_paper_preset_sizes_on_meta():
    tok = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    with torch.device("meta"):
        model = SOHOSpec(preset="soho_r101").build(tok)
    trunk = sum(p.numel() for p in model.encoder.trunk.parameters())
    bert = sum(p.numel() for p in model.bert.encoder.parameters())
    assert trunk == RESNET101_TRUNK
    assert bert == 12 * 7_087_872  # 12 BERT-base layers
    assert model.embedder.dictionary.embed.shape == (2048, 768)
    assert not any(n.startswith("embedder.dictionary") for n, _ in model.named_parameters())  # buffers only


def test_mvm_masks_every_position_of_the_sampled_word():
    emb = SOHOEmbedder(8, VisualDictionary(4, 8), mvm_mask_prob=1.0, mvm_anchor="image")
    index = torch.tensor([[0, 1, 1, 2, 1, 3], [2, 2, 0, 2, 1, 1]])
    valid = torch.tensor([[True] * 6, [True, True, True, False, True, True]])
    torch.manual_seed(0)
    mask, labels = emb.mvm_mask(index, valid)
    for b in range(2):
        target = labels[b][mask[b]]
        assert len(target) and (target == target[0]).all()
        assert torch.equal(mask[b], (index[b] == target[0]) & valid[b])  # all of that word, no padding
    assert (labels[~mask] == -100).all()
