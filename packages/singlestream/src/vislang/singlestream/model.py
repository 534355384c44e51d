"""The single-stream core of SOHO and Pixel-BERT: CNN grid features appended after BERT's text embeddings.

Both papers (SOHO, Huang et al. CVPR 2021; Pixel-BERT, Huang et al. 2020) replace a region detector by a
whole-image CNN trained end to end with the Transformer:

    text  : [CLS] w_1 ... w_n [SEP]  -> BERT embeddings (word + position + token type 0, LN)
    image : ResNet C5 -> 2x2 max-pool -> 1x1 conv to the hidden size -> paper-specific visual embedding
    fusion: BERT encoder over cat[text embeddings, visual tokens] with mask cat[text mask, visual mask]

What differs between the papers is only the *visual embedding* (SOHO: visual dictionary + 2-D sine
positions + masked visual modelling; Pixel-BERT: a modality embedding + random pixel sampling), so the
model here takes it as a module (``VisualEmbedder``) and the packages supply theirs.

The heads every downstream task needs live here too: MLM (tied to the word embeddings), ITM (also the
retrieval score), VQA (3129-way soft-score BCE), NLVR2 (two image-sentence pairs) and SNLI-VE (three-way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

from vislang.shared.losses import IGNORE_INDEX

__all__ = [
    "CNN_ARCHS",
    "GridEncoder",
    "ITMHead",
    "MLMHead",
    "NLVR2Head",
    "SNLIVEHead",
    "SingleStreamModel",
    "SingleStreamPaper",
    "VQAHead",
    "VisualEmbedder",
    "VisualTokens",
    "bert_base_config",
    "build_cnn",
    "itm_loss",
    "mlm_loss",
    "vqa_loss",
]

# --------------------------------------------------------------------------------------------------------
# Visual encoder: a torchvision ResNet / ResNeXt trunk up to C5, then SOHO's neck
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResNetLayout:
    """A torchvision ``ResNet``'s constructor arguments: block type, blocks per stage, ResNeXt grouping."""

    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64


CNN_ARCHS: dict[str, ResNetLayout] = {
    # The papers' backbones (ImageNet-pretrained there; random here, weights are never downloaded).
    "resnet50": ResNetLayout(Bottleneck, (3, 4, 6, 3)),  # Pixel-BERT R50
    "resnet101": ResNetLayout(Bottleneck, (3, 4, 23, 3)),  # SOHO
    "resnext152_32x8d": ResNetLayout(Bottleneck, (3, 8, 36, 3), groups=32, width_per_group=8),  # X152
    "resnet18": ResNetLayout(BasicBlock, (2, 2, 2, 2)),  # the official SOHO release
}
TINY_CNN = "tiny"
"""Demo/test size: timm's ``ResNet`` class (torchvision's hard-codes the 64..512 widths) with one basic
block per stage, widths 16-32-64-128 and output stride 8 (stages 3-4 dilated), so a 64-pixel synthetic
image still gives a 4x4 grid after the 2x2 pool, at ~1/50 of ResNet-18's compute at that size."""


def build_cnn(arch: str) -> nn.Module:
    """A ResNet trunk of the named layout (``CNN_ARCHS`` or ``tiny``); random weights, no download."""
    if arch == TINY_CNN:
        from timm.models.resnet import BasicBlock as TimmBasicBlock
        from timm.models.resnet import ResNet as TimmResNet

        return TimmResNet(
            TimmBasicBlock, [1, 1, 1, 1], num_classes=0, channels=(16, 32, 64, 128), stem_width=16, output_stride=8
        )
    if arch not in CNN_ARCHS:
        raise ValueError(f"unknown CNN arch {arch!r}; choose from {sorted([*CNN_ARCHS, TINY_CNN])}")
    layout = CNN_ARCHS[arch]
    return ResNet(layout.block, list(layout.layers), groups=layout.groups, width_per_group=layout.width_per_group)


