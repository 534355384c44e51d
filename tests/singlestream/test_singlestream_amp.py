"""Mixed precision: the manually optimised single-stream module clips the *unscaled* gradients.

Under ``precision: 16-mixed`` Lightning's plugin multiplies the loss by a GradScaler's scale (65,536 at the
start); the gradients must be unscaled before the norm is clipped, or the clip sees them times the scale and
the step shrinks by the same factor. Lightning's 16-mixed plugin is built by hand with a CPU GradScaler (the
Trainer refuses ``precision="16-mixed"`` on CPU), so this runs the plugin's real code path on a CPU.
"""

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.precision import MixedPrecision

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR

CLIP = 1e-3  # far below the gradient norm, so the clip is active in every run


def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "task": ["snli_ve"] * 4,
        "image": torch.randn(4, 3, 64, 64, generator=g),
        "pixel_mask": torch.ones(4, 64, 64, dtype=torch.bool),
        "text": ["a red circle", "two blue squares", "a star on stripes", "a large green cross"],
        "label": torch.tensor([0, 1, 2, 1]),
    }


def _one_step(precision_plugin: MixedPrecision | None, tmp_path) -> tuple[dict, dict, list[float]]:
    """One training step of a tiny Pixel-BERT from fixed weights; returns weights before/after and the clip norms."""
    from vislang.pixelbert.model import PixelBERTSpec
    from vislang.pixelbert.module import PixelBERTModule
    from vislang.singlestream.module import OptimiserRecipe

    torch.manual_seed(0)
    module = PixelBERTModule(
        PixelBERTSpec(preset="tiny"),
        tokenizer=SYNTHETIC_TOKENIZER_DIR,
        num_answers=8,
        max_text_len=40,
        optimiser=OptimiserRecipe(grad_clip=CLIP, warmup_steps=0, cnn_weight_decay=0.0, weight_decay=0.0),
    )
    for m in module.modules():  # dropout off: fp16 and fp32 runs then differ only by rounding
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    norms: list[float] = []
    clip = module.clip_gradients

    def recording_clip(optimizer, **kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params]))))
        return clip(optimizer, **kwargs)

    module.clip_gradients = recording_clip
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        plugins=[precision_plugin] if precision_plugin else None,
    )
    loader = torch.utils.data.DataLoader([_batch()], batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    after = {k: v.detach().clone() for k, v in module.named_parameters()}
    return before, after, norms


@pytest.mark.filterwarnings("ignore")
def test_16_mixed_clipped_step_equals_the_fp32_step(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    b32, a32, norms32 = _one_step(None, tmp_path / "fp32")
    b16, a16, norms16 = _one_step(MixedPrecision("16-mixed", device="cpu", scaler=scaler), tmp_path / "amp")
    assert scaler.get_scale() == 2.0**16, "the scaler skipped the step (non-finite gradients)"
    # The clip saw the unscaled gradients: the same norms as in fp32 (up to fp16 rounding), not 65,536 x them.
    assert len(norms16) == len(norms32) == 2  # AdamW (Transformer) and SGD (CNN), each clipped
    for n16, n32 in zip(norms16, norms32, strict=True):
        assert n32 > 10 * CLIP and n16 == pytest.approx(n32, rel=0.05)
    # ... and every parameter moved as in fp32. The CNN's SGD step is lr x clipped gradient, so a clip of the
    # scaled gradients would make it 65,536 times too small.
    cnn = [k for k in b32 if k.startswith("model.encoder.trunk.") and not torch.equal(a32[k], b32[k])]
    assert cnn
    step32 = torch.cat([(a32[k] - b32[k]).flatten() for k in cnn])
    step16 = torch.cat([(a16[k] - b16[k]).flatten() for k in cnn])
    assert step32.norm() > 0
    print(
        "clip norms fp32",
        norms32,
        "16-mixed",
        norms16,
        "| CNN step norm fp32",
        float(step32.norm()),
        "16-mixed",
        float(step16.norm()),
        "relative L2 difference",
        float((step16 - step32).norm() / step32.norm()),
    )
    assert float(step16.norm() / step32.norm()) == pytest.approx(1.0, abs=0.02)  # the clipped step's size
    # its direction: fp16 rounding of activations and gradients only (the old order gave a relative error of ~1)
    assert (step16 - step32).norm() / step32.norm() < 0.2
