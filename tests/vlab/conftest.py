"""Fixtures shared by the VLAB tests."""

from __future__ import annotations

import pytest

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR


@pytest.fixture
def tiny_cli_args() -> list[str]:
    """CLI overrides that shrink any VLAB config to the tiny preset on CPU with 32-px frames and no logger."""
    return [
        "--model.init_args.preset=tiny",
        f"--model.init_args.decoder_tokenizer={SYNTHETIC_TOKENIZER_DIR}",
        "--model.init_args.clip_weights=null",
        "--model.init_args.decoder_weights=null",
        "--model.init_args.gradient_checkpointing=false",
        "--data.init_args.image_size=32",
        "--data.init_args.videos_dir=null",  # the synthetic writers use each layout's own video folder
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
        "--data.init_args.eval_batch_size=4",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
    ]
