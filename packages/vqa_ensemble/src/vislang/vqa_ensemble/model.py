"""MCAN (Yu et al., "Deep Modular Co-Attention Networks for VQA", CVPR 2019) with a BERT question encoder,
as in the VQA Challenge 2019 runner-up (MSM@MSRA, arXiv 1910.13077).

The entry replaced MCAN's GloVe + LSTM question encoder by BERT's contextual token features (fine-tuned at
their own learning rate, see ``module.py``) and fed stronger region features. The network, top to bottom:

1. question tokens -> BERT -> Linear to the co-attention width ``hidden``           (entry §1: BERT)
2. region (or grid) features -> Linear, + Linear(box geometry)                      (MCAN §4, openvqa bbox)
3. encoder-decoder co-attention: ``layers`` self-attention (SA) layers on the question, then ``layers``
   self-guided-attention (SGA) layers on the image, each attending to the *final* question features
   (MCAN §3.3, the "encoder-decoder" strategy, Fig. 4b)
4. attentional reduction ("AttFlat") of each modality to one vector (MCAN §3.4, eq. 7)
5. LayerNorm(q + v) -> Linear -> one logit per answer; trained with sigmoid + soft scores (MCAN eq. 8-9)

Attention is ``torch.nn.MultiheadAttention`` with key-padding masks: padded words and padded boxes never
receive attention weight. Steps 3-5 (``MCAN.answer_logits``) are checked against the official MCAN code
(MILVLG/mcan-vqa, large config) on the same weights: ``tests/vqa_ensemble/golden``; ``convert.py`` maps
an official state dict onto this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["PRESETS", "Preset", "MCAN", "MCANConfig", "MCANLayerNorm", "AttFlat", "SA", "SGA"]


@dataclass(frozen=True)
class MCANConfig:
    """Co-attention sizes (MCAN ``cfgs/{small,large}_model.yml``: hidden / heads / FF (= 4 hidden) / AttFlat
    output are 512 / 8 / 2048 / 1024 (small) and 1024 / **8** / 4096 / 2048 (large); 6 layers, AttFlat MLP 512,
    one glimpse, dropout 0.1 in both)."""

    hidden: int
    heads: int
    layers: int
    ff: int
    flat_mlp: int
    flat_out: int
    flat_glimpses: int = 1
    dropout: float = 0.1


Preset = Literal["tiny", "small", "large"]
"""MCAN sizes: ``small`` and ``large`` are the paper's (MCAN Table 1), ``tiny`` runs the demo on a CPU."""

PRESETS: dict[Preset, MCANConfig] = {
    "tiny": MCANConfig(hidden=64, heads=4, layers=2, ff=256, flat_mlp=64, flat_out=128),
    "small": MCANConfig(hidden=512, heads=8, layers=6, ff=2048, flat_mlp=512, flat_out=1024),
    "large": MCANConfig(hidden=1024, heads=8, layers=6, ff=4096, flat_mlp=512, flat_out=2048),
}


