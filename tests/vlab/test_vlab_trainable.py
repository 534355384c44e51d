"""What stays trainable is exactly what the losses reach (DDP fails on trainable parameters without gradients)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from vislang.shared.data.synthetic import SyntheticWorld, writers
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR
from vislang.vlab.data import VLABDataModule
from vislang.vlab.module import VLABModule


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("msrvtt")
    writers.write_msrvtt(SyntheticWorld(seed=4, image_size=32, num_frames=8), root, num_videos=12)
    return root


@pytest.mark.parametrize(
    ("tasks", "itm_weight"),
    [(["retrieval"], 0.0), (["qa"], 0.0), (["retrieval", "caption"], 0.0), (["retrieval"], 1.0)],
)
def test_every_trainable_parameter_gets_a_gradient(msrvtt_root: Path, tasks: list[str], itm_weight: float) -> None:
    torch.manual_seed(0)
    module = VLABModule(preset="tiny", decoder_tokenizer=str(SYNTHETIC_TOKENIZER_DIR), itm_weight=itm_weight)
    data = VLABDataModule(
        "msrvtt", str(msrvtt_root), tasks=tasks, num_frames=4, image_size=32, batch_size=4, num_workers=0
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    grads: dict[str, bool] = {}

    original = module.on_after_backward

    def record() -> None:
        original()
        for name, p in module.model.named_parameters():
            if p.requires_grad:
                grads[name] = p.grad is not None

    module.on_after_backward = record
    trainer.fit(module, datamodule=data)
    assert grads, "no backward pass ran"
    assert [name for name, got in grads.items() if not got] == []
    if "retrieval" in tasks and itm_weight == 0 and "caption" not in tasks:
        assert not any(name.startswith("decoder.") for name in grads)  # frozen, not silently decayed
