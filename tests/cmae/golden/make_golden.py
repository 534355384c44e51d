"""Make the CMAE / ConvMAE golden fixtures with the official code (not run by CI).

Official code, read out of local clones with ``git show`` at generation time and imported from a temporary
directory (nothing of it is committed):

* CMAE: https://github.com/ZhichengHuang/CMAE at commit e786a5253504b1c5d5ac4027c485711b58ba4ddd
  (``cmae/models/algorithms/cmae.py``, ``backbones/{cmae_vit,vision_transformer,transformer_utils,mim_cls_vit}.py``,
  ``necks/{mae_neck,nonlinear_neck}.py``, ``heads/cmae_head.py``, ``models/utils/{position_embedding,helpers,
  embed}.py``, ``utils/gather.py``).
* ConvMAE: https://github.com/Alpha-VL/ConvMAE at commit 4c97b4c9ec9c85724bc9594eb7302c803ae58c19
  (``vision_transformer.py``, ``models_convmae.py``, ``models_convvit.py``, ``util/pos_embed.py``).
* VideoMAE: https://github.com/MCG-NJU/VideoMAE at commit 14ef8d856287c94ef1f985fe30f958eb4ec2c55d
  (``modeling_pretrain.py``, ``modeling_finetune.py``, ``masking_generator.py``).

    pip install --target /tmp/mmlibs mmcv-lite==2.2.0 mmengine==0.10.7 addict yapf termcolor platformdirs
    PYTHONPATH=/tmp/mmlibs python tests/cmae/golden/make_golden.py --cmae-repo CMAE/.git --convmae-repo ConvMAE/.git \
        --videomae-repo VideoMAE/.git

What runs is the official code (mmcv-lite's ``FFN``/``PatchEmbed``/``build_norm_layer`` and mmengine's
``BaseModule``/``all_gather`` are the real libraries). Stubbed, framework glue only: the package
``__init__``s and the mmengine registry (a dict from ``type`` to class: ``MODELS.build``); ``cv2`` (imported by
``mmcv.image``, never called by these modules); ``torch.distributed.get_rank`` returns 0 and ``Tensor.cuda``
is the identity inside the CMAE head's label line (one CPU process); ``np.float`` = ``float`` for ConvMAE's
``util/pos_embed.py`` (removed from NumPy 2). The official ``SyncBN`` necks run without a process group, where
``nn.SyncBatchNorm`` is plain batch norm. The fine-tuning head ``MAEFinetuneHead.head`` is an ``nn.Linear``;
it is built as such (its module imports the loss zoo, which the forward does not use).

Small widths keep every file well under 1 MB; every parameter and buffer gets random values (LayerNorm
weights and biases too, BN variances positive), so a wrong mapping cannot hide. Outputs in this folder:

* ``cmae_vit.safetensors``: the official CMAE runner state dict (``backbone.*``, ``target_backbone.*``,
  ``pixel_decoder.*``, ``feature_decoder.*``, ``projector.*``, ``target_projector.*``, ``head.predictor.*``).
* ``cmae_vit_io.safetensors`` + ``cmae_vit.json``: uint8 images (online view and shifted target view), the
  official block mask, one training step's ``loss_rc``, ``loss_ct``, ``pred_pixel`` and gradients, and the
  config; plus the fine-tuned ``MIMVisionTransformer`` (``final_norm=False``: mean pool + ``fc_norm``) with a
  ``head.head`` classifier: its state dict (``ft.*``) and eval logits.
* ``convmae.safetensors``: ConvMAE's ``MaskedAutoencoderConvViT`` at 224 px (its masking hard-codes the 14x14
  grid) with tiny widths, its state dict as ``main_pretrain.py`` saves it under ``'model'``;
  ``convmae_ft.safetensors``: the fine-tuning ``ConvViT(global_pool=True)`` state dict;
  ``convmae_io.safetensors`` + ``convmae.json``: uint8 images, the encoder's latent, mask and ``ids_keep``, the
  pixel loss and every 8th predicted value, and the fine-tuned model's eval logits.
* ``videomae.safetensors``, ``videomae_io.safetensors`` + ``videomae.json``: VideoMAE's ``PretrainVisionTransformer`` (16 frames of 32 px,
  2x4x4 tubelets, q/v biases) as ``run_mae_pretraining.py`` saves it under ``'model'`` (``encoder.*``,
  ``encoder_to_decoder``, ``mask_token``, ``decoder.*``), the fine-tuning ``VisionTransformer``
  (``use_mean_pooling``: ``fc_norm`` + ``head``) under ``ft.``, uint8 clips, the official
  ``TubeMaskingGenerator`` mask at 0.9, the encoder's visible tokens, the decoder's predictions of the masked
  tokens (every 4th value) and the fine-tuned logits.
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
from safetensors.torch import save_file

CMAE_COMMIT = "e786a5253504b1c5d5ac4027c485711b58ba4ddd"
CONVMAE_COMMIT = "4c97b4c9ec9c85724bc9594eb7302c803ae58c19"
OUT = Path(__file__).parent
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)

CMAE_FILES = [
    "cmae/models/algorithms/base.py",
    "cmae/models/algorithms/cmae.py",
    "cmae/models/backbones/cmae_vit.py",
    "cmae/models/backbones/mim_cls_vit.py",
    "cmae/models/backbones/vision_transformer.py",
    "cmae/models/backbones/transformer_utils.py",
    "cmae/models/necks/mae_neck.py",
    "cmae/models/necks/nonlinear_neck.py",
    "cmae/models/heads/cmae_head.py",
    "cmae/models/utils/position_embedding.py",
    "cmae/models/utils/helpers.py",
    "cmae/models/utils/embed.py",
    "cmae/utils/gather.py",
]
CONVMAE_FILES = ["vision_transformer.py", "models_convmae.py", "models_convvit.py", "util/pos_embed.py"]
VIDEOMAE_COMMIT = "14ef8d856287c94ef1f985fe30f958eb4ec2c55d"
VIDEOMAE_FILES = ["modeling_pretrain.py", "modeling_finetune.py", "masking_generator.py"]

# tiny CMAE: 32 px, patch 4 (8x8 grid, 2x2-block masking of 16 units), width 48 = 4*4*3 so the official
# feature decoder's output (patch_size**2 * in_chans) equals the encoder width, as at ViT-B (16*16*3 = 768)
CMAE_CFG = dict(
    img_size=32,
    patch_size=4,
    embed_dim=48,
    depth=2,
    num_heads=4,
    mlp_ratio=2.0,
    decoder_dim=32,
    decoder_depth=2,
    decoder_heads=4,
    feature_decoder_depth=1,
    proj_hidden_dim=64,
    proj_dim=32,
    mask_ratio=0.65,
    temperature=0.07,
    batch=4,
    num_classes=5,
)
CONVMAE_CFG = dict(
    img_size=224,
    conv_dims=[16, 24],
    conv_depths=[1, 1],
    embed_dim=48,
    depth=2,
    num_heads=4,
    mlp_ratio=2.0,
    decoder_dim=16,
    decoder_depth=1,
    decoder_heads=2,
    mask_ratio=0.75,
    batch=2,
    num_classes=5,
)


def git_show(repo: str, commit: str, name: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", repo, "show", f"{commit}:{name}"], capture_output=True, text=True, check=True
    ).stdout


def full_hash(repo: str, commit: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", repo, "rev-parse", commit], capture_output=True, text=True, check=True
    ).stdout.strip()


REGISTRY = """
class _Registry(dict):
    def register_module(self, *args, **kwargs):
        def add(cls):
            self[cls.__name__] = cls
            return cls
        return add
    def build(self, cfg):
        cfg = dict(cfg)
        return self[cfg.pop("type")](**cfg)
