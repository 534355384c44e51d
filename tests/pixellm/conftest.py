"""Shared fixtures of the PixelLM tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vislang.pixellm.model import CLIPSize, LlamaSize, PixelLM, PixelLMConfig, build_pixellm

GOLDEN_MODEL = Path(__file__).parent / "golden" / "model"


@pytest.fixture(scope="session")
def golden_meta() -> dict:
    """Sizes and token ids of the small official model `golden/make_golden.py` built."""
    return json.loads((GOLDEN_MODEL / "config.json").read_text())


@pytest.fixture(scope="session")
def golden_layout_model(golden_meta: dict) -> Callable[[], tuple[PixelLM, int]]:
    """A builder of our model with the golden official model's sizes; returns (model, `<image>` id)."""

    def build() -> tuple[PixelLM, int]:
        meta = golden_meta
        config = PixelLMConfig(
            vision=CLIPSize(**{**meta["clip"], "image_size": 448}),  # the released tower runs at 448 px
            llm=LlamaSize(**meta["llm"]),
            feature_layers=(meta["mm_vision_select_layer"], -11),
            llm_grid=16,
            tokens_per_scale=3,
            decoder_dim=meta["decoder"]["dim"],
            decoder_depth=meta["decoder"]["depth"],
            decoder_heads=meta["decoder"]["heads"],
            decoder_mlp_dim=meta["decoder"]["mlp_dim"],
        )
        image_id = meta["vocab_size"]  # our <image> placeholder: one row after the release's vocabulary
        torch.manual_seed(0)
        return build_pixellm(config, meta["vocab_size"] + 1, meta["codebook_ids"], image_id).eval(), image_id

    return build