class MCANLayerNorm(nn.Module):
    """MCAN's layer normalisation: ``w * (x - mean) / (std + eps) + b`` with the *unbiased* standard deviation
    and ``eps`` = 1e-6 added to it (the Annotated-Transformer form MCAN's ``net_utils.LayerNorm`` uses), not
    ``torch.nn.LayerNorm``'s ``(x - mean) / sqrt(var + eps)``; the two differ by about 1e-3 relative."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: Tensor) -> Tensor:
        mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
        return self.weight * (x - mean) / (std + self.eps) + self.bias


class FFN(nn.Module):
    """Position-wise feed-forward: Linear -> ReLU -> Dropout -> Linear (MCAN §3.1)."""

    def __init__(self, hidden: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, ff), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ff, hidden)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SA(nn.Module):
    """Self-attention unit: x = LN(x + MHA(x, x, x)); x = LN(x + FFN(x)) (MCAN §3.1, Fig. 2a)."""

    def __init__(self, c: MCANConfig) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(c.hidden, c.heads, dropout=c.dropout, batch_first=True)
        self.ffn = FFN(c.hidden, c.ff, c.dropout)
        self.drop1, self.drop2 = nn.Dropout(c.dropout), nn.Dropout(c.dropout)
        self.norm1, self.norm2 = MCANLayerNorm(c.hidden), MCANLayerNorm(c.hidden)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        x = self.norm1(x + self.drop1(self.att(x, x, x, key_padding_mask=pad, need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.ffn(x)))


class SGA(nn.Module):
    """Self-guided-attention unit: SA on x, then x attends to the guide y, then FFN (MCAN §3.1, Fig. 2b)."""

    def __init__(self, c: MCANConfig) -> None:
        super().__init__()
        self.self_att = nn.MultiheadAttention(c.hidden, c.heads, dropout=c.dropout, batch_first=True)
        self.guided_att = nn.MultiheadAttention(c.hidden, c.heads, dropout=c.dropout, batch_first=True)
        self.ffn = FFN(c.hidden, c.ff, c.dropout)
        self.drops = nn.ModuleList(nn.Dropout(c.dropout) for _ in range(3))
        self.norms = nn.ModuleList(MCANLayerNorm(c.hidden) for _ in range(3))

    def forward(self, x: Tensor, y: Tensor, x_pad: Tensor, y_pad: Tensor) -> Tensor:
        x = self.norms[0](x + self.drops[0](self.self_att(x, x, x, key_padding_mask=x_pad, need_weights=False)[0]))
        x = self.norms[1](x + self.drops[1](self.guided_att(x, y, y, key_padding_mask=y_pad, need_weights=False)[0]))
        return self.norms[2](x + self.drops[2](self.ffn(x)))


class AttFlat(nn.Module):
    """Attentional reduction (MCAN eq. 7): softmax over tokens of an MLP score, weighted sum, Linear."""

    def __init__(self, c: MCANConfig) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(c.hidden, c.flat_mlp),
            nn.ReLU(inplace=True),
            nn.Dropout(c.dropout),
            nn.Linear(c.flat_mlp, c.flat_glimpses),
        )
        self.merge = nn.Linear(c.hidden * c.flat_glimpses, c.flat_out)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        att = self.score(x).masked_fill(pad.unsqueeze(-1), float("-inf")).softmax(dim=1)  # (B, N, glimpses)
        pooled = torch.einsum("bng,bnd->bgd", att, x).flatten(1)
        return self.merge(pooled)


class MCAN(nn.Module):
    """BERT question encoder + MCAN encoder-decoder + answer classifier.

    Args:
        text_encoder: A ``transformers`` BERT model (returns ``last_hidden_state``).
        num_answers: Size of the answer vocabulary (3129 on VQA v2).
        visual_dim: Dimension of the stored region / grid features.
        config: Co-attention sizes.
        use_boxes: Add a projection of each box's geometry (x1, y1, x2, y2, area) to its feature.
    """

    def __init__(
        self, text_encoder: nn.Module, num_answers: int, visual_dim: int, config: MCANConfig, use_boxes: bool = True
    ) -> None:
        super().__init__()
        c = config
        if c.hidden % c.heads:
            raise ValueError(f"hidden ({c.hidden}) must be divisible by heads ({c.heads})")
        self.config = c
        self.bert = text_encoder
        self.text_proj = nn.Linear(int(text_encoder.config.hidden_size), c.hidden)
        self.visual_proj = nn.Linear(visual_dim, c.hidden)
        self.box_proj = nn.Linear(5, c.hidden) if use_boxes else None
        self.encoder = nn.ModuleList(SA(c) for _ in range(c.layers))
        self.decoder = nn.ModuleList(SGA(c) for _ in range(c.layers))
        self.flat_text, self.flat_image = AttFlat(c), AttFlat(c)
        self.norm = MCANLayerNorm(c.flat_out)
        self.classifier = nn.Linear(c.flat_out, num_answers)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        visual: Tensor,
        visual_mask: Tensor,
        boxes: Tensor | None = None,
    ) -> Tensor:
        """Answer logits (B, num_answers).

        Args:
            input_ids / attention_mask: Tokenised questions (B, L); mask 1 = real token.
            visual: (B, N, visual_dim) features, zero-padded.
            visual_mask: (B, N) bool, True = real box.
            boxes: (B, N, 4) normalised x1 y1 x2 y2 (needed when ``use_boxes``).
        """
        # 1. BERT contextual token features replace GloVe + LSTM (entry §1).
        words = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.answer_logits(self.text_proj(words), attention_mask == 0, visual, visual_mask, boxes)

    def answer_logits(
        self, y: Tensor, y_pad: Tensor, visual: Tensor, visual_mask: Tensor, boxes: Tensor | None = None
    ) -> Tensor:
        """Steps 2-5 from the question features ``y`` (B, L, hidden) onwards: the part MCAN and the entry share
        (official MCAN feeds its LSTM output here). ``y_pad`` (B, L) is True at padded words."""
        # 2. Image features (+ box geometry).
        x, x_pad = self.visual_proj(visual), ~visual_mask
        if self.box_proj is not None:
            if boxes is None:
                raise ValueError("this model uses box geometry: pass boxes")
            area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).unsqueeze(-1)
            x = x + self.box_proj(torch.cat([boxes, area], dim=-1))
        # 3. Encoder-decoder co-attention: the question is encoded first, every image layer is guided by it.
        for layer in self.encoder:
            y = layer(y, y_pad)
        for layer in self.decoder:
            x = layer(x, y, x_pad, y_pad)
        # 4-5. AttFlat each modality, fuse by sum, LayerNorm, classify (MCAN eq. 7-8).
        fused = self.norm(self.flat_text(y, y_pad) + self.flat_image(x, x_pad))
        return self.classifier(fused)

    def co_attention_parameters(self) -> list[nn.Parameter]:
        """Every parameter except BERT's (the optimiser gives BERT its own learning rate)."""
        bert = {id(p) for p in self.bert.parameters()}
        return [p for p in self.parameters() if id(p) not in bert]
