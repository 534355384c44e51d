"""SOHO: "Seeing Out of tHe bOx" end-to-end image-text pre-training with a visual dictionary (Huang et al., CVPR 2021)."""

from vislang.soho.model import PRESETS, SOHOEmbedder, SOHOPreset, SOHOSpec, VisualDictionary, mvm_logits

__all__ = ["PRESETS", "SOHOEmbedder", "SOHOPreset", "SOHOSpec", "VisualDictionary", "mvm_logits"]