MODELS = _Registry()
"""


def import_cmae(repo: str, tmp: Path) -> types.SimpleNamespace:
    for name in CMAE_FILES:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(git_show(repo, CMAE_COMMIT, name))
    # stub package glue: empty __init__s, the registry, and the names the modules import from the packages
    for pkg in [
        "cmae",
        "cmae/models",
        "cmae/models/algorithms",
        "cmae/models/backbones",
        "cmae/models/necks",
        "cmae/models/heads",
    ]:
        (tmp / pkg / "__init__.py").write_text("")
    (tmp / "cmae/registry.py").write_text(REGISTRY)
    (tmp / "cmae/models/utils/__init__.py").write_text(
        "from .position_embedding import build_2d_sincos_position_embedding\n"
        "from .helpers import to_2tuple\nfrom .embed import resize_pos_embed\n"
    )
    (tmp / "cmae/utils/__init__.py").write_text("from .gather import concat_all_gather\n")
    sys.path.insert(0, str(tmp))
    from cmae.models.algorithms.cmae import CMAE  # noqa: PLC0415
    from cmae.models.backbones.cmae_vit import CMAEViT  # noqa: PLC0415, F401  (registers)
    from cmae.models.backbones.mim_cls_vit import MIMVisionTransformer  # noqa: PLC0415
    from cmae.models.heads.cmae_head import CMAEPretrainHead  # noqa: PLC0415, F401
    from cmae.models.necks.mae_neck import MAEPretrainDecoder  # noqa: PLC0415, F401
    from cmae.models.necks.nonlinear_neck import NonLinearNeck  # noqa: PLC0415, F401

    return types.SimpleNamespace(CMAE=CMAE, MIMVisionTransformer=MIMVisionTransformer)


def import_convmae(repo: str, tmp: Path) -> types.SimpleNamespace:
    root = tmp / "convmae"
    for name in CONVMAE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(git_show(repo, CONVMAE_COMMIT, name))
    (root / "util/__init__.py").write_text("")
    np.float = float  # util/pos_embed.py uses np.float (removed in NumPy 2)
    sys.path.insert(0, str(root))
    import models_convmae  # noqa: PLC0415
    import models_convvit  # noqa: PLC0415

    return types.SimpleNamespace(convmae=models_convmae, convvit=models_convvit)


VIDEOMAE_CFG = dict(
    img_size=32,
    patch_size=4,
    num_frames=16,
    tubelet_size=2,
    embed_dim=48,
    depth=2,
    num_heads=4,
    mlp_ratio=2.0,
    decoder_dim=32,
    decoder_depth=1,
    decoder_heads=4,
    mask_ratio=0.9,
    batch=2,
    num_classes=5,
)


def import_videomae(repo: str, tmp: Path) -> types.SimpleNamespace:
    root = tmp / "videomae"
    root.mkdir()
    for name in VIDEOMAE_FILES:
        (root / name).write_text(git_show(repo, VIDEOMAE_COMMIT, name))
    sys.path.insert(0, str(root))
    import masking_generator  # noqa: PLC0415
    import modeling_finetune  # noqa: PLC0415
    import modeling_pretrain  # noqa: PLC0415

    return types.SimpleNamespace(pretrain=modeling_pretrain, finetune=modeling_finetune, masks=masking_generator)


def make_videomae(ns: types.SimpleNamespace, g: torch.Generator) -> tuple[dict, dict, dict]:
    from functools import partial  # noqa: PLC0415

    c = VIDEOMAE_CFG
    norm = partial(torch.nn.LayerNorm, eps=1e-6)
    pixels = 3 * c["tubelet_size"] * c["patch_size"] ** 2
    model = ns.pretrain.PretrainVisionTransformer(
        img_size=c["img_size"],
        patch_size=c["patch_size"],
        encoder_embed_dim=c["embed_dim"],
        encoder_depth=c["depth"],
        encoder_num_heads=c["num_heads"],
        encoder_num_classes=0,
        decoder_num_classes=pixels,
        decoder_embed_dim=c["decoder_dim"],
        decoder_depth=c["decoder_depth"],
        decoder_num_heads=c["decoder_heads"],
        mlp_ratio=c["mlp_ratio"],
        qkv_bias=True,
        norm_layer=norm,
        tubelet_size=c["tubelet_size"],
    )
    # 16 frames: the pre-training encoder's PatchEmbed keeps its default num_frames=16 (only fine-tuning
    # passes ``all_frames``), so its sinusoid table has 16 / 2 x 8 x 8 rows
    randomise(model, g)
    grid = (c["num_frames"] // c["tubelet_size"], c["img_size"] // c["patch_size"], c["img_size"] // c["patch_size"])
    generator = ns.masks.TubeMaskingGenerator(grid, c["mask_ratio"])
    np.random.seed(3)
    mask = torch.from_numpy(np.stack([generator() for _ in range(c["batch"])])).bool()
    raw = torch.randint(
        0, 256, (c["batch"], 3, c["num_frames"], c["img_size"], c["img_size"]), generator=g, dtype=torch.uint8
    )
    video = (raw.float() - MEAN.unsqueeze(2)) / STD.unsqueeze(2)
    model.eval()
    with torch.no_grad():
        latent = model.encoder.forward_features(video, mask)
        pred = model(video, mask)
    ft = ns.finetune.VisionTransformer(
        img_size=c["img_size"],
        patch_size=c["patch_size"],
        embed_dim=c["embed_dim"],
        depth=c["depth"],
        num_heads=c["num_heads"],
        mlp_ratio=c["mlp_ratio"],
        qkv_bias=True,
        norm_layer=norm,
        num_classes=c["num_classes"],
        all_frames=c["num_frames"],
        tubelet_size=c["tubelet_size"],
        use_mean_pooling=True,
    )
    randomise(ft, g)
    ft.eval()
    with torch.no_grad():
        logits = ft(video)
    weights = {**state(model, "model."), **state(ft, "ft.")}
    # every 4th of the 96 predicted values per masked token is kept (the file stays small)
    io = {
        "clips_uint8": raw,
        "mask": mask,
        "latent": latent.contiguous(),
        "pred_masked_every4": pred[..., ::4].contiguous(),
        "ft_logits": logits,
    }
    meta = {
        "repository": "MCG-NJU/VideoMAE",
        "commit": VIDEOMAE_COMMIT,
        **c,
        "img_norm_cfg": {"mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist()},
        "visible_per_clip": int((~mask[0]).sum()),
    }
    return weights, io, meta


def randomise(module: torch.nn.Module, g: torch.Generator) -> None:
    """Random values for every parameter and buffer: weights ~ N(0, 1/fan_in), norms ~ 1 + N(0, .2^2)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2 and "pos_embed" not in name and "token" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            elif name.endswith("weight") and p.ndim == 1:  # LayerNorm / BN scale
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # biases, tokens, position embeddings
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if b.dtype == torch.long:
                b.fill_(7)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            else:
                b.copy_(torch.randn(b.shape, generator=g))


