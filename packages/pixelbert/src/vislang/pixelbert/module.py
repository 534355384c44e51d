"""PixelBERTModule: Pixel-BERT pre-training (MLM + ITM) and fine-tuning on the single-stream module.

Tasks, metrics and the SGD (CNN) + AdamW (Transformer) optimisation are
``vislang.singlestream.module.SingleStreamModule``; Pixel-BERT's model comes from its ``paper`` argument, a
``vislang.pixelbert.model.PixelBERTSpec`` (preset, pixel embedding, Random Pixel Sampling).
"""

from __future__ import annotations

from vislang.pixelbert.model import PixelBERTSpec
from vislang.singlestream.module import SingleStreamModule

__all__ = ["PixelBERTModule"]


class PixelBERTModule(SingleStreamModule):
    """Pixel-BERT in Lightning: ``paper`` is a ``PixelBERTSpec``; the other arguments are ``SingleStreamModule``'s."""

    paper_type = PixelBERTSpec
    paper: PixelBERTSpec
