"""Losses that more than one vislang paper uses.

* ``info_nce`` / ``symmetric_info_nce``: contrastive InfoNCE, one-way q->k as in MoCo v3 and CMAE, and
  symmetric image<->text as in CLIP (used by VLAB, SOHO-style alignment heads). Keys are gathered from
  all processes with gradients (``vislang.shared.distributed.gather_with_grad``), so under DDP the loss
  and gradients equal those of one process holding the whole global batch.
* ``sigmoid_bce_loss`` / ``dice_loss``: mask losses on logits as in DETR, Mask2Former, SAM and LISA/PixelLM.
* ``mask_tokens``: BERT's masked-language-model corruption (15%, then 80/10/10), used by SOHO,
  Pixel-BERT and VLAB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from vislang.shared.distributed import gather_with_grad, rank

if TYPE_CHECKING:  # transformers is slow to import; only its type is needed here
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "MaskingIds",
    "dice_loss",
    "info_nce",
    "mask_tokens",
    "sigmoid_bce_loss",
    "symmetric_info_nce",
]

IGNORE_INDEX = -100
"""Label of positions without a target; ``torch.nn.functional.cross_entropy``'s default ``ignore_index``."""


# --------------------------------------------------------------------------------------------------------
# Contrastive
# --------------------------------------------------------------------------------------------------------


def info_nce(
    query: Tensor,
    key: Tensor,
    temperature: float | Tensor = 0.07,
    *,
    negatives: Tensor | None = None,
    gather: bool = True,
) -> Tensor:
    """One-way InfoNCE from queries to keys (MoCo v3 Alg. 1, CMAE Eq. 3).

    Query ``i`` of this rank is positive with the key at the same position of the global batch, i.e.
    global index ``rank * B + i``, and negative with every other gathered key (and every row of
    ``negatives``). The loss is the mean over the *local* queries; see
    ``vislang.shared.distributed.gather_with_grad`` for why that gives full-batch gradients under DDP.

    Args:
        query: ``(B, D)`` local queries. Pass L2-normalised features for cosine similarity (MoCo, CLIP
            normalise before the loss; this function does not, so callers keep control).
        key: ``(B, D)`` local keys, aligned with ``query``. Keys of a momentum encoder may have no grad.
        temperature: Softmax temperature ``tau``; logits are ``q . k / tau``. A tensor keeps it learnable
            (CLIP learns ``logit_scale = 1 / tau``: pass ``1 / logit_scale.exp()``).
        negatives: Optional ``(K, D)`` extra negatives, e.g. MoCo v1/v2's queue; not gathered.
        gather: Gather keys from all processes (in-batch negatives across GPUs, as MoCo v3 and CLIP).
            ``False`` uses only the local keys (positive index ``i``).

    Returns:
        Scalar loss, the cross-entropy of the local queries averaged over the local batch.
    """
    if query.shape[0] != key.shape[0]:
        raise ValueError(f"query and key must have the same batch size, got {query.shape[0]} and {key.shape[0]}")
    all_keys = gather_with_grad(key) if gather else key
    logits = query @ all_keys.t()
    if negatives is not None:
        logits = torch.cat([logits, query @ negatives.t()], dim=1)
    logits = logits / temperature
    # Positives sit on the diagonal of this rank's block of the gathered keys.
    offset = rank() * query.shape[0] if gather else 0
    labels = torch.arange(query.shape[0], device=query.device) + offset
    return F.cross_entropy(logits, labels)


def symmetric_info_nce(a: Tensor, b: Tensor, temperature: float | Tensor = 0.07, *, gather: bool = True) -> Tensor:
    """Symmetric InfoNCE, CLIP's loss: mean of a->b and b->a cross-entropies (CLIP Fig. 3 pseudocode).

    Both sides are gathered across processes, and each rank scores its local rows against all rows of
    the other modality (open_clip's ``local_loss=True, gather_with_grad=True``), which equals the
    full-batch loss with ``world_size`` times less memory for the logits.

    Args:
        a: ``(B, D)`` local embeddings of one modality (e.g. image), L2-normalised.
        b: ``(B, D)`` local embeddings of the other modality (e.g. text), aligned with ``a``.
        temperature: Softmax temperature, see ``info_nce``.
        gather: Use the negatives of all processes.

    Returns:
        Scalar loss ``(info_nce(a, b) + info_nce(b, a)) / 2``.
    """
    return 0.5 * (info_nce(a, b, temperature, gather=gather) + info_nce(b, a, temperature, gather=gather))


# --------------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------------


def _num_masks(logits: Tensor, num_masks: float | Tensor | None) -> float | Tensor:
    return logits.shape[0] if num_masks is None else num_masks


