"""PixelBERTModule: Pixel-BERT pre-training (MLM + ITM) and fine-tuning on the shared single-stream module.

Tasks, metrics and the SGD (CNN) + AdamW (Transformer) optimisation are
``vislang.singlestream.module.SingleStreamModule``; this class only builds Pixel-BERT's model.
"""

from __future__ import annotations

from typing import Literal

from vislang.pixelbert.model import build_pixelbert
from vislang.singlestream.module import SingleStreamModule

__all__ = ["PixelBERTModule"]


class PixelBERTModule(SingleStreamModule):
    """Pixel-BERT in Lightning. Shared arguments: see ``SingleStreamModule``; Pixel-BERT's own:

    Args:
        preset: ``pixelbert_r50``, ``pixelbert_x152`` (paper) or ``tiny`` (demos/tests).
        num_samples: Random Pixel Sampling size in pre-training (100); 0 = off.
        sample_per: ``image`` or ``batch`` (ClipBERT's shared indices).
        position_2d: Learned row/column embeddings on pixels (ClipBERT-style code, not the paper).
        neck: ``soho`` (pool, 1x1 conv + BN) or ``clipbert`` (ClipBERT's 3x3 conv, pool, ReLU).
        neck_relu: ReLU after the ``soho`` neck's BN (default on for Pixel-BERT; see ``build_pixelbert``).
    """

    def __init__(
        self,
        preset: str = "pixelbert_r50",
        tokenizer: str = "bert-base-uncased",
        num_answers: int = 3129,
        init_weights: str | None = None,
        cnn_weights: str | None = None,
        text_weights: str | None = None,
        max_text_len: int = 40,
        mlm_probability: float = 0.15,
        mlm_on_negatives: bool = False,
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
        num_samples: int = 100,
        sample_per: Literal["image", "batch"] = "image",
        position_2d: bool = False,
        neck: Literal["soho", "clipbert"] = "soho",
        neck_relu: bool = True,
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
        self.model = build_pixelbert(preset, self.tokenizer, num_answers, num_samples, sample_per, position_2d, neck)
        self.load_pretrained_starts()
        self.load_init_weights(init_weights)