class GridEncoder(nn.Module):
    """ResNet C5 grid features -> a neck to the Transformer width at stride 64.

    ``neck_type="soho"`` (official ``necks.py``): max-pool C5 by 2 (total stride 64 for a plain ResNet), then
    a 1x1 ``ConvModule`` with BN and no activation (the config gives none). Both steps act per position, so
    pooling first only saves compute. ``neck_type="clipbert"`` (ClipBERT's ``GridFeatBackbone.grid_encoder``,
    jayleicn/ClipBERT ``src/modeling/grid_feat.py``, the Pixel-BERT-style neck of its code): a bias-free 3x3
    conv on C5, then the 2x2 max-pool, then ReLU; no BN.

    Args:
        cnn: A torchvision (or timm) ResNet; its stem and four stages are used, pooling and ``fc`` dropped.
        hidden: Output channels (the Transformer's hidden size).
        frozen_stages: Freeze the stem and the first ``frozen_stages`` stages (SOHO freezes 1); -1 = none.
        neck_relu: A ReLU after the BN of the SOHO neck (not in the official SOHO neck; False restores it).
        neck_type: ``soho`` or ``clipbert`` (above).
        valid_mask: How padding in pixels becomes padding in grid cells: ``covered`` (a cell is valid when
            any real pixel lies under it) or ``official`` (SOHO's ``get_vis_mask``: an H x H mask, i.e. the
            padded *height* used as width, resized to the grid by nearest neighbour -- a bug on non-square
            batches, kept for parity tests).
    """

    def __init__(
        self,
        cnn: nn.Module,
        hidden: int,
        frozen_stages: int = -1,
        neck_relu: bool = False,
        valid_mask: Literal["covered", "official"] = "covered",
        neck_type: Literal["soho", "clipbert"] = "soho",
    ) -> None:
        super().__init__()
        if valid_mask not in ("covered", "official"):
            raise ValueError(f"valid_mask must be 'covered' or 'official', got {valid_mask!r}")
        if neck_type not in ("soho", "clipbert"):
            raise ValueError(f"neck_type must be 'soho' or 'clipbert', got {neck_type!r}")
        activation = cnn.relu if hasattr(cnn, "relu") else cnn.act1  # torchvision / timm naming
        self.trunk = nn.Sequential(
            cnn.conv1, cnn.bn1, activation, cnn.maxpool, cnn.layer1, cnn.layer2, cnn.layer3, cnn.layer4
        )
        channels = cnn.num_features if hasattr(cnn, "num_features") else cnn.fc.in_features
        self.out_channels = channels
        self.neck_type = neck_type
        if neck_type == "soho":
            layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden)]
            self.proj = nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if neck_relu else []))
        else:  # ClipBERT: conv3x3 (no bias) -> MaxPool2d(2, 2) -> ReLU; its state-dict keys are these indices too
            self.proj = nn.Sequential(
                nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.MaxPool2d(2, 2), nn.ReLU(inplace=True)
            )
        self.valid_mask = valid_mask
        self.frozen_stages = frozen_stages
        if frozen_stages >= 0:
            for module in list(self.trunk)[: 4 + frozen_stages]:
                for parameter in module.parameters():
                    parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> GridEncoder:
        super().train(mode)
        # Frozen stages keep their (ImageNet) BN statistics, as mmdet's ``frozen_stages`` does.
        if self.frozen_stages >= 0:
            for module in list(self.trunk)[: 4 + self.frozen_stages]:
                module.eval()
        return self

    def neck(self, c5: Tensor) -> Tensor:
        """C5 (B, C, H/32, W/32) -> the grid (B, D, H/64, W/64): pool then 1x1 conv + BN (SOHO), or 3x3 conv,
        pool, ReLU (ClipBERT)."""
        if self.neck_type == "clipbert":
            return self.proj(c5)
        return self.proj(F.max_pool2d(c5, kernel_size=2, stride=2))

    def valid_cells(self, pixel_mask: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, h, w) bool validity of the grid cells from ``pixel_mask`` (B, H, W), True on real pixels."""
        if self.valid_mask == "official":  # H x H mask (height as width), nearest resize (do-not-replicate 1)
            height = pixel_mask.shape[1]
            square = F.pad(pixel_mask[:, :, :height].float(), (0, max(height - pixel_mask.shape[2], 0)))
            return F.interpolate(square[:, None], size=size)[:, 0] > 0
        return F.adaptive_max_pool2d(pixel_mask[:, None].float(), size)[:, 0] > 0

    def forward(self, images: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``images`` (B, 3, H, W), ``pixel_mask`` (B, H, W) True on real pixels (False on padding).

        Returns ``(grid (B, D, h, w), valid (B, h, w) bool)``.
        """
        grid = self.neck(self.trunk(images))
        if pixel_mask is None:
            valid = torch.ones(grid.shape[0], *grid.shape[2:], dtype=torch.bool, device=grid.device)
        else:
            valid = self.valid_cells(pixel_mask, grid.shape[2:])
        return grid, valid


# --------------------------------------------------------------------------------------------------------
# The fusion Transformer
# --------------------------------------------------------------------------------------------------------