def sigmoid_bce_loss(logits: Tensor, targets: Tensor, num_masks: float | Tensor | None = None) -> Tensor:
    """Per-pixel sigmoid binary cross-entropy of mask logits (DETR/Mask2Former/LISA ``sigmoid_ce_loss``).

    Reduction: mean over the pixels of each mask, then sum over masks divided by ``num_masks`` -- so
    every mask weighs the same whatever its resolution, and under DDP callers can pass the global
    number of masks as DETR does.

    Args:
        logits: ``(N, ...)`` mask logits, one mask per row (any spatial shape).
        targets: Same shape, binary ground truth (float or bool).
        num_masks: Normaliser; ``None`` means ``N`` (the mean over masks).

    Returns:
        Scalar loss.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return loss.flatten(1).mean(1).sum() / _num_masks(logits, num_masks)


def dice_loss(
    logits: Tensor,
    targets: Tensor,
    num_masks: float | Tensor | None = None,
    *,
    smooth: float = 1.0,
    scale: float = 1.0,
) -> Tensor:
    """Soft Dice loss of mask logits: ``1 - (2|p.t| + s) / (|p| + |t| + s)`` per mask (DETR ``dice_loss``).

    Reduction: per-mask Dice loss, summed over masks and divided by ``num_masks`` (the mean over masks
    by default). The defaults (``smooth=1``, ``scale=1``) are DETR's and SAM-style code's;
    LISA/PixelLM's ``dice_loss`` is ``scale=1000, smooth=1e-6`` (both sums divided by ``scale``).

    Args:
        logits: ``(N, ...)`` mask logits.
        targets: Same shape, binary ground truth.
        num_masks: Normaliser; ``None`` means ``N``.
        smooth: Added to numerator and denominator; keeps empty masks finite (loss 0 for an empty
            prediction of an empty target).
        scale: Divides the intersection and the areas by ``scale`` before smoothing, as LISA does; with
            a tiny ``smooth`` this approaches the unsmoothed Dice on large masks.

    Returns:
        Scalar loss.
    """
    probs = logits.sigmoid().flatten(1) / scale
    t = targets.to(probs.dtype).flatten(1)
    numerator = 2 * (probs * t).sum(-1)  # LISA: 2 * (p / scale * t).sum(-1)
    denominator = probs.sum(-1) + t.sum(-1) / scale
    loss = 1 - (numerator + smooth) / (denominator + smooth)
    return loss.sum() / _num_masks(logits, num_masks)


# --------------------------------------------------------------------------------------------------------
# Masked language modelling
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskingIds:
    """The token ids ``mask_tokens`` needs, for callers without a Hugging Face tokenizer.

    Attributes:
        mask_id: Id of ``[MASK]``.
        vocab_size: Number of ids; random replacements are drawn from ``[0, vocab_size)``.
        special_ids: Ids that are never masked nor used as random replacements ([PAD], [CLS], ...).
    """

    mask_id: int
    vocab_size: int
    special_ids: Sequence[int]

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> MaskingIds:
        """Read the ids from a Hugging Face tokenizer (``len(tokenizer)`` counts added tokens too)."""
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token; MLM needs one")
        specials = set(tokenizer.all_special_ids)
        if tokenizer.pad_token_id is not None:
            specials.add(tokenizer.pad_token_id)
        return cls(mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer), special_ids=sorted(specials))


def mask_tokens(
    input_ids: Tensor,
    tokenizer: PreTrainedTokenizerBase | MaskingIds,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masked-LM corruption (BERT Sec. 3.1, "Task #1"): choose 15% of tokens, then 80/10/10.

    Each non-special token is chosen independently with ``probability`` (the Hugging Face collator's
    Bernoulli variant of BERT's fixed count). A chosen token becomes ``[MASK]`` with probability 0.8, a
    random token with 0.1, and stays itself with 0.1; its label is the original id. Special tokens
    ([CLS], [SEP], [PAD], ...) are never chosen and random replacements are never special tokens --
    unlike ``DataCollatorForLanguageModeling``, which may insert a random [CLS] or [PAD].

    Args:
        input_ids: ``(..., L)`` integer token ids; not modified.
        tokenizer: A Hugging Face tokenizer or a ``MaskingIds`` with the mask/special ids and vocab size.
        probability: Chance that a token is selected for prediction.
        generator: Random generator on ``input_ids``'s device, for reproducible masking.

    Returns:
        ``(masked_ids, labels)``: the corrupted ids, and labels holding the original id at selected
        positions and ``IGNORE_INDEX`` (-100) elsewhere.
    """
    ids = tokenizer if isinstance(tokenizer, MaskingIds) else MaskingIds.from_tokenizer(tokenizer)
    device = input_ids.device
    special = torch.tensor(sorted(set(ids.special_ids)), dtype=input_ids.dtype, device=device)
    candidates = ~torch.isin(input_ids, special)

    def draw(p: float) -> Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device) < p

    selected = draw(probability) & candidates
    to_mask = selected & draw(0.8)
    to_random = selected & ~to_mask & draw(0.5)  # half of the remaining 20%

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    masked = input_ids.clone()
    masked[to_mask] = ids.mask_id
    # Random replacements come from the non-special vocabulary only.
    allowed = torch.ones(ids.vocab_size, dtype=torch.bool, device=device)
    allowed[special[(special >= 0) & (special < ids.vocab_size)]] = False
    pool = allowed.nonzero().squeeze(1).to(input_ids.dtype)
    if pool.numel() == 0:
        raise ValueError("vocabulary has no non-special token to use as random replacement")
    picks = torch.randint(pool.numel(), (int(to_random.sum()),), generator=generator, device=device)
    masked[to_random] = pool[picks]
    return masked, labels
