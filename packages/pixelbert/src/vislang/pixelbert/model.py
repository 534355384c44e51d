"""Pixel-BERT (Huang, Zeng, Liu, Fu, Fu; arXiv 2004.00849): aligning image pixels with text by deep Transformers.

The single-stream core (CNN grid -> 2x2 max-pool -> 1x1 conv, BERT over ``cat[text, visual]``, MLM / ITM /
VQA / NLVR2 / SNLI-VE heads) is ``vislang.singlestream.model``; this file adds what Pixel-BERT adds:

* **Pixel feature embedding** (Sec. 2.2): every pixel feature gets a learned *visual modality* (semantic)
  embedding s_v added, so the Transformer can tell pixels from words. No 2-D position embedding (the paper
  is believed to add none; ``position_2d=True`` adds learned row/column embeddings as ClipBERT-style code does).
* **Random Pixel Sampling** (Sec. 2.3): in pre-training only, a fixed number of pixel tokens (100) per image
  is kept, a dropout on visual tokens that also cuts cost. Fine-tuning and inference see every pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vislang.singlestream.model import (
    GridEncoder,
    SingleStreamModel,
    SingleStreamPaper,
    VisualEmbedder,
    VisualTokens,
    build_cnn,
    text_config,
)

__all__ = ["PRESETS", "PixelBERTEmbedder", "PixelBERTPreset", "PixelBERTSpec", "sample_pixels"]


def sample_pixels(valid: Tensor, num_samples: int, per: Literal["image", "batch"] = "image") -> Tensor:
    """Indices (B, k) of the pixels kept by Random Pixel Sampling, sorted, drawn without replacement.

    ``per="image"``: each image draws its own k among its *valid* (non-padding) pixels, k = min(num_samples,
    fewest valid pixels in the batch). ``per="batch"`` (ClipBERT's ``get_random_sample_indices``): one draw for
    the whole batch, among positions valid in every image, so padding is never sampled either.
    """
    b, n = valid.shape
    if per == "batch":
        common = valid.all(0)
        k = min(num_samples, int(common.sum()))
        chosen = torch.multinomial(common.float(), k) if k > 0 else common.new_zeros(0, dtype=torch.long)
        return chosen.sort().values[None].expand(b, -1)
    if per != "image":
        raise ValueError(f"per must be 'image' or 'batch', got {per!r}")
    k = min(num_samples, int(valid.sum(1).min()))
    return torch.multinomial(valid.float(), k).sort(1).values  # zero weight: padding is never drawn


class PixelBERTEmbedder(VisualEmbedder):
    """Flattened pixel features + visual modality embedding s_v (+ optional 2-D positions), LN, then RPS.

    Args:
        dim: Transformer width.
        num_samples: Pixels kept per image in pre-training (paper / ClipBERT: 100); 0 disables sampling.
        sample_per: ``image`` (own indices per image) or ``batch`` (ClipBERT: shared indices).
        position_2d: Add learned row/column embeddings (ClipBERT-style code; not in the paper).
        max_grid: Largest grid side for the 2-D embeddings.
    """

    def __init__(
        self,
        dim: int,
        num_samples: int = 100,
        sample_per: Literal["image", "batch"] = "image",
        position_2d: bool = False,
        max_grid: int = 64,
    ) -> None:
        super().__init__()
        if sample_per not in ("image", "batch"):
            raise ValueError(f"sample_per must be 'image' or 'batch', got {sample_per!r}")
        self.num_samples, self.sample_per = num_samples, sample_per
        self.modality = nn.Parameter(torch.zeros(dim))  # s_v of Sec. 2.2
        nn.init.normal_(self.modality, std=0.02)
        self.rows = nn.Embedding(max_grid, dim) if position_2d else None
        self.cols = nn.Embedding(max_grid, dim) if position_2d else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, grid: Tensor, valid: Tensor, pretraining: bool = False) -> VisualTokens:
        b, d, h, w = grid.shape
        x = grid.flatten(2).transpose(1, 2) + self.modality.to(grid.dtype)  # every pixel gets s_v
        if self.rows is not None and self.cols is not None:
            pos = self.rows.weight[:h, None] + self.cols.weight[None, :w]  # (h, w, D)
            x = x + pos.reshape(1, h * w, d).to(x.dtype)
        x = self.norm(x)
        mask = valid.flatten(1)
        extras: dict[str, Tensor] = {}
        if pretraining and self.training and self.num_samples > 0:  # Sec. 2.3: pre-training only
            index = sample_pixels(mask, self.num_samples, self.sample_per)
            x = x.gather(1, index[..., None].expand(-1, -1, d))
            mask = mask.gather(1, index)
            extras["pixel_index"] = index
        return VisualTokens(x, mask, extras)


@dataclass(frozen=True)
class PixelBERTPreset:
    """A named Pixel-BERT size: CNN layout and BERT depth/width (None layers = the tiny BERT)."""

    cnn: str
    layers: int | None
    hidden: int
    heads: int


PRESETS: dict[str, PixelBERTPreset] = {
    "pixelbert_r50": PixelBERTPreset("resnet50", 12, 768, 12),  # paper: ResNet-50 + BERT-base
    "pixelbert_x152": PixelBERTPreset("resnext152_32x8d", 12, 768, 12),  # paper: ResNeXt-152 + BERT-base
    "tiny": PixelBERTPreset("tiny", None, 64, 2),  # demos and tests
}


@dataclass(frozen=True)
class PixelBERTSpec(SingleStreamPaper):
    """Pixel-BERT's part of the single-stream model (``paper:`` of ``PixelBERTModule``): the preset, the pixel
    embedding and Random Pixel Sampling.

    Args:
        preset: ``pixelbert_r50``, ``pixelbert_x152`` (paper) or ``tiny`` (demos/tests).
        num_samples: Random Pixel Sampling size in pre-training (100); 0 = off.
        sample_per: ``image`` or ``batch`` (ClipBERT's shared indices).
        position_2d: Learned row/column embeddings on pixels (ClipBERT-style code, not the paper).
        neck: ``soho`` (2x2 max-pool, 1x1 conv + BN, as the shared core) or ``clipbert`` (ClipBERT's grid
            encoder: 3x3 conv, 2x2 max-pool, ReLU); with ``position_2d=True`` the visual side is ClipBERT's.
        neck_relu: ReLU after the ``soho`` neck's BN, on by default here: Pixel-BERT has no official code, and
            its demo learns retrieval with it (text->image R@1 4.0 without, below the 5x-chance bar).
        mlm_on_negatives: Also train MLM on ITM-negative captions (Pixel-BERT, as UNITER / ViLT: False).
    """

    preset: Literal["pixelbert_r50", "pixelbert_x152", "tiny"] = "pixelbert_r50"
    num_samples: int = 100
    sample_per: Literal["image", "batch"] = "image"
    position_2d: bool = False
    neck: Literal["soho", "clipbert"] = "soho"
    neck_relu: bool = True
    mlm_on_negatives: bool = False

    def build(self, tokenizer: Any, num_answers: int = 3129) -> SingleStreamModel:
        """Pixel-BERT of the preset with the tokenizer's vocabulary (under ``torch.device("meta")`` to size it)."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown Pixel-BERT preset {self.preset!r}; choose from {sorted(PRESETS)}")
        p = PRESETS[self.preset]
        config = text_config(tokenizer, p.layers, p.hidden, p.heads)
        embedder = PixelBERTEmbedder(p.hidden, self.num_samples, self.sample_per, self.position_2d)
        encoder = GridEncoder(build_cnn(p.cnn), p.hidden, neck_relu=self.neck_relu, neck_type=self.neck)
        return SingleStreamModel(encoder, embedder, config, num_answers)
