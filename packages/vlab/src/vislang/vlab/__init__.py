"""VLAB: video-language pre-training by feature adapting and blending (He et al., 2023)."""

from vislang.vlab.model import PRESETS, VLAB, VLABConfig, build_vlab, load_clip_state_dict

__all__ = ["PRESETS", "VLAB", "VLABConfig", "build_vlab", "load_clip_state_dict"]
