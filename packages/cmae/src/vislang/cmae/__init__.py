"""CMAE and CMAE-V: contrastive masked autoencoders for images and video (Huang et al. 2022; Lu et al. 2023)."""

from vislang.cmae.model import CMAE, PRESETS, CMAEClassifier, CMAEConfig, build_classifier, build_cmae, get_config

__all__ = ["CMAE", "PRESETS", "CMAEClassifier", "CMAEConfig", "build_classifier", "build_cmae", "get_config"]
