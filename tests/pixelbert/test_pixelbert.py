"""Pixel-BERT: random pixel sampling, the modality embedding, paper presets on meta, a tiny CLI fit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vislang.pixelbert.model import PixelBERTEmbedder, PixelBERTSpec, sample_pixels
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
        model = PixelBERTSpec(preset=preset).build(tok)
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


def test_clipbert_neck_is_clipberts_grid_encoder():
    """ClipBERT (jayleicn/ClipBERT@a118b02, src/modeling/grid_feat.py) maps C5 with ``grid_encoder`` =
    Sequential(3x3 conv without bias, MaxPool2d(2, 2), ReLU); its weights load into ours by name."""
    torch.manual_seed(0)
    clipbert = torch.nn.Sequential(
        torch.nn.Conv2d(128, 64, 3, padding=1, bias=False), torch.nn.MaxPool2d(2, 2), torch.nn.ReLU()
    )
    model = PixelBERTSpec(preset="tiny", neck="clipbert").build(load_tokenizer(SYNTHETIC_TOKENIZER_DIR), num_answers=4)
    state = {f"grid_encoder.{k}": v for k, v in clipbert.state_dict().items()}
    model.encoder.proj.load_state_dict({k.removeprefix("grid_encoder."): v for k, v in state.items()})
    c5 = torch.randn(2, 128, 8, 12)
    assert torch.equal(model.encoder.neck(c5), clipbert(c5))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.proj.modules())
    grid, valid = model.encoder(torch.randn(2, 3, 64, 96))
    assert grid.shape == (2, 64, 4, 6) and valid.all()  # stride 64 as the SOHO neck


@pytest.mark.parametrize("task", ["nlvr2", "snli_ve"])
def test_nlvr2_and_snli_ve_configs_train_and_score_on_their_layouts(task, tmp_path, monkeypatch):
    """The paper configs, shrunk to the tiny preset on the synthetic world written in the task's real layout."""
    monkeypatch.setattr(sys, "argv", ["lightning"])
    cli = build_cli(
        [
            "fit",
            f"--config={CONFIGS / f'pixelbert_r50_{task}.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.precision=32-true",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
            "--model.init_args.paper.preset=tiny",
            f"--model.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
            "--model.init_args.init_weights=null",
            "--model.init_args.paper.neck=clipbert",
            f"--data.init_args.root={tmp_path / 'data'}",
            "--data.init_args.synthetic_images=20",
            "--data.init_args.image_size=64",
            "--data.init_args.max_size=64",
            "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=4",
        ],
        run=True,
    )
    assert cli.model.model.encoder.neck_type == "clipbert"
    assert 0 <= cli.model.scores[task]["accuracy"] <= 100
