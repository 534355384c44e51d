"""SOHO ("Seeing Out of tHe bOx", Huang et al., CVPR 2021): the visual dictionary and masked visual modelling.

The single-stream core (ResNet grid features after BERT's text embeddings, MLM/ITM and task heads) is
``vislang.singlestream.model``; this file adds what the paper adds:

* **Visual dictionary (VD)**, Sec. 3.2: K learnable-by-EMA code vectors d_j. Each grid feature v is mapped
  to its nearest code h(v) = argmin_j ||v - d_j||, the codes follow the features they are assigned by a
  moving average, and the gradient passes straight through: f(v) = sg[d_{h(v)} - v] + v.
* **Masked Visual Modelling (MVM)**, Sec. 3.3: pick a dictionary index and mask *every* position of the
  image carrying it (a whole "visual word" region, so neighbours cannot leak it), then predict the index
  from the Transformer output.

Everything follows the official code (``researchmm/soho``) except where the reference's do-not-replicate
list says otherwise; each deviation is a switch (see the package README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vislang.shared.distributed import is_distributed, world_size
from vislang.shared.losses import IGNORE_INDEX
from vislang.singlestream.model import (
    GridEncoder,
    SingleStreamModel,
    SingleStreamPaper,
    VisualEmbedder,
    VisualTokens,
    build_cnn,
    text_config,
)

__all__ = ["PRESETS", "SOHOEmbedder", "SOHOPreset", "SOHOSpec", "VisualDictionary", "mvm_logits"]


class VisualDictionary(nn.Module):
    """SOHO's visual dictionary: nearest-code quantisation with an EMA (Laplace-smoothed) code update.

    Buffers (not parameters; no gradient ever reaches them), as the official ``SOHO_Pre_VD``: ``embed``
    (K, D) ~ N(0, 1), ``cluster_size`` (K,), ``embed_avg`` (K, D) and ``cluster_sum`` (K,, total assignments
    ever), all but ``embed`` starting at zero; plus ``updates`` (EMA steps taken, for the ramp). One training
    step with decay g:

        n_j = sum_x 1[h(x) = j],  s_j = sum_x 1[h(x) = j] x          (summed over all processes)
        cluster_size <- g cluster_size + (1 - g) n;   embed_avg <- g embed_avg + (1 - g) s
        N = sum_j cluster_size_j;   c_j = (cluster_size_j + eps) / (N + K eps) * N      (Laplace smoothing)
        embed_j = embed_avg_j / c_j

    A code that has never received a feature keeps ``embed_avg_j = 0`` and so becomes the zero vector after
    the first update, as in the official code (``restart_dead`` re-seeds such codes instead).

    Args:
        num_tokens: K (2048 in the paper and the official config).
        dim: D, the Transformer width (768).
        decay: g, the EMA momentum (official config 0.4, constant).
        decay_ramp: Use g_t = min(decay * t, max_decay) at the t-th update -- the ramp the official code
            defines (``set_decay_updates``) but never calls. False = constant ``decay`` as the code runs.
        max_decay: Upper end of the ramp (0.99).
        eps: Laplace smoothing epsilon (1e-5).
        quantize_from: Which table the training-mode output reads: ``updated`` (official: the codes are
            looked up in the table before the update, the vectors returned come from the table after it) or
            ``lookup`` (the vectors of the table the codes were chosen in). Eval mode has no update.
        restart_dead: After each update, re-seed codes whose ``cluster_size`` fell below
            ``dead_threshold`` with random features of the batch (not in the official code, where an
            unassigned code decays to the zero vector). Under DDP rank 0 picks and broadcasts.
        dead_threshold: ``cluster_size`` below which a code counts as dead.
    """

    def __init__(
        self,
        num_tokens: int = 2048,
        dim: int = 768,
        decay: float = 0.4,
        decay_ramp: bool = False,
        max_decay: float = 0.99,
        eps: float = 1e-5,
        quantize_from: Literal["updated", "lookup"] = "updated",
        restart_dead: bool = False,
        dead_threshold: float = 1e-3,
    ) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0 or not 0.0 <= max_decay <= 1.0:
            raise ValueError(f"decay and max_decay must be in [0, 1], got {decay} and {max_decay}")
        if quantize_from not in ("updated", "lookup"):
            raise ValueError(f"quantize_from must be 'updated' or 'lookup', got {quantize_from!r}")
        self.num_tokens, self.dim = num_tokens, dim
        self.decay, self.decay_ramp, self.max_decay, self.eps = decay, decay_ramp, max_decay, eps
        self.quantize_from = quantize_from
        self.restart_dead, self.dead_threshold = restart_dead, dead_threshold
        self.register_buffer("embed", torch.randn(num_tokens, dim))
        self.register_buffer("cluster_size", torch.zeros(num_tokens))
        self.register_buffer("embed_avg", torch.zeros(num_tokens, dim))
        self.register_buffer("cluster_sum", torch.zeros(num_tokens))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay of the next update: constant, or the ramp min(decay * t, max_decay) at update t."""
        if not self.decay_ramp:
            return self.decay
        return min(self.decay * (int(self.updates) + 1), self.max_decay)

    def lookup(self, x: Tensor) -> Tensor:
        """Nearest code of each row of ``x`` (N, D): argmin_j ||x||^2 - 2 x.d_j + ||d_j||^2."""
        distance = x.pow(2).sum(1, keepdim=True) - 2 * x @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return distance.argmin(1)

    @torch.no_grad()
    def ema_update(self, x: Tensor, index: Tensor) -> None:
        """One EMA step from features ``x`` (N, D) assigned to codes ``index`` (N,), summed over processes."""
        x = x.float()
        onehot = F.one_hot(index, self.num_tokens).type_as(x)
        counts, sums = onehot.sum(0), onehot.t() @ x
        if is_distributed():  # = SOHO's concat_all_gather followed by the sum
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        decay = self.current_decay()
        self.cluster_sum.add_(counts)
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_tokens * self.eps) * total
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        if self.restart_dead:
            self._restart(x)
        if is_distributed():  # the official code's final all_reduce(embed / world_size): copies stay identical
            dist.all_reduce(self.embed.div_(world_size()))
        self.updates += 1

    def _restart(self, x: Tensor) -> None:
        dead = torch.nonzero(self.cluster_size < self.dead_threshold).flatten()
        if len(dead) and len(x):
            picks = x[torch.randint(len(x), (len(dead),), device=x.device)]
            self.embed[dead] = picks
            self.embed_avg[dead] = picks * self.cluster_size[dead, None].clamp_min(self.eps)
        if is_distributed():
            for buffer in (self.embed, self.embed_avg, self.cluster_size):
                dist.broadcast(buffer, src=0)

    def forward(self, x: Tensor, update_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Quantise ``x`` (N, D): returns (f(x) = sg[d_h(x) - x] + x, h(x)).

        In training mode the dictionary is then updated from the rows where ``update_mask`` is True
        (default all). The codes h(x) are the pre-update ones; the vectors d come from the table after the
        update unless ``quantize_from="lookup"``.
        """
        index = self.lookup(x.detach().float())
        quantized = self.embed[index].to(x.dtype)
        if self.training:
            keep = update_mask if update_mask is not None else torch.ones_like(index, dtype=torch.bool)
            self.ema_update(x.detach()[keep], index[keep])
            if self.quantize_from == "updated":
                quantized = self.embed[index].to(x.dtype)
        return x + (quantized - x).detach(), index


class SOHOEmbedder(VisualEmbedder):
    """SOHO's visual embedding (official ``SimpleVDforPreGate``): VD -> align -> mix -> MVM mask -> 2-D sine + LN.

    Args:
        dim: Transformer width.
        dictionary: The visual dictionary.
        visual_input: What the Transformer sees: ``gate`` (official code: a softmax gate mixes the
            quantised and raw features), ``sum`` (quantised + raw, official non-gate neck) or ``quantized``
            (the paper's f(v) alone).
        gate_norm: The gate's scores are a bias-free 1x1 projection followed by BatchNorm (official
            ``gate_fc``, a ``ConvModule`` with SyncBN); False = a plain ``Linear`` with bias.
        dictionary_downstream: Use the VD in fine-tuning too. The official VQA neck bypasses it (raw
            features + position + LN); True keeps the pre-trained input distribution.
        mvm_mask_prob: Probability that an image gets its visual word masked (official 0.015, per image).
        mvm_anchor: ``batch`` (official: one position drawn for the whole batch, each image masks the index
            found there) or ``image`` (one valid position per image).
        vd_statistics: Which positions update the dictionary: ``valid`` (real image cells only) or ``all``
            (official: padding cells too).
    """

    def __init__(
        self,
        dim: int,
        dictionary: VisualDictionary,
        visual_input: Literal["gate", "sum", "quantized"] = "gate",
        dictionary_downstream: bool = True,
        mvm_mask_prob: float = 0.015,
        mvm_anchor: Literal["batch", "image"] = "batch",
        gate_norm: bool = True,
        vd_statistics: Literal["valid", "all"] = "valid",
    ) -> None:
        super().__init__()
        from transformers.models.detr.modeling_detr import DetrSinePositionEmbedding

        if visual_input not in ("gate", "sum", "quantized"):
            raise ValueError(f"visual_input must be gate, sum or quantized, got {visual_input!r}")
        if mvm_anchor not in ("batch", "image"):
            raise ValueError(f"mvm_anchor must be 'batch' or 'image', got {mvm_anchor!r}")
        if vd_statistics not in ("valid", "all"):
            raise ValueError(f"vd_statistics must be 'valid' or 'all', got {vd_statistics!r}")
        self.dictionary = dictionary
        self.visual_input, self.dictionary_downstream = visual_input, dictionary_downstream
        self.mvm_mask_prob, self.mvm_anchor, self.vd_statistics = mvm_mask_prob, mvm_anchor, vd_statistics
        self.align = nn.Linear(dim, dim)  # official ``pos_line`` on the quantised features
        self.gate: nn.Module | None = None
        if visual_input == "gate":  # scores of (quantised, raw) per position, softmax-ed in forward
            self.gate = GateScores(dim) if gate_norm else nn.Linear(2 * dim, 2)
        self.mask_embedding = nn.Parameter(torch.zeros(dim))  # official nn.Embedding(1, D)
        nn.init.normal_(self.mask_embedding, std=0.02)
        # DETR's normalised 2-D sine encoding, D/2 features per axis (official ``pos_feat_dim = 768 // 2``)
        self.position = DetrSinePositionEmbedding(num_position_features=dim // 2, normalize=True)
        self.norm = nn.LayerNorm(dim)

    def draw_anchor(self, valid: Tensor) -> Tensor:
        """MVM's anchor position per image (B,): one uniform position for the batch, or a valid one per image."""
        b, n = valid.shape
        if self.mvm_anchor == "batch":
            return torch.randint(n, (1,), device=valid.device).expand(b)
        return torch.multinomial(valid.float() + 1e-12, 1).squeeze(1)

    def mvm_mask(self, index: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """MVM's mask and labels from dictionary indices ``index`` (B, N) and ``valid`` (B, N).

        Per image b an anchor position gives the target index t_b; every valid position with index t_b is
        masked, with probability ``mvm_mask_prob`` per image. Labels are the indices there, -100 elsewhere.
        """
        b = index.shape[0]
        anchor = self.draw_anchor(valid)
        target = index.gather(1, anchor[:, None])
        chosen = torch.rand(b, 1, device=index.device) < self.mvm_mask_prob
        mask = (index == target) & valid & chosen & valid.gather(1, anchor[:, None])
        return mask, torch.where(mask, index, torch.full_like(index, IGNORE_INDEX))

    def forward(self, grid: Tensor, valid: Tensor, pretraining: bool = False) -> VisualTokens:
        b, d, h, w = grid.shape
        x = grid.flatten(2).transpose(1, 2)  # (B, N, D)
        flat_valid = valid.flatten(1)
        extras: dict[str, Tensor] = {}
        if pretraining or self.dictionary_downstream:
            update = flat_valid.reshape(-1) if self.vd_statistics == "valid" else None
            quantized, index = self.dictionary(x.reshape(-1, d), update)  # Sec. 3.2, f(v) = sg[d_h(v) - v] + v
            quantized, index = self.align(quantized.view(b, -1, d)), index.view(b, -1)
            extras["vd_index"] = index
            if self.gate is not None:  # softmax gate over (quantised, raw)
                weights = self.gate(torch.cat([quantized, x], dim=-1)).softmax(-1)
                x = quantized * weights[..., :1] + x * weights[..., 1:]
            elif self.visual_input == "sum":
                x = quantized + x
            else:
                x = quantized
            if pretraining and self.training and self.mvm_mask_prob > 0:  # Sec. 3.3, MVM
                mask, labels = self.mvm_mask(index, flat_valid)
                x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype).expand_as(x), x)
                extras["mvm_labels"] = labels
        position = self.position(grid.shape, grid.device, grid.dtype, mask=valid)
        x = self.norm(x + position.flatten(2).transpose(1, 2))
        return VisualTokens(x, flat_valid, extras)


