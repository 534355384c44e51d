"""SOHOModule: SOHO pre-training (MLM + ITM + MVM) and fine-tuning, on the shared single-stream module.

Everything task-related (MLM/ITM, VQA/retrieval/NLVR2/SNLI-VE heads and metrics, the SGD + AdamW
optimisation) is ``vislang.singlestream.module.SingleStreamModule``; this class builds SOHO's model
(``vislang.soho.model``) and adds the MVM loss.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vislang.shared.losses import IGNORE_INDEX
from vislang.singlestream.model import VisualTokens
from vislang.singlestream.module import SingleStreamModule
from vislang.soho.model import SOHOEmbedder, build_soho, mvm_logits

__all__ = ["SOHOModule"]


class SOHOModule(SingleStreamModule):
    """SOHO in Lightning. Shared arguments: see ``SingleStreamModule``; SOHO's own:

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
        official_weights: A checkpoint of the official SOHO code (``researchmm/soho`` release, preset
            ``soho_r18``) to start from (``vislang.soho.convert``); applied before ``init_weights``.
    """

    def __init__(
        self,
        preset: str = "soho_r101",
        tokenizer: str = "bert-base-uncased",
        num_answers: int = 3129,
        init_weights: str | None = None,
        cnn_weights: str | None = None,
        text_weights: str | None = None,
        official_weights: str | None = None,
        max_text_len: int = 16,
        mlm_probability: float = 0.15,
        mlm_on_negatives: bool = True,
        lr: float = 1e-4,
        cnn_lr: float = 1e-2,
        cnn_optimizer: str = "sgd",
        weight_decay: float = 0.01,
        cnn_weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_steps: int = 1000,
        warmup_start: float = 1 / 3,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        grad_clip: float = 10.0,
        eval_text_chunk: int = 256,
        vqa_version: str = "2021",
        vd_decay: float = 0.4,
        vd_decay_ramp: bool = False,
        vd_max_decay: float = 0.99,
        vd_restart_dead: bool = False,
        visual_input: Literal["gate", "sum", "quantized"] = "gate",
        dictionary_downstream: bool = True,
        mvm_mask_prob: float = 0.015,
        mvm_anchor: Literal["batch", "image"] = "batch",
        mvm_temperature: float = 1.0,
        mvm_weight: float = 1.0,
        vd_quantize_from: Literal["updated", "lookup"] = "updated",
        vd_statistics: Literal["valid", "all"] = "valid",
        gate_norm: bool = True,
        neck_relu: bool = False,
        valid_mask: Literal["covered", "official"] = "covered",
        results_dir: str | None = None,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer,
            num_answers=num_answers,
            init_weights=init_weights,
            cnn_weights=cnn_weights,
            text_weights=text_weights,
            max_text_len=max_text_len,
            mlm_probability=mlm_probability,
            mlm_on_negatives=mlm_on_negatives,
            lr=lr,
            cnn_lr=cnn_lr,
            cnn_optimizer=cnn_optimizer,
            weight_decay=weight_decay,
            cnn_weight_decay=cnn_weight_decay,
            momentum=momentum,
            warmup_steps=warmup_steps,
            warmup_start=warmup_start,
            lr_milestones=lr_milestones,
            lr_gamma=lr_gamma,
            grad_clip=grad_clip,
            eval_text_chunk=eval_text_chunk,
            vqa_version=vqa_version,
            results_dir=results_dir,
        )
        self.model = build_soho(
            preset,
            self.tokenizer,
            num_answers,
            vd_decay,
            vd_decay_ramp,
            vd_max_decay,
            vd_restart_dead,
            visual_input,
            dictionary_downstream,
            mvm_mask_prob,
            mvm_anchor,
            vd_quantize_from,
            vd_statistics,
            gate_norm,
            neck_relu,
            valid_mask,
        )
        self.load_pretrained_starts()
        if official_weights:
            from vislang.soho.convert import load_official

            load_official(self.model, official_weights)
        self.load_init_weights(init_weights)

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
        logits = mvm_logits(hidden[:, text_len:][masked], embedder.dictionary, self.hparams.mvm_temperature)
        loss = F.cross_entropy(logits.float(), labels[masked])
        return {
            "loss_mvm": self.hparams.mvm_weight * loss,
            "acc_mvm": (logits.argmax(-1) == labels[masked]).float().mean(),
            "mvm_masked": masked.sum().float(),
        }
