"""SOHOModule: SOHO pre-training (MLM + ITM + MVM) and fine-tuning, on the single-stream module.

Everything task-related (MLM/ITM, VQA/retrieval/NLVR2/SNLI-VE heads and metrics, the SGD + AdamW
optimisation) is ``vislang.singlestream.module.SingleStreamModule``; SOHO's model comes from its ``paper``
argument, a ``vislang.soho.model.SOHOSpec`` (preset, visual dictionary, MVM), and this class adds the MVM loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vislang.shared.losses import IGNORE_INDEX
from vislang.singlestream.model import VisualTokens
from vislang.singlestream.module import SingleStreamModule
from vislang.soho.model import SOHOEmbedder, SOHOSpec, mvm_logits

__all__ = ["SOHOModule"]


class SOHOModule(SingleStreamModule):
    """SOHO in Lightning: ``paper`` is a ``SOHOSpec``; the other arguments are ``SingleStreamModule``'s."""

    paper_type = SOHOSpec
    paper: SOHOSpec

    def __init__(self, paper: SOHOSpec = SOHOSpec(), **kwargs: Any) -> None:
        """SOHOModule: the paper's part typed as its own dataclass, every other argument ``SingleStreamModule``'s.

        Args:
            paper: SOHO's part: the preset, the visual dictionary and masked visual modelling, with their switches
                (the package README's differences table says which setting is official).
            **kwargs: ``SingleStreamModule``'s arguments (tokenizer, weights, text length, optimiser, ...).
        """
        super().__init__(paper=paper, **kwargs)

    def extra_pretrain_losses(self, hidden: Tensor, visual: VisualTokens, text_len: int) -> dict[str, Tensor]:
        """Masked Visual Modelling (Sec. 3.3): predict the dictionary index of every masked visual token."""
        labels = visual.extras.get("mvm_labels")
        if labels is None:
            return {}
        embedder = self.model.embedder
        assert isinstance(embedder, SOHOEmbedder)
        masked = labels != IGNORE_INDEX
        if not masked.any():  # most batches at the official 1.5 % per image: keep the graph, add nothing
            zero = hidden[:, text_len:].sum() * 0.0
            return {"loss_mvm": zero, "mvm_masked": torch.zeros((), device=hidden.device)}
        logits = mvm_logits(hidden[:, text_len:][masked], embedder.dictionary, self.paper.mvm_temperature)
        loss = F.cross_entropy(logits.float(), labels[masked])
        return {
            "loss_mvm": self.paper.mvm_weight * loss,
            "acc_mvm": (logits.argmax(-1) == labels[masked]).float().mean(),
            "mvm_masked": masked.sum().float(),
        }
