"""CMAE tab: an image and a mask ratio in; the masked input, the reconstruction and the target side by side.

The image is centre-cropped and resized to the checkpoint's input size and normalised as CMAE's
evaluation transform does; the model's own `sample_mask` hides `ratio` of the patches (the checkpoint's
mask type: CMAE's blocks or MAE's single patches), its online encoder and pixel decoder run on the
visible ones (the pre-training forward pass), and `CMAEPretrainModule.reconstruction_grid` de-normalises
the prediction with each patch's mean and std and pastes the visible patches back (MAE's visualisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from vislang.app.checkpoints import checkpoint_hparams
from vislang.app.inputs import CheckedImage, InputError
from vislang.cmae.data import IMAGENET_MEAN, IMAGENET_STD
from vislang.cmae.model import sample_mask
from vislang.cmae.module import CMAEPretrainModule

__all__ = ["Reconstruction", "load_cmae", "reconstruct"]

DISPLAY_SIDE = 256


@dataclass
class Reconstruction:
    """(S, S, 3) uint8 images at display size, the masked fraction of patches, and notes."""

    masked: np.ndarray
    reconstruction: np.ndarray
    target: np.ndarray
    masked_fraction: float
    notes: list[str] = field(default_factory=list)


def load_cmae(path: str | Path) -> CMAEPretrainModule:
    """A CMAE pre-training checkpoint for inference on the CPU (image presets only)."""
    hparams = checkpoint_hparams(path)
    if "preset" not in hparams or "base_momentum" not in hparams:
        raise ValueError(
            f"{path}: not a CMAE pre-training checkpoint (CMAEPretrainModule); fine-tuned "
            "classifiers have no pixel decoder to reconstruct with"
        )
    module = CMAEPretrainModule.load_from_checkpoint(path, map_location="cpu", init_weights=None, compile=False)
    if module.model.config.is_video:
        raise ValueError(f"{path}: a CMAE-V (video) checkpoint; this tab reconstructs images")
    return module.eval()


def _display(image: torch.Tensor) -> np.ndarray:
    """(3, S, S) in [0, 1] -> (D, D, 3) uint8, nearest-neighbour so each patch stays a sharp square."""
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(array)
    scale = max(1, DISPLAY_SIDE // max(pil.size))
    return np.asarray(pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST))


@torch.no_grad()
def reconstruct(module: CMAEPretrainModule, image: CheckedImage, ratio: float, seed: int = 0) -> Reconstruction:
    """Mask `ratio` of the patches (seeded) and reconstruct them."""
    if not 0.0 < float(ratio) < 1.0:
        raise InputError(f"mask ratio {ratio}: choose a value between 0 and 1 (CMAE trains at 0.65, MAE at 0.75)")
    c = module.model.config
    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(c.img_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(c.img_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    x = transform(Image.fromarray(image.array))[None]
    generator = torch.Generator().manual_seed(int(seed))
    try:
        ids_keep, mask = sample_mask(1, c.grid, float(ratio), c.mask_type, c.mask_block, x.device, generator)
    except ValueError as error:  # e.g. a ratio that leaves no block visible
        raise InputError(f"mask ratio {ratio}: {error}") from None
    # the online branch of the pre-training forward pass: visible tokens -> encoder -> pixel decoder (Eq. 1)
    pred = module.model.pixel_decoder(module.model.encoder(x, ids_keep), ids_keep)
    grid = module.reconstruction_grid(x, pred, mask)  # one row: target | masked | reconstruction, 1-px padding
    side = c.img_size
    cells = [grid[:, 1 : 1 + side, 1 + k * (side + 1) : 1 + k * (side + 1) + side] for k in range(3)]
    notes = list(image.notes)
    notes.append(
        f"image centre-cropped and resized to {side}x{side} px, the checkpoint's input size; "
        f"{int(mask.sum())} of {mask.numel()} patches of {c.patch_size} px masked ({c.mask_type} masking)"
    )
    return Reconstruction(_display(cells[1]), _display(cells[2]), _display(cells[0]), float(mask.float().mean()), notes)