@dataclass
class VisualTokens:
    """What a ``VisualEmbedder`` hands to the Transformer.

    Attributes:
        tokens: ``(B, N, D)`` visual token embeddings.
        mask: ``(B, N)`` bool, True on tokens to attend to.
        extras: Paper-specific outputs (SOHO: dictionary indices and MVM labels; Pixel-BERT: sampled indices).
    """

    tokens: Tensor
    mask: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class VisualEmbedder(nn.Module):
    """Interface: ``forward(grid (B, D, h, w), valid (B, h, w), pretraining: bool) -> VisualTokens``.

    The identity embedder below (flatten, no extra embedding) is SOHO's *VQA* neck (``SimpleVDforVQA``
    bypasses the dictionary); the packages subclass it.
    """

    def forward(self, grid: Tensor, valid: Tensor, pretraining: bool = False) -> VisualTokens:
        return VisualTokens(grid.flatten(2).transpose(1, 2), valid.flatten(1))


def bert_base_config(vocab_size: int = 30522, **overrides: Any) -> Any:
    """``bert-base-uncased``'s configuration (12 layers, 768 wide, 12 heads), built without a download."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, **overrides)  # BertConfig's defaults are bert-base's


def text_config(tokenizer: Any, layers: int | None, hidden: int, heads: int) -> Any:
    """The BERT configuration of a preset: ``layers=None`` is the 2-layer tiny BERT of demos and tests,
    otherwise a BERT-base-shaped configuration with the tokenizer's vocabulary.

    The tiny BERT starts from init std 0.05 instead of BERT's 0.02: trained from scratch at width 64, attention
    logits (products of two such weights) stay near uniform for hundreds of steps at 0.02, and the cross-modal
    ranking of the demos learned about twice as fast with 0.05 (top-1 of 8 captions after 400 steps: 0.31
    -> 0.50). The paper presets keep 0.02 (they start from BERT weights in practice)."""
    if layers is None:
        from vislang.shared.text import tiny_bert_config

        return tiny_bert_config(tokenizer, hidden=hidden, layers=2, heads=heads, initializer_range=0.05)
    return bert_base_config(
        len(tokenizer),
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        pad_token_id=tokenizer.pad_token_id or 0,
    )


class SingleStreamModel(nn.Module):
    """CNN + visual embedder + BERT over ``cat[text, visual]``, with the pre-training and task heads.

    Args:
        encoder: The grid encoder (its output width must equal the BERT hidden size).
        embedder: The paper's visual embedding.
        bert_config: A ``transformers.BertConfig``; the text embeddings and encoder are BERT's
            (``BertModel`` without pooler: the papers' heads read the [CLS] output directly).
        num_answers: VQA answer vocabulary size (3129 on VQA v2).
    """

    def __init__(
        self, encoder: GridEncoder, embedder: VisualEmbedder, bert_config: Any, num_answers: int = 3129
    ) -> None:
        super().__init__()
        from transformers import BertModel

        self.encoder = encoder
        self.embedder = embedder
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.config = bert_config
        hidden = bert_config.hidden_size
        self.mlm_head = MLMHead(self.bert.embeddings.word_embeddings)
        self.itm_head = ITMHead(hidden)
        self.vqa_head = VQAHead(hidden, num_answers)
        self.nlvr2_head = NLVR2Head(hidden)
        self.snli_ve_head = SNLIVEHead(hidden)

    def encode_image(self, images: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """CNN grid features, computed once per image (retrieval pairs one image with many texts)."""
        return self.encoder(images, pixel_mask)

    def embed_visual(self, grid: Tensor, valid: Tensor, pretraining: bool = False) -> VisualTokens:
        return self.embedder(grid, valid, pretraining)

    def fuse(self, input_ids: Tensor, text_mask: Tensor, visual: VisualTokens) -> Tensor:
        """BERT over ``cat[text embeddings, visual tokens]`` (SOHO ``VLBert``): returns (B, L + N, D).

        Text gets BERT's word + position + token-type-0 embeddings; the visual tokens enter as they are
        (their own embeddings were added by the embedder), and the attention mask is ``cat[text, visual]``.
        """
        text = self.bert.embeddings(input_ids=input_ids)
        hidden = torch.cat([text, visual.tokens.to(text.dtype)], dim=1)
        mask = torch.cat([text_mask.bool(), visual.mask.bool()], dim=1)
        # additive (B, 1, 1, L + N) mask, as BERT's eager and SDPA attention both accept (and meta tensors allow)
        attention = (~mask)[:, None, None, :].to(hidden.dtype) * torch.finfo(hidden.dtype).min
        return self.bert.encoder(hidden, attention_mask=attention).last_hidden_state

    def forward(
        self,
        input_ids: Tensor,
        text_mask: Tensor,
        images: Tensor,
        pixel_mask: Tensor | None = None,
        pretraining: bool = False,
    ) -> tuple[Tensor, VisualTokens]:
        """One pass over image-text pairs: returns the fused hidden states and the visual tokens used."""
        grid, valid = self.encode_image(images, pixel_mask)
        visual = self.embed_visual(grid, valid, pretraining)
        return self.fuse(input_ids, text_mask, visual), visual


@dataclass(frozen=True)
class SingleStreamPaper:
    """What a paper adds to the single-stream core, as one typed ``SingleStreamModule`` argument (``paper:``).

    A paper package subclasses it with a frozen dataclass of its preset and visual-embedding switches
    (``vislang.soho.model.SOHOSpec``, ``vislang.pixelbert.model.PixelBERTSpec``) and implements ``build``;
    its module types ``paper`` with that dataclass, so the CLI shows (and a config sets) each switch as
    ``model.init_args.paper.<field>``, documented in ``--model.help``.

    Attributes:
        mlm_on_negatives: Also train MLM on ITM-negative captions (official SOHO code: True; Pixel-BERT,
            UNITER, ViLT: False).
    """

    mlm_on_negatives: bool = True

    def build(self, tokenizer: Any, num_answers: int) -> SingleStreamModel:
        """The paper's model of its preset with the tokenizer's vocabulary and a VQA head of ``num_answers``."""
        raise NotImplementedError(f"{type(self).__name__} does not build a model")

    def load_official(self, model: SingleStreamModel) -> None:
        """Load the paper's released weights into ``model`` when the spec names a file (SOHO:
        ``official_weights``); after the ImageNet / BERT starts, before ``init_weights``. Default: none."""


# --------------------------------------------------------------------------------------------------------
# Heads and their losses
# --------------------------------------------------------------------------------------------------------


class MLMHead(nn.Module):
    """SOHO's MLM head: a bias-free linear map to the vocabulary whose weight *is* the word embedding."""

    def __init__(self, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.word_embeddings = word_embeddings  # shared, not copied: the weights are tied

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden @ self.word_embeddings.weight.t()


class ITMHead(nn.Module):
    """Image-text matching on the [CLS] output (SOHO: ``Linear(D, 2, bias=False)``, no pooler).

    Class 1 = matched. Retrieval ranks pairs by ``score`` = logit(match) - logit(mismatch).
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, 2, bias=False)

    def forward(self, cls: Tensor) -> Tensor:
        return self.fc(cls)

    def score(self, cls: Tensor) -> Tensor:
        logits = self.fc(cls)
        return logits[:, 1] - logits[:, 0]


class VQAHead(nn.Module):
    """SOHO's VQA head on [CLS]: Linear(D, 4D) -> ReLU -> Dropout(0.5) -> Linear(4D, answers)."""

    def __init__(self, hidden: int, num_answers: int = 3129) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4 * hidden, num_answers)
        )

    def forward(self, cls: Tensor) -> Tensor:
        return self.mlp(cls)