def state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def images(g: torch.Generator, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (stored) and their normalised float version (what the official pipeline feeds)."""
    raw = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    return raw, (raw.float() - MEAN) / STD


def make_cmae(ns: types.SimpleNamespace, g: torch.Generator) -> tuple[dict, dict, dict]:
    c = CMAE_CFG
    arch = dict(
        embed_dims=c["embed_dim"],
        num_layers=c["depth"],
        num_heads=c["num_heads"],
        feedforward_channels=int(c["embed_dim"] * c["mlp_ratio"]),
    )
    num_patches = (c["img_size"] // c["patch_size"]) ** 2

    def decoder(depth: int) -> dict:
        return dict(
            type="MAEPretrainDecoder",
            num_patches=num_patches,
            patch_size=c["patch_size"],
            in_chans=3,
            embed_dim=c["embed_dim"],
            decoder_embed_dim=c["decoder_dim"],
            decoder_depth=depth,
            decoder_num_heads=c["decoder_heads"],
            mlp_ratio=c["mlp_ratio"],
        )

    def neck(i: int) -> dict:  # the official projector / predictor settings
        return dict(
            type="NonLinearNeck",
            in_channels=i,
            hid_channels=c["proj_hidden_dim"],
            out_channels=c["proj_dim"],
            num_layers=2,
            with_bias=True,
            with_last_bn=False,
            with_avg_pool=False,
        )

    model = ns.CMAE(
        backbone=dict(
            online=dict(
                type="CMAEViT",
                arch=arch,
                img_size=c["img_size"],
                patch_size=c["patch_size"],
                mask_ratio=c["mask_ratio"],
            ),
            target=dict(
                type="CMAEViT",
                arch=arch,
                img_size=c["img_size"],
                patch_size=c["patch_size"],
                mask_ratio=0.0,
                final_norm=False,
            ),
        ),
        neck=dict(
            pixel=decoder(c["decoder_depth"]),
            feature=decoder(c["feature_decoder_depth"]),
            projector=neck(c["embed_dim"]),
        ),
        head=dict(
            type="CMAEPretrainHead",
            predictor=neck(c["proj_dim"]),
            temperature=c["temperature"],
            norm_pix=True,
            patch_size=c["patch_size"],
            ct_weight=1.0,
            rc_weight=1.0,
        ),
    )
    randomise(model, g)
    weights = state(model)
    raw, img = images(g, c["batch"], c["img_size"])
    raw_t, img_t = images(g, c["batch"], c["img_size"])
    captured: dict[str, torch.Tensor] = {}
    model.backbone.register_forward_hook(lambda m, i, o: captured.update(mask=o[1], ids_restore=o[2]))
    model.pixel_decoder.register_forward_hook(lambda m, i, o: captured.update(pred=o))
    model.train()
    torch.manual_seed(1)  # the official mask is drawn with torch.rand inside CMAEViT.random_masking
    losses = model(img, img_t=img_t, mode="loss")
    loss = losses["loss_rc"] + losses["loss_ct"]
    loss.backward()
    grads = {
        f"grad.{k}": p.grad.detach().clone()
        for k, p in model.named_parameters()
        if p.grad is not None and k in GRAD_KEYS
    }
    mask = captured["mask"].bool()
    ids_keep = captured["ids_restore"].argsort(dim=1)[:, : int((~mask[0]).sum())]
    io = {
        "online_uint8": raw,
        "target_uint8": raw_t,
        "mask": mask,
        "ids_keep": ids_keep.contiguous(),
        "pred_pixel": captured["pred"].detach().contiguous(),
        "loss_rc": losses["loss_rc"].detach().reshape(1),
        "loss_ct": losses["loss_ct"].detach().reshape(1),
        **grads,
    }

    # fine-tuning: MIMVisionTransformer(final_norm=False) -> mean of patch tokens -> fc_norm -> head.head
    ft = ns.MIMVisionTransformer(arch=arch, img_size=c["img_size"], patch_size=c["patch_size"], final_norm=False)
    head = torch.nn.Linear(c["embed_dim"], c["num_classes"])
    randomise(ft, g)
    randomise(head, g)
    ft.eval()
    with torch.no_grad():
        logits = head(ft(img))
    io.update({**state(ft, "ft.backbone."), **state(head, "ft.head.head."), "ft_logits": logits})
    meta = {
        "repository": "ZhichengHuang/CMAE",
        "commit": FULL["cmae"],
        **c,
        "norm_pix": True,
        "img_norm_cfg": {"mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist()},
        "grad_keys": sorted(grads),
        "loss_rc": losses["loss_rc"].item(),
        "loss_ct": losses["loss_ct"].item(),
    }
    return weights, io, meta


GRAD_KEYS = {
    "backbone.patch_embed.projection.weight",
    "backbone.layers.0.attn.qkv.weight",
    "backbone.ln1.weight",
    "pixel_decoder.decoder_pred.weight",
    "pixel_decoder.mask_token",
    "feature_decoder.decoder_blocks.0.ffn.layers.0.0.weight",
    "projector.fc0.weight",
    "projector.bn0.weight",
    "head.predictor.fc1.weight",
}
FULL: dict[str, str] = {}


def make_convmae(ns: types.SimpleNamespace, g: torch.Generator) -> tuple[dict, dict, dict, dict]:
    from functools import partial  # noqa: PLC0415

    c = CONVMAE_CFG
    embed = [*c["conv_dims"], c["embed_dim"]]
    depth = [*c["conv_depths"], c["depth"]]
    mlp = [c["mlp_ratio"]] * 3
    model = ns.convmae.MaskedAutoencoderConvViT(
        img_size=[224, 56, 28],
        patch_size=[4, 2, 2],
        embed_dim=embed,
        depth=depth,
        num_heads=c["num_heads"],
        decoder_embed_dim=c["decoder_dim"],
        decoder_depth=c["decoder_depth"],
        decoder_num_heads=c["decoder_heads"],
        mlp_ratio=mlp,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        norm_pix_loss=True,
    )
    randomise(model, g)
    raw, img = images(g, c["batch"], c["img_size"])
    model.eval()  # no dropout / drop path anywhere; eval only fixes the mode
    torch.manual_seed(2)
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(img, c["mask_ratio"])
        pred = model.forward_decoder(latent, ids_restore)
        loss = model.forward_loss(img, pred, mask)
    keep = int((mask[0] == 0).sum())
    ids_keep = ids_restore.argsort(dim=1)[:, :keep]  # the official visible order (ids_shuffle[:, :len_keep])
    # every 8th of the 768 predicted values per token is kept (the file stays small); the loss covers all
    io = {
        "images_uint8": raw,
        "latent": latent.contiguous(),
        "mask": mask.bool(),
        "ids_keep": ids_keep.contiguous(),
        "pred_every8": pred[..., ::8].contiguous(),
        "loss": loss.reshape(1),
    }
    ft = ns.convvit.ConvViT(
        global_pool=True,
        img_size=[224, 56, 28],
        patch_size=[4, 2, 2],
        embed_dim=embed,
        depth=depth,
        num_heads=c["num_heads"],
        mlp_ratio=mlp,
        qkv_bias=True,
        num_classes=c["num_classes"],
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    )
    randomise(ft, g)
    ft.eval()
    with torch.no_grad():
        logits = ft(img)
    io["ft_logits"] = logits
    meta = {
        "repository": "Alpha-VL/ConvMAE",
        "commit": FULL["convmae"],
        **c,
        "norm_pix_loss": True,
        "img_norm_cfg": {"mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist()},
        "loss": loss.item(),
    }
    return state(model), state(ft), io, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cmae-repo", required=True, help="git directory of a clone of ZhichengHuang/CMAE")
    parser.add_argument("--convmae-repo", required=True, help="git directory of a clone of Alpha-VL/ConvMAE")
    parser.add_argument("--videomae-repo", required=True, help="git directory of a clone of MCG-NJU/VideoMAE")
    args = parser.parse_args()
    FULL["cmae"] = full_hash(args.cmae_repo, CMAE_COMMIT)
    FULL["convmae"] = full_hash(args.convmae_repo, CONVMAE_COMMIT)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        try:
            import cv2  # noqa: F401, PLC0415
        except ImportError:  # mmcv.image imports cv2 at import time; nothing here calls it
            (tmp_path / "cv2").mkdir()
            (tmp_path / "cv2/__init__.py").write_text("def __getattr__(name):\n    return 0\n")
            sys.path.insert(0, str(tmp_path))
        # one CPU process: the head's label line calls dist.get_rank() and .cuda()
        torch.distributed.get_rank = lambda *a, **k: 0
        torch.Tensor.cuda = lambda self, *a, **k: self
        cmae = import_cmae(args.cmae_repo, tmp_path)
        convmae = import_convmae(args.convmae_repo, tmp_path)
        weights, io, meta = make_cmae(cmae, torch.Generator().manual_seed(10))
        save_file(weights, str(OUT / "cmae_vit.safetensors"), metadata={"format": "official CMAE runner state_dict"})
        save_file(io, str(OUT / "cmae_vit_io.safetensors"))
        (OUT / "cmae_vit.json").write_text(json.dumps(meta, indent=1) + "\n")
        weights, ft, io, meta = make_convmae(convmae, torch.Generator().manual_seed(20))
        save_file(weights, str(OUT / "convmae.safetensors"), metadata={"format": "official ConvMAE pre-training model"})
        save_file(ft, str(OUT / "convmae_ft.safetensors"), metadata={"format": "official ConvMAE fine-tuned ConvViT"})
        save_file(io, str(OUT / "convmae_io.safetensors"))
        (OUT / "convmae.json").write_text(json.dumps(meta, indent=1) + "\n")
        weights, io, meta = make_videomae(
            import_videomae(args.videomae_repo, tmp_path), torch.Generator().manual_seed(30)
        )
        save_file(weights, str(OUT / "videomae.safetensors"))
        save_file(io, str(OUT / "videomae_io.safetensors"))
        (OUT / "videomae.json").write_text(json.dumps(meta, indent=1) + "\n")
    for name in sorted(p.name for p in OUT.glob("*.safetensors")):
        print(f"{name}: {(OUT / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
