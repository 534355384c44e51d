"""Make the SOHO golden fixtures with the official code (not run by CI).

Official code: https://github.com/researchmm/soho at commit 95824a8690d1096c6577e7700a311cebbc9bc619.
The repository has no licence, so nothing of it is committed: this script reads the official files out of a
local clone with ``git show`` at generation time, writes them to a temporary directory and imports them there.

    python tests/soho/golden/make_golden.py --repo /path/to/soho/.git

Built from the official code: ``SOHO/models/necks/utils.py::SOHO_Pre_VD`` (the visual dictionary) and
``SOHO/models/necks/necks.py::SimpleVDforPreGate`` (the pre-training neck: 2x2 max-pool, 1x1 ConvModule,
VD, ``pos_line``, the BN-normalised gate, MVM masking, 2-D sine position, LayerNorm), with the official
``ConvModule``, ``build_norm_layer`` and ``concat_all_gather``. Stubbed: only framework glue -- the mmcv-style
``NECKS`` registry, the ``commons.cnn`` package (its two weight-init functions are the official ones), and
``torch.distributed`` runs as a one-process gloo group so ``concat_all_gather`` / ``all_reduce`` work on a CPU.
The neck is built with ``norm_cfg=dict(type="BN")``: the official config's SyncBN is BN in one process (and
``nn.SyncBatchNorm`` does not run on a CPU). ``np.random.randint`` (the MVM anchor) is wrapped to record the
positions it draws, so the test can replay them.

Every parameter and buffer gets random values (the VD's counters positive, BN variances positive). Outputs:

* ``vd.safetensors`` + ``vd.json``: a VD of K=16 codes x D=8 from its official initial state (``embed``
  random, counters zero) and a second one with every buffer random; for each, several training forwards
  (quantised output, indices, the table and counters after each momentum update -- with codes that receive no
  features), the straight-through gradient of the first, and an eval forward.
* ``neck.safetensors`` + ``neck.json``: the gated pre-training neck on C5 features of three padded images of
  different sizes (non-square batch); a training forward with ``mask_prob=1`` (every image masks its visual
  word; anchors recorded), the gradient w.r.t. C5, the VD table after it, and an eval forward with
  ``mask_prob=0``. The state dict is in the official layout (``conv.conv.weight``, ``vq.embed``, ...).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

COMMIT = "95824a8690d1096c6577e7700a311cebbc9bc619"
OUT = Path(__file__).parent
FILES = [
    "SOHO/models/necks/utils.py",
    "SOHO/models/necks/necks.py",
    "SOHO/models/utils/__init__.py",
    "SOHO/models/utils/accuracy.py",
    "SOHO/models/utils/conv_module.py",
    "SOHO/models/utils/conv_ws.py",
    "SOHO/models/utils/gather_layer.py",
    "SOHO/models/utils/multi_pooling.py",
    "SOHO/models/utils/norm.py",
    "SOHO/models/utils/se_layer.py",
    "commons/cnn/utils/weight_init.py",
]


def import_official(repo: str, tmp: Path) -> types.ModuleType:
    """Write the official files at COMMIT under ``tmp`` (with stub package glue) and import the necks module."""
    for name in FILES:
        text = subprocess.run(
            ["git", "--git-dir", repo, "show", f"{COMMIT}:{name}"], capture_output=True, text=True, check=True
        ).stdout
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    # stubs: package __init__s, the registry and commons.cnn (framework glue only)
    for pkg in ["SOHO", "SOHO/models", "commons"]:
        (tmp / pkg / "__init__.py").write_text("")
    (tmp / "SOHO/models/necks/__init__.py").write_text("")
    (tmp / "SOHO/models/registry.py").write_text(
        "class _Registry:\n    def register_module(self, cls):\n        return cls\nNECKS = _Registry()\n"
    )
    (tmp / "commons/cnn/__init__.py").write_text(
        "from .utils.weight_init import constant_init, kaiming_init\nConvModule = None  # only imported by se_layer\n"
    )
    (tmp / "commons/cnn/utils/__init__.py").write_text("")
    sys.path.insert(0, str(tmp))
    import SOHO.models.necks.necks as necks  # noqa: PLC0415

    return necks


def randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Random values for every parameter and buffer (variances and counters positive)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.5 if p.ndim > 1 else 1.0))
        for name, b in module.named_buffers():
            if b.dtype == torch.long:
                b.fill_(3)
            elif name.endswith("running_var") or "cluster" in name:
                b.copy_(torch.rand(b.shape, generator=generator) * 2 + 0.5)
            else:
                b.copy_(torch.randn(b.shape, generator=generator))


def state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def make_vd(necks: types.ModuleType, g: torch.Generator) -> tuple[dict, dict]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"commit": COMMIT, "num_tokens": 16, "dim": 8, "decay": 0.4, "eps": 1e-5, "steps": 4, "cases": []}
    for case in ("fresh", "random"):
        vd = necks.SOHO_Pre_VD(16, 8, decay=0.4)
        with torch.no_grad():
            vd.embed.copy_(torch.randn(16, 8, generator=g))
        if case == "random":
            randomise(vd, g)
        tensors.update(state(vd, f"{case}.initial."))
        vd.train()
        dead: list[list[int]] = []
        for step in range(meta["steps"]):
            # features near 5 of the codes, so most codes receive none
            centres = vd.embed[torch.randint(0, 16, (5,), generator=g)]
            x = centres[torch.randint(0, 5, (24,), generator=g)] + 0.3 * torch.randn(24, 8, generator=g)
            x = x.clone().requires_grad_(True)
            quantized, index = vd(x)
            tensors[f"{case}.step{step}.x"] = x.detach().clone()
            tensors[f"{case}.step{step}.quantized"] = quantized.detach().clone()
            tensors[f"{case}.step{step}.index"] = index.flatten().clone()
            tensors.update(state(vd, f"{case}.step{step}.after."))
            dead.append(sorted(set(range(16)) - set(index.flatten().tolist())))
            if step == 0:  # straight-through: d(sum(w * quantized))/dx = w
                w = torch.randn(quantized.shape, generator=g)
                (quantized * w).sum().backward()
                tensors[f"{case}.step0.weight"] = w
                tensors[f"{case}.step0.grad"] = x.grad.clone()
        vd.eval()
        x = torch.randn(20, 8, generator=g) * 2
        quantized, index = vd(x)
        tensors[f"{case}.eval.x"], tensors[f"{case}.eval.quantized"] = x, quantized.detach().clone()
        tensors[f"{case}.eval.index"] = index.flatten().clone()
        meta["cases"].append({"name": case, "codes_without_features": dead})
    return tensors, meta


def make_neck(necks: types.ModuleType, g: torch.Generator) -> tuple[dict, dict]:
    c_in, dim, k = 16, 8, 16
    neck = necks.SimpleVDforPreGate(c_in, dim, k, decay=0.4, mask_prob=1.0, norm_cfg=dict(type="BN"))
    randomise(neck, g)
    # three images, C5 at stride 32 of a 256 x 384 padded batch (non-square: the official mask bug shows)
    img_shapes = [[256, 384, 3], [200, 300, 3], [130, 384, 3]]
    img_meta = [{"pad_shape": (256, 384, 3), "img_shape": tuple(s)} for s in img_shapes]
    tensors = state(neck, "initial.")
    drawn: list[int] = []
    randint = np.random.randint

    def recording_randint(*args, **kwargs):
        value = randint(*args, **kwargs)
        drawn.append(int(value))
        return value

    np.random.randint = recording_randint
    c5 = torch.randn(3, c_in, 8, 12, generator=g).requires_grad_(True)
    neck.train()
    tokens, visual_mask, labels = neck([c5], img_meta)
    w = torch.randn(tokens.shape, generator=g)
    (tokens * w).sum().backward()
    tokens = tokens.detach().contiguous()
    tensors.update(
        {
            "c5": c5.detach().clone(),
            "train.tokens": tokens,
            "train.weight": w,
            "train.c5_grad": c5.grad.clone(),
            "train.visual_mask": visual_mask.clone(),
            "train.labels": labels.clone(),
        }
    )
    tensors.update(state(neck, "after_train."))
    neck.eval()
    neck.mask_prob = 0.0
    with torch.no_grad():
        tokens, visual_mask, labels = neck([c5.detach()], img_meta)
    tensors.update({"eval.tokens": tokens.contiguous(), "eval.visual_mask": visual_mask.clone()})
    np.random.randint = randint
    meta = {
        "commit": COMMIT,
        "in_channels": c_in,
        "out_channels": dim,
        "num_tokens": k,
        "decay": 0.4,
        "pad_shape": [256, 384],
        "img_shapes": img_shapes,
        "train_mask_prob": 1.0,
        "train_anchor": drawn[0],
        "norm_cfg": "BN (SyncBN in the official config; the same in one process)",
    }
    return tensors, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="git directory of a clone of researchmm/soho")
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        necks = import_official(args.repo, Path(tmp))
        g = torch.Generator().manual_seed(20)
        for name, (tensors, meta) in {"vd": make_vd(necks, g), "neck": make_neck(necks, g)}.items():
            save_file(tensors, str(OUT / f"{name}.safetensors"))
            (OUT / f"{name}.json").write_text(json.dumps(meta) + "\n")
            print(f"{name}: {len(tensors)} tensors, {(OUT / f'{name}.safetensors').stat().st_size} bytes")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