class NLVR2Head(nn.Module):
    """NLVR2 from two (image, sentence) passes: their [CLS] vectors concatenated, MLP to True/False.

    Order matters (left image first), as in ViLT's pair setting; the classifier is not symmetric.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(), nn.Linear(2 * hidden, 2)
        )

    def forward(self, cls_left: Tensor, cls_right: Tensor) -> Tensor:
        return self.mlp(torch.cat([cls_left, cls_right], dim=-1))


class SNLIVEHead(nn.Module):
    """SNLI-VE: MLP on [CLS] to (contradiction, neutral, entailment)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(inplace=True), nn.Linear(2 * hidden, 3))

    def forward(self, cls: Tensor) -> Tensor:
        return self.mlp(cls)


def mlm_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """SOHO's MLM loss: summed CE over masked tokens / (#masked + 1e-6); also returns the accuracy."""
    flat, target = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    masked = target != IGNORE_INDEX
    loss = F.cross_entropy(flat.float(), target, ignore_index=IGNORE_INDEX, reduction="sum") / (masked.sum() + 1e-6)
    accuracy = (flat[masked].argmax(-1) == target[masked]).float().mean() if masked.any() else loss.new_zeros(())
    return loss, accuracy


def itm_loss(logits: Tensor, matched: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the ITM classifier (label 1 = matched) and its accuracy."""
    loss = F.cross_entropy(logits.float(), matched.long())
    return loss, (logits.argmax(-1) == matched.long()).float().mean()


def vqa_loss(logits: Tensor, soft_targets: Tensor) -> Tensor:
    """``BCEWithLogits(mean over B x A) x A`` (BAN / ViLT / SOHO): summed over answers, mean over the batch."""
    return F.binary_cross_entropy_with_logits(logits.float(), soft_targets) * soft_targets.shape[1]
