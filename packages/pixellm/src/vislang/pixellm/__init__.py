"""PixelLM: pixel reasoning with a large multimodal model, and the MUSE benchmark (Ren et al., CVPR 2024)."""

from vislang.pixellm.model import PRESETS, PixelLM, PixelLMConfig, add_codebook_tokens, build_pixellm

__all__ = ["PRESETS", "PixelLM", "PixelLMConfig", "add_codebook_tokens", "build_pixellm"]
