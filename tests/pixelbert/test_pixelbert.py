"""Pixel-BERT: random pixel sampling, the modality embedding, paper presets on meta, a tiny CLI fit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vislang.pixelbert.model import PixelBERTEmbedder, build_pixelbert, sample_pixels
from vislang.shared.cli import build_cli
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer

CONFIGS = Path(__file__).parents[2] / "packages" / "pixelbert" / "configs"
BERT_BASE_LAYERS = 12 * 7_087_872
RESNET50_TRUNK = 25_557_032 - 2_049_000  # torchvision resnet50 minus its fc


def _valid() -> torch.Tensor:
    valid = torch.ones(3, 6, 6, dtype=torch.bool)
    valid[1, :, 4:] = False  # image 1 padded on the right
    valid[2, 3:, :] = False  # image 2 padded at the bottom
    return valid.flatten(1)


@pytest.mark.parametrize("per", ["image", "batch"])
def test_sampling_count_sorted_and_never_padding(per):
    valid = _valid()
    torch.manual_seed(0)
    index = sample_pixels(valid, 10, per)
    assert index.shape == (3, 10)
    assert (index.diff(dim=1) > 0).all()  # sorted, no repeats
    assert valid.gather(1, index).all()  # padded pixels never drawn
    same = bool((index == index[:1]).all())
    assert same == (per == "batch")


def test_sampling_caps_at_fewest_valid_pixels():
    valid = _valid()
    assert sample_pixels(valid, 100, "image").shape == (3, 18)  # image 2 has 18 real pixels
    assert sample_pixels(valid, 100, "batch").shape == (3, 12)  # real in every image: 3 rows x 4 cols


def test_sampling_only_in_pretraining_training_mode():
    emb = PixelBERTEmbedder(8, num_samples=5)
    grid, valid = torch.randn(2, 8, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool)
    assert emb(grid, valid, pretraining=True).tokens.shape == (2, 5, 8)
    assert emb(grid, valid, pretraining=False).tokens.shape == (2, 16, 8)  # fine-tuning: every pixel
    emb.eval()
    assert emb(grid, valid, pretraining=True).tokens.shape == (2, 16, 8)  # inference: every pixel


def test_sampled_tokens_are_the_chosen_pixels():
    emb = PixelBERTEmbedder(8, num_samples=5)
    grid, valid = torch.randn(2, 8, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool)
    full = emb(grid, valid).tokens
    torch.manual_seed(1)
    out = emb(grid, valid, pretraining=True)
    index = out.extras["pixel_index"]
    assert torch.allclose(out.tokens, full.gather(1, index[..., None].expand(-1, -1, 8)))


def test_modality_embedding_is_added_to_every_pixel():
    emb = PixelBERTEmbedder(8, num_samples=0)
    emb.norm = torch.nn.Identity()
    grid = torch.randn(1, 8, 3, 3)
    tokens = emb(grid, torch.ones(1, 3, 3, dtype=torch.bool)).tokens
    assert torch.allclose(tokens - grid.flatten(2).transpose(1, 2), emb.modality.expand(9, 8), atol=1e-6)
    assert emb.modality.abs().sum() > 0 and emb.modality.requires_grad


@pytest.mark.parametrize(
    ("preset", "trunk"),
    [("pixelbert_r50", RESNET50_TRUNK), ("pixelbert_x152", None)],
)
def test_paper_presets_on_meta(preset, trunk):
    from torchvision.models.resnet import Bottleneck, ResNet

    tok = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    with torch.device("meta"):
        model = build_pixelbert(preset, tok)
        if trunk is None:  # ResNeXt-152 32x8d: torchvision's ResNet with layers [3, 8, 36, 3], groups 32
            ref = ResNet(Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=8)
            trunk = sum(p.numel() for p in ref.parameters()) - ref.fc.weight.numel() - ref.fc.bias.numel()
    assert sum(p.numel() for p in model.encoder.trunk.parameters()) == trunk
    assert sum(p.numel() for p in model.bert.encoder.parameters()) == BERT_BASE_LAYERS
    assert model.embedder.modality.shape == (768,)
    if preset == "pixelbert_x152":
        assert trunk == 120_323_392  # ResNeXt-152 32x8d trunk (torchvision layout, fc removed)


def test_tiny_cli_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    build_cli(
        [
            "fit",
            f"--config={CONFIGS / 'demo.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=true",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            f"--model.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
            f"--data.init_args.root={tmp_path / 'data'}",
            "--data.init_args.synthetic_images=64",
            "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=8",
        ],
        run=True,
    )