class GateScores(nn.Module):
    """The official gate's scores: a bias-free 1x1 projection of cat[quantised, raw] to 2, then BatchNorm.

    BatchNorm normalises each of the two scores over all positions of the batch (padding included, as the
    official ``ConvModule`` on the padded grid does) before the softmax.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, 2, bias=False)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.proj(x)
        return self.norm(scores.reshape(-1, 2)).view_as(scores)


def mvm_logits(visual_hidden: Tensor, dictionary: VisualDictionary, temperature: float = 1.0) -> Tensor:
    """MVM prediction: cosine similarity of the Transformer outputs with the (detached) codes / temperature.

    The official head uses no temperature (1.0), so the logits lie in [-1, 1] and the 2048-way CE cannot
    fall below log(1 + 2047 e^-2) ~ 5.63; a smaller temperature lifts that floor.
    """
    codes = F.normalize(dictionary.embed.detach(), dim=-1)
    return F.normalize(visual_hidden, dim=-1) @ codes.t() / temperature


@dataclass(frozen=True)
class SOHOPreset:
    """A named SOHO size: CNN layout, frozen stages, BERT depth/width and dictionary size."""

    cnn: str
    frozen_stages: int
    layers: int | None  # None = the tiny BERT of vislang.shared.text.tiny_bert_config
    hidden: int
    heads: int
    num_tokens: int


PRESETS: dict[str, SOHOPreset] = {
    "soho_r101": SOHOPreset("resnet101", 1, 12, 768, 12, 2048),  # the paper: ResNet-101 + BERT-base
    "soho_r18": SOHOPreset("resnet18", 1, 3, 768, 12, 2048),  # the official release: ResNet-18 + 3 layers
    "tiny": SOHOPreset("tiny", -1, None, 64, 2, 64),  # demos and tests
}


@dataclass(frozen=True)
class SOHOSpec(SingleStreamPaper):
    """SOHO's part of the single-stream model (``paper:`` of ``SOHOModule``): the preset, the visual dictionary,
    masked visual modelling and their switches (the package README's table says which one is official).

    Args:
        preset: ``soho_r101`` (paper: ResNet-101 + BERT-base), ``soho_r18`` (official release: ResNet-18 +
            3 layers), ``tiny`` (demos/tests).
        vd_decay: Visual-dictionary EMA momentum (official config 0.4).
        vd_decay_ramp: Ramp the momentum as min(vd_decay * t, vd_max_decay) (defined, never called officially).
        vd_max_decay: End of the ramp.
        vd_restart_dead: Re-seed unused codes from batch features (not official; see the README).
        visual_input: ``gate`` (official), ``sum`` or ``quantized`` (paper's f(v) alone).
        dictionary_downstream: Keep the VD in fine-tuning (official VQA neck: False).
        mvm_mask_prob: Per-image probability of masking a visual word (official 0.015).
        mvm_anchor: ``batch`` (official: one anchor position per batch) or ``image``.
        mvm_temperature: Temperature of MVM's cosine logits (official: none = 1.0).
        mvm_weight: Weight of the MVM loss in the sum (official 1).
        vd_quantize_from: ``updated`` (official: training output reads the table after the momentum update)
            or ``lookup``.
        vd_statistics: ``valid`` (padding cells do not update the VD) or ``all`` (official).
        gate_norm: The gate's scores pass a BatchNorm (official ``gate_fc``); False = Linear with bias.
        neck_relu: ReLU after the neck's 1x1 conv + BN (not official).
        valid_mask: ``covered`` or ``official`` (height used as width; a bug, kept for parity).
        mlm_on_negatives: Also train MLM on ITM-negative captions (official SOHO code: True).
        official_weights: A checkpoint of the official SOHO code (``researchmm/soho`` release, preset
            ``soho_r18``) to start from (``vislang.soho.convert``); applied before ``init_weights``.
    """

    preset: Literal["soho_r101", "soho_r18", "tiny"] = "soho_r101"
    vd_decay: float = 0.4
    vd_decay_ramp: bool = False
    vd_max_decay: float = 0.99
    vd_restart_dead: bool = False
    visual_input: Literal["gate", "sum", "quantized"] = "gate"
    dictionary_downstream: bool = True
    mvm_mask_prob: float = 0.015
    mvm_anchor: Literal["batch", "image"] = "batch"
    mvm_temperature: float = 1.0
    mvm_weight: float = 1.0
    vd_quantize_from: Literal["updated", "lookup"] = "updated"
    vd_statistics: Literal["valid", "all"] = "valid"
    gate_norm: bool = True
    neck_relu: bool = False
    valid_mask: Literal["covered", "official"] = "covered"
    mlm_on_negatives: bool = True
    official_weights: str | None = None

    def build(self, tokenizer: Any, num_answers: int = 3129) -> SingleStreamModel:
        """SOHO of the preset with the tokenizer's vocabulary (under ``torch.device("meta")`` to size it)."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown SOHO preset {self.preset!r}; choose from {sorted(PRESETS)}")
        p = PRESETS[self.preset]
        config = text_config(tokenizer, p.layers, p.hidden, p.heads)
        dictionary = VisualDictionary(
            p.num_tokens,
            p.hidden,
            self.vd_decay,
            self.vd_decay_ramp,
            self.vd_max_decay,
            quantize_from=self.vd_quantize_from,
            restart_dead=self.vd_restart_dead,
        )
        embedder = SOHOEmbedder(
            p.hidden,
            dictionary,
            self.visual_input,
            self.dictionary_downstream,
            self.mvm_mask_prob,
            self.mvm_anchor,
            gate_norm=self.gate_norm,
            vd_statistics=self.vd_statistics,
        )
        cnn = build_cnn(p.cnn)
        encoder = GridEncoder(cnn, p.hidden, p.frozen_stages, neck_relu=self.neck_relu, valid_mask=self.valid_mask)
        return SingleStreamModel(encoder, embedder, config, num_answers)

    def load_official(self, model: SingleStreamModel) -> None:
        """``official_weights`` (an official SOHO checkpoint), when given."""
        if self.official_weights:
            from vislang.soho.convert import load_official

            load_official(model, self.official_weights)
