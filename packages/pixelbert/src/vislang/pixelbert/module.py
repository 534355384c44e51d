"""PixelBERTModule: Pixel-BERT pre-training (MLM + ITM) and fine-tuning on the single-stream module.

Tasks, metrics and the SGD (CNN) + AdamW (Transformer) optimisation are
``vislang.singlestream.module.SingleStreamModule``; Pixel-BERT's model comes from its ``paper`` argument, a
``vislang.pixelbert.model.PixelBERTSpec`` (preset, pixel embedding, Random Pixel Sampling).
"""

from __future__ import annotations

from typing import Any

from vislang.pixelbert.model import PixelBERTSpec
from vislang.singlestream.module import SingleStreamModule

__all__ = ["PixelBERTModule"]


class PixelBERTModule(SingleStreamModule):
    """Pixel-BERT in Lightning: ``paper`` is a ``PixelBERTSpec``; the other arguments are ``SingleStreamModule``'s."""

    paper_type = PixelBERTSpec
    paper: PixelBERTSpec

    def __init__(self, paper: PixelBERTSpec = PixelBERTSpec(), **kwargs: Any) -> None:
        """PixelBERTModule: the paper's part typed as its own dataclass, every other argument ``SingleStreamModule``'s.

        Args:
            paper: Pixel-BERT's part: the preset, the pixel embedding and Random Pixel Sampling, with their
                switches (the package README's differences table says which setting is official).
            **kwargs: ``SingleStreamModule``'s arguments (tokenizer, weights, text length, optimiser, ...).
        """
        super().__init__(paper=paper, **kwargs)
