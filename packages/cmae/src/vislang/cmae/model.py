"""CMAE: Contrastive Masked Autoencoders (Huang et al., 2022) and CMAE-V (Lu et al., 2023).

The model reads top to bottom like the paper's Fig. 2:

1. **Online branch** (Sec. 3.1) -- a ViT encoder that sees only the *visible* patches of a masked
   view (MAE's asymmetric encoder); 2x2-block masking at ratio 0.65 as in the official code, or
   MAE's per-patch random masking. Its latent feeds
   - a **pixel decoder** (512-d, depth 8) that reconstructs the masked patches, loss = MSE on
     per-patch-normalised pixels of the masked patches only (Sec. 3.1, MAE's ``norm_pix_loss``);
   - a **feature decoder** (512-d, depth 2, Sec. 3.3) that "completes" the masked positions in feature
     space; its outputs are averaged and go through the **projector** and the **predictor**.
2. **Target branch** (Sec. 3.2) -- a momentum (EMA) copy of the encoder and projector, run on the
   *full*, pixel-shifted, colour-augmented view, without the final LayerNorm and without gradients; its
   patch tokens are averaged and projected.
3. **Losses** (Sec. 3.4) -- reconstruction + InfoNCE(q, k) with tau = 0.07 and MoCo v3's 2*tau scaling,
   keys gathered from every process.

CMAE-V replaces the image ViT by a video ViT on 2x16x16 tubelets with tube masking and VideoMAE's
per-channel normalised target; the positive view comes from a temporal shift (see ``data.py``). The
hybrid ``convvit`` backbone is ConvMAE's ConvViT: convolutional stages with *masked convolution* so
masked regions cannot leak into visible ones, a transformer stage on the visible tokens only, and
multi-scale fusion of the convolutional stages into the output.

Encoder parameters use timm's ``VisionTransformer`` names (``patch_embed.proj``, ``blocks.{i}``,
``norm``, ``cls_token``, ``pos_embed``), so MAE/timm weights load unchanged (``convert.py``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from vislang.shared.losses import info_nce

__all__ = [
    "PRESETS",
    "CMAE",
    "PresetName",
    "CMAEClassifier",
    "CMAEConfig",
    "ConvViTEncoder",
    "MaskedDecoder",
    "NonLinearNeck",
    "ViTEncoder",
    "build_classifier",
    "build_cmae",
    "build_encoder",
    "cosine_momentum",
    "get_config",
    "mae_sincos_pos_embed",
    "patchify",
    "sample_mask",
    "unpatchify",
    "videomae_sinusoid_pos_embed",
]


@dataclass
class CMAEConfig:
    """Sizes and switches of a CMAE / CMAE-V model; named presets are in ``PRESETS``.

    Args:
        img_size: input side (square); 224 in the paper.
        patch_size: ViT patch side (the transformer stage's for ``convvit``: the product of its three
            stage strides).
        num_frames: 1 for images; frames per clip for CMAE-V (16 in VideoMAE's recipe).
        tubelet_size: frames per video token (2).
        backbone: ``vit`` (plain ViT) or ``convvit`` (ConvMAE's hybrid).
        embed_dim / depth / num_heads / mlp_ratio: the transformer (stage 3 for ``convvit``).
        conv_dims / conv_depths / conv_strides: ``convvit`` stages 1-2 widths, block counts and the
            strides of the three stage patch embeddings (ConvMAE-B: (256, 384), (2, 2), (4, 2, 2)).
        decoder_dim / decoder_depth / decoder_heads: pixel decoder (512, 8, 16).
        feature_decoder_depth: feature decoder depth (2); same width and heads as the pixel decoder.
        proj_hidden_dim / proj_dim: projector and predictor widths (1536, 256).
        mask_ratio: fraction of patches masked (0.65 for CMAE's block masking, 0.75 MAE, 0.9 VideoMAE).
        mask_type: ``block`` (CMAE: units of ``mask_block`` x ``mask_block`` patches) or ``random``
            (MAE: per-patch). Video masks are tubes: one 2-D mask repeated over time (VideoMAE).
        mask_block: side of a block-masking unit in patches (2 -> 32x32 px at patch 16).
        temperature: InfoNCE tau (0.07).
        rc_weight / ct_weight: weights of the reconstruction and contrastive losses (1.0 / 1.0).
        contrastive_scale_2tau: multiply the InfoNCE by 2*tau as the official head does (MoCo v3).
        norm_pix_loss: per-patch normalised reconstruction target (per channel for video).
        drop_path_rate: stochastic depth of the encoder (fine-tuning: 0.1).
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_frames: int = 1
    tubelet_size: int = 2
    backbone: Literal["vit", "convvit"] = "vit"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    conv_dims: tuple[int, int] = (256, 384)
    conv_depths: tuple[int, int] = (2, 2)
    conv_strides: tuple[int, int, int] = (4, 2, 2)
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    feature_decoder_depth: int = 2
    proj_hidden_dim: int = 1536
    proj_dim: int = 256
    mask_ratio: float = 0.65
    mask_type: Literal["block", "random"] = "block"
    mask_block: int = 2
    temperature: float = 0.07
    rc_weight: float = 1.0
    ct_weight: float = 1.0
    contrastive_scale_2tau: bool = True
    norm_pix_loss: bool = True
    drop_path_rate: float = 0.0

    @property
    def is_video(self) -> bool:
        return self.num_frames > 1

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W'); T' = 1 for images."""
        side = self.img_size // self.patch_size
        return (self.num_frames // self.tubelet_size if self.is_video else 1), side, side

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def patch_pixels(self) -> int:
        """Values per reconstructed token: (tubelet x) patch x patch x channels."""
        return (self.tubelet_size if self.is_video else 1) * self.patch_size**2 * self.in_chans


_IMAGE = {
    # tiny: what the demo and the tests train on CPU (32 px images, 4 px patches, 8x8 tokens)
    "tiny": CMAEConfig(
        img_size=32,
        patch_size=4,
        embed_dim=64,
        depth=3,
        num_heads=4,
        decoder_dim=64,
        decoder_depth=1,
        decoder_heads=4,
        feature_decoder_depth=1,
        proj_hidden_dim=256,
        proj_dim=64,
    ),
    "vit_small": CMAEConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base": CMAEConfig(),
    "vit_large": CMAEConfig(embed_dim=1024, depth=24, num_heads=16),
    # ConvMAE's ConvViT-B: stages 256-d x2 (stride 4), 384-d x2 (stride 2), 768-d x11 transformer (stride 2)
    "convvit_base": CMAEConfig(backbone="convvit", depth=11),
    "convvit_tiny": CMAEConfig(
        backbone="convvit",
        img_size=32,
        patch_size=4,
        conv_strides=(1, 2, 2),
        conv_dims=(32, 48),
        conv_depths=(1, 1),
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder_dim=64,
        decoder_depth=1,
        decoder_heads=4,
        feature_decoder_depth=1,
        proj_hidden_dim=256,
        proj_dim=64,
    ),
}
# CMAE-V: VideoMAE's 16 frames, 2x16x16 tubelets, tube masking 0.9 (the ratio used with the contrastive
# branch is not given in the report: a hyper-parameter) and VideoMAE's pixel decoder (depth 4; width 192 /
# 384 / 512 with 3 / 6 / 8 heads for S / B / L). The feature decoder keeps CMAE's depth 2 at that width
# (an assumption: the report gives no video decoder sizes).
_VIDEO_DECODERS = {"vit_small": (192, 3), "vit_base": (384, 6), "vit_large": (512, 8), "convvit_base": (384, 6)}
_VIDEO = {
    f"video_{name}": replace(
        cfg, num_frames=16 if name != "tiny" else 4, mask_ratio=0.9, mask_type="random", mask_block=1
    )
    for name, cfg in _IMAGE.items()
    if name != "convvit_tiny"
}
for _name, (_dim, _heads) in _VIDEO_DECODERS.items():
    _VIDEO[f"video_{_name}"] = replace(
        _VIDEO[f"video_{_name}"], decoder_dim=_dim, decoder_heads=_heads, decoder_depth=4
    )
_VIDEO["video_tiny"] = replace(_VIDEO["video_tiny"], mask_ratio=0.75)
PRESETS: dict[str, CMAEConfig] = {**_IMAGE, **_VIDEO}
PresetName = Literal[
    "tiny",
    "vit_small",
    "vit_base",
    "vit_large",
    "convvit_base",
    "convvit_tiny",
    "video_tiny",
    "video_vit_small",
    "video_vit_base",
    "video_vit_large",
    "video_convvit_base",
]
"""The names of ``PRESETS`` (a test keeps the two equal), for typed ``preset`` arguments."""


def get_config(preset: PresetName, **overrides: object) -> CMAEConfig:
    """The named preset with some fields replaced (``mask_ratio=0.75``, ``drop_path_rate=0.1`` ...)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    unknown = set(overrides) - set(CMAEConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown CMAEConfig fields {sorted(unknown)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


# ---- position embeddings ------------------------------------------------------------------------


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """MAE's 1-D sin-cos: first half sin, second half cos, frequencies 1/10000^(2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def mae_sincos_pos_embed(dim: int, grid: int, num_prefix: int = 1) -> Tensor:
    """MAE's fixed 2-D sin-cos position embedding, ``(1, num_prefix + grid**2, dim)`` with zero prefix rows.

    Layout [sin(col), cos(col), sin(row), cos(row)] (MAE's numpy version; mmselfsup/CMAE swap the two
    halves, which is why converted CMAE weights keep their stored ``pos_embed``).
    """
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, cols.flatten()), _sincos_1d(dim // 2, rows.flatten())], dim=1)
    return torch.cat([torch.zeros(num_prefix, dim, dtype=emb.dtype), emb]).float().unsqueeze(0)


def videomae_sinusoid_pos_embed(num_tokens: int, dim: int) -> Tensor:
    """VideoMAE's fixed 1-D sinusoid table over all T'*H'*W' tokens, sin/cos interleaved (even/odd dims)."""
    position = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)
    exponent = torch.div(torch.arange(dim), 2, rounding_mode="floor").double() * 2 / dim
    table = position / torch.pow(10000.0, exponent).unsqueeze(0)
    table[:, 0::2] = table[:, 0::2].sin()
    table[:, 1::2] = table[:, 1::2].cos()
    return table.float().unsqueeze(0)


# ---- patches and masks ---------------------------------------------------------------------------


def patchify(x: Tensor, patch: int, tubelet: int = 1) -> Tensor:
    """``(B, C, H, W)`` or ``(B, C, T, H, W)`` -> ``(B, N, [tubelet *] patch * patch, C)`` (MAE's order)."""
    if x.ndim == 4:
        x = x.unsqueeze(2)
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b t' h' w' pt ph pw c
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch, c)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int, int], channels: int = 3, tubelet: int = 1) -> Tensor:
    """Inverse of ``patchify`` (patches may be flattened to ``(B, N, P*C)``); images come back 4-D."""
    t, h, w = grid
    b = patches.shape[0]
    x = patches.reshape(b, t, h, w, tubelet, patch, patch, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    x = x.reshape(b, channels, t * tubelet, h * patch, w * patch)
    return x[:, :, 0] if t * tubelet == 1 else x


def sample_mask(
    batch: int,
    grid: tuple[int, int, int],
    ratio: float,
    mask_type: Literal["block", "random"] = "block",
    block: int = 2,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Which tokens the online encoder sees: the same count for every sample, so batches stay dense.

    ``block`` (CMAE's ``CMAEViT.random_masking``): random noise over the (H'/b) x (W'/b) units of
    b x b patches, keep ``int(units * (1 - ratio))`` of them; at 224 px, 49 units, 17 kept -> 68 of 196
    patches visible (65.3 % masked). ``random``: MAE's per-patch shuffle. Videos (T' > 1) use tube masking
    (VideoMAE): the spatial mask is shared by every time slice, and ``int(ratio * H'W')`` positions are
    masked per slice as VideoMAE counts them (160 of 1568 tokens visible at 0.9, not 152).

    Returns:
        ``ids_keep`` ``(B, K)`` sorted indices of the visible tokens in ``range(T'*H'*W')`` and ``mask``
        ``(B, N)`` bool, True = masked (MAE's convention).
    """
    t, h, w = grid
    if mask_type == "block":
        if h % block or w % block:
            raise ValueError(f"block masking needs the token grid {h}x{w} divisible by the block {block}")
        uh, uw = h // block, w // block
    elif mask_type == "random":
        uh, uw, block = h, w, 1
    else:
        raise ValueError(f"mask_type must be 'block' or 'random', got {mask_type!r}")
    units = uh * uw
    # images keep int(units * (1 - ratio)) (CMAE's block masking, MAE); tubes mask int(ratio * units) per
    # time slice (VideoMAE's TubeMaskingGenerator): at 0.9, 196 - 176 = 20 visible per slice, 160 per clip
    keep = units - int(ratio * units) if t > 1 else int(units * (1 - ratio))
    if not 0 < keep <= units:
        raise ValueError(f"mask_ratio {ratio} leaves {keep} of {units} units visible")
    noise = torch.rand(batch, units, generator=generator, device=generator.device if generator else device)
    kept_units = noise.argsort(dim=1)[:, :keep].to(device)  # (B, keep): unit index = ur * uw + uc
    # expand each kept unit to its block x block patches
    ur, uc = kept_units // uw, kept_units % uw
    dr, dc = torch.meshgrid(torch.arange(block, device=device), torch.arange(block, device=device), indexing="ij")
    rows = ur[:, :, None] * block + dr.reshape(1, 1, -1)
    cols = uc[:, :, None] * block + dc.reshape(1, 1, -1)
    spatial = (rows * w + cols).reshape(batch, -1)  # (B, keep * block^2)
    # tube: the same spatial positions in every time slice
    ids_keep = (torch.arange(t, device=device).reshape(1, t, 1) * h * w + spatial.unsqueeze(1)).reshape(batch, -1)
    ids_keep = ids_keep.sort(dim=1).values
    mask = torch.ones(batch, t * h * w, dtype=torch.bool, device=device)
    mask.scatter_(1, ids_keep, False)
    return ids_keep, mask


def _drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to ``rate`` over the blocks (timm/MAE)."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


def _gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ---- encoders ------------------------------------------------------------------------------------


class VideoPatchEmbed(nn.Module):
    """Tubelet embedding (VideoMAE): Conv3d with kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, patch: int, tubelet: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, N, D)
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTEncoder(nn.Module):
    """ViT on timm blocks that encodes only the tokens listed in ``ids_keep`` (MAE Sec. 3, "MAE encoder").

    Images: a cls token and MAE's fixed 2-D sin-cos ``pos_embed`` (timm layout ``(1, 1 + N, D)``); videos:
    no cls token and VideoMAE's 1-D sinusoid over T'*H'*W' tokens. ``pos_embed`` is a frozen parameter so
    checkpoints carry it, as timm's and the official ones do.
    """

    def __init__(self, config: CMAEConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.num_prefix_tokens = 0 if c.is_video else 1
        if c.is_video:
            self.patch_embed: nn.Module = VideoPatchEmbed(c.patch_size, c.tubelet_size, c.in_chans, c.embed_dim)
            pos = videomae_sinusoid_pos_embed(c.num_patches, c.embed_dim)
        else:
            self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
            pos = mae_sincos_pos_embed(c.embed_dim, c.grid[1])
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        rates = _drop_path_rates(c.drop_path_rate, c.depth)
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, qkv_bias=True, drop_path=rates[i]) for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE: xavier on the flattened patch-embedding kernel, xavier Linear, cls ~ N(0, .02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if hasattr(self, "cls_token"):
            nn.init.normal_(self.cls_token, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, ids_keep: Tensor | None = None, final_norm: bool = True) -> Tensor:
        """``(B, prefix + K, D)`` tokens of the visible patches (all when ``ids_keep`` is None)."""
        p = self.num_prefix_tokens
        tokens = self.patch_embed(x) + self.pos_embed[:, p:]
        if ids_keep is not None:
            tokens = _gather_tokens(tokens, ids_keep)  # MAE: drop the masked tokens before the blocks
        if p:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens) if final_norm else tokens


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``(B, C, *spatial)`` map, as ConvMAE applies ``nn.LayerNorm``.

    ConvMAE's convolutional stages use ``nn.LayerNorm``'s default eps 1e-5 (its transformer stage 1e-6).
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class _ConvMlp(nn.Module):
    """1x1-conv MLP (ConvMAE's ``CMlp``): fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, conv: type[nn.Module]) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = conv(dim, hidden, 1), nn.GELU(), conv(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvBlock(nn.Module):
    """ConvMAE's ``CBlock``: norm -> 1x1 -> 5x5 depth-wise -> 1x1, then a 1x1-conv MLP, both residual.

    *Masked convolution*: the depth-wise conv is the only op that mixes positions, so its input is
    multiplied by the keep-mask; masked regions contribute zeros and cannot leak into visible ones.
    Parameter names are ConvMAE's (``norm1``, ``conv1``, ``attn``, ``conv2``, ``norm2``, ``mlp.fc1/fc2``).
    """

    def __init__(self, dim: int, mlp_ratio: float, dims: int, drop_path: float = 0.0) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        # videos: (3, 5, 5) depth-wise kernels (an assumption, VideoConvMAE's code is not public)
        kernel, pad = ((3, 5, 5), (1, 2, 2)) if dims == 3 else (5, 2)
        self.norm1 = _ChannelNorm(dim)
        self.conv1 = conv(dim, dim, 1)
        self.attn = conv(dim, dim, kernel, padding=pad, groups=dim)
        self.conv2 = conv(dim, dim, 1)
        self.norm2 = _ChannelNorm(dim)
        self.mlp = _ConvMlp(dim, int(dim * mlp_ratio), conv)
        self.drop_path = nn.Identity() if drop_path == 0 else DropPath(drop_path)

    def forward(self, x: Tensor, keep: Tensor | None) -> Tensor:
        y = self.conv1(self.norm1(x))
        if keep is not None:
            y = y * keep
        x = x + self.drop_path(self.conv2(self.attn(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _ConvPatchEmbed(nn.Module):
    """Strided conv -> LayerNorm -> GELU (ConvMAE's stage ``PatchEmbed``, all three stages)."""

    def __init__(self, in_dim: int, out_dim: int, stride: tuple[int, ...], dims: int) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.proj = conv(in_dim, out_dim, kernel_size=stride, stride=stride)
        self.norm = _ChannelNorm(out_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.proj(x)))


class ConvViTEncoder(nn.Module):
    """ConvMAE's hybrid ConvViT (ConvMAE Sec. 3): two convolutional stages, then a ViT stage on visible tokens.

    Images 224 -> stage 1 at 56x56 (stride 4), stage 2 at 28x28 (stride 2), stage 3 transformer on the 14x14
    grid (stride 2). The 14x14 mask is up-sampled to each stage's resolution and multiplied into the
    depth-wise convs (masked convolution). Multi-scale fusion: stage-1/2 maps are projected to the stage-3
    width by strided convs and added to the stage-3 output at the visible positions. No cls token.
    Videos use Conv3d with the tubelet as the first stage's temporal stride.

    ``fuse=False`` builds the encoder without the fusion convs, as ConvMAE's fine-tuning ``ConvViT`` is
    (its ``forward_features`` runs the three stages and the final norm only). Parameter names are
    ConvMAE's, except ``blocks`` for its ``blocks3`` (the converter renames it).
    """

    num_prefix_tokens = 0

    def __init__(self, config: CMAEConfig, fuse: bool = True) -> None:
        super().__init__()
        c = config
        self.config = c
        self.fuse = fuse
        dims = 3 if c.is_video else 2
        s1, s2, s3 = c.conv_strides
        if s1 * s2 * s3 != c.patch_size:
            raise ValueError(f"conv_strides {c.conv_strides} must multiply to patch_size {c.patch_size}")
        t1 = (c.tubelet_size,) if dims == 3 else ()
        t0 = (1,) if dims == 3 else ()
        self.strides = (t1 + (s1, s1), t0 + (s2, s2), t0 + (s3, s3))
        d1, d2 = c.conv_dims
        rates = _drop_path_rates(c.drop_path_rate, sum(c.conv_depths) + c.depth)
        self.patch_embed1 = _ConvPatchEmbed(c.in_chans, d1, self.strides[0], dims)
        self.blocks1 = nn.ModuleList(ConvBlock(d1, c.mlp_ratio, dims, rates[i]) for i in range(c.conv_depths[0]))
        self.patch_embed2 = _ConvPatchEmbed(d1, d2, self.strides[1], dims)
        self.blocks2 = nn.ModuleList(
            ConvBlock(d2, c.mlp_ratio, dims, rates[c.conv_depths[0] + i]) for i in range(c.conv_depths[1])
        )
        self.patch_embed3 = _ConvPatchEmbed(d2, c.embed_dim, self.strides[2], dims)
        self.patch_embed4 = nn.Linear(c.embed_dim, c.embed_dim)
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        if fuse:  # multi-scale fusion: stage maps -> token grid at the transformer width
            fuse1 = tuple(a * b for a, b in zip(self.strides[1], self.strides[2], strict=True))
            self.stage1_output_decode = conv(d1, c.embed_dim, fuse1, stride=fuse1)
            self.stage2_output_decode = conv(d2, c.embed_dim, self.strides[2], stride=self.strides[2])
        pos = (
            videomae_sinusoid_pos_embed(c.num_patches, c.embed_dim)
            if c.is_video
            else mae_sincos_pos_embed(c.embed_dim, c.grid[1], num_prefix=0)
        )
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        offset = sum(c.conv_depths)
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, qkv_bias=True, drop_path=rates[offset + i])
            for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)

    def _keep_maps(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Token mask (B, N) -> keep maps (1 = visible) at stage-1 and stage-2 resolution."""
        t, h, w = self.config.grid
        keep = (~mask).float().reshape(mask.shape[0], 1, t, h, w)
        maps = []
        for stride_after in (
            tuple(a * b for a, b in zip(self.strides[1], self.strides[2], strict=True)),
            self.strides[2],
        ):
            sh, sw = stride_after[-2:]
            m = keep.repeat_interleave(sh, dim=3).repeat_interleave(sw, dim=4)
            maps.append(m if self.config.is_video else m[:, :, 0])
        return maps[0], maps[1]

    def forward(self, x: Tensor, ids_keep: Tensor | None = None, final_norm: bool = True) -> Tensor:
        keep1 = keep2 = None
        if ids_keep is not None:
            mask = torch.ones(x.shape[0], self.config.num_patches, dtype=torch.bool, device=x.device)
            mask.scatter_(1, ids_keep, False)
            keep1, keep2 = self._keep_maps(mask)
        x = self.patch_embed1(x)
        for block in self.blocks1:
            x = block(x, keep1)
        # each fused token reads only its own patch (kernel = stride), so no masking is needed here
        fused = self.stage1_output_decode(x) if self.fuse else None
        x = self.patch_embed2(x)
        for block in self.blocks2:
            x = block(x, keep2)
        if self.fuse:
            fused = (fused + self.stage2_output_decode(x)).flatten(2).transpose(1, 2)
        tokens = self.patch_embed4(self.patch_embed3(x).flatten(2).transpose(1, 2)) + self.pos_embed
        if ids_keep is not None:
            tokens = _gather_tokens(tokens, ids_keep)
            fused = _gather_tokens(fused, ids_keep) if self.fuse else None
        for block in self.blocks:
            tokens = block(tokens)
        if self.fuse:
            tokens = tokens + fused  # ConvMAE: multi-scale features added after the last block
        return self.norm(tokens) if final_norm else tokens


def build_encoder(config: CMAEConfig, fuse: bool = True) -> ViTEncoder | ConvViTEncoder:
    """The encoder the preset names (plain or hybrid; ``fuse``: the hybrid's multi-scale fusion)."""
    return ConvViTEncoder(config, fuse) if config.backbone == "convvit" else ViTEncoder(config)


# ---- decoders and heads --------------------------------------------------------------------------


class MaskedDecoder(nn.Module):
    """MAE's decoder: visible latents + mask tokens at the masked positions -> per-token predictions.

    Used twice with different depths: the pixel decoder (out = patch pixels) and the feature decoder
    (CMAE Sec. 3.3, out = encoder width), both reading the same online latent.
    """

    def __init__(self, config: CMAEConfig, depth: int, out_dim: int) -> None:
        super().__init__()
        c = config
        self.num_patches = c.num_patches
        self.num_prefix_tokens = 0 if (c.is_video or c.backbone == "convvit") else 1
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        pos = (
            videomae_sinusoid_pos_embed(c.num_patches, c.decoder_dim)
            if c.is_video
            else mae_sincos_pos_embed(c.decoder_dim, c.grid[1], self.num_prefix_tokens)
        )
        self.decoder_pos_embed = nn.Parameter(pos, requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_dim, c.decoder_heads, c.mlp_ratio, qkv_bias=True) for _ in range(depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(c.decoder_dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: Tensor, ids_keep: Tensor) -> Tensor:
        """``(B, prefix + K, D)`` -> ``(B, N, out_dim)`` for every patch position (prefix dropped)."""
        p = self.num_prefix_tokens
        x = self.decoder_embed(latent)
        b, _, dim = x.shape
        full = self.mask_token.to(x.dtype).expand(b, self.num_patches, dim)
        full = full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim), x[:, p:])  # unshuffle
        x = torch.cat([x[:, :p], full], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, p:]


class NonLinearNeck(nn.Module):
    """Projector / predictor (mmselfsup ``NonLinearNeck``): fc0 -> BN -> ReLU -> fc1 without bias.

    Under DDP the BatchNorm should be synchronised (official: SyncBN); Lightning's
    ``trainer.sync_batchnorm: true`` converts it.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc0 = nn.Linear(in_dim, hidden_dim)
        self.bn0 = nn.BatchNorm1d(hidden_dim, eps=1e-6)
        self.fc1 = nn.Linear(hidden_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc1(F.relu(self.bn0(self.fc0(x))))


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, end: float = 1.0) -> float:
    """BYOL's ramp m = end - (end - base)(cos(pi k / K) + 1) / 2; base == end gives the official constant."""
    if total_steps <= 0:
        return end
    return end - (end - base) * (math.cos(math.pi * min(step, total_steps) / total_steps) + 1) / 2


# ---- CMAE ---------------------------------------------------------------------------------------


class CMAE(nn.Module):
    """Online encoder + pixel decoder + feature decoder/projector/predictor; EMA target encoder/projector."""

    def __init__(self, config: CMAEConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        # online branch (Sec. 3.1, 3.3)
        self.encoder = build_encoder(c)
        self.pixel_decoder = MaskedDecoder(c, c.decoder_depth, c.patch_pixels)
        self.feature_decoder = MaskedDecoder(c, c.feature_decoder_depth, c.embed_dim)
        self.projector = NonLinearNeck(c.embed_dim, c.proj_hidden_dim, c.proj_dim)
        self.predictor = NonLinearNeck(c.proj_dim, c.proj_hidden_dim, c.proj_dim)
        # target branch (Sec. 3.2): momentum copies, never trained by gradients
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def sample_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None):
        c = self.config
        return sample_mask(batch, c.grid, c.mask_ratio, c.mask_type, c.mask_block, device, generator)

    def reconstruction_target(self, x: Tensor) -> Tensor:
        """Patch pixels, normalised per patch (images, MAE) or per patch and channel (videos, VideoMAE)."""
        c = self.config
        patches = patchify(x, c.patch_size, c.tubelet_size if c.is_video else 1)  # (B, N, P, C)
        if c.norm_pix_loss:
            dims = (-2,) if c.is_video else (-2, -1)
            mean = patches.mean(dim=dims, keepdim=True)
            var = patches.var(dim=dims, keepdim=True, unbiased=True)
            patches = (patches - mean) / (var + 1e-6).sqrt()
        return patches.flatten(2)

    def forward(
        self, online: Tensor, target: Tensor, ids_keep: Tensor | None = None, mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """One pre-training step's losses.

        Args:
            online: ``(B, C, H, W)`` (or ``(B, C, T, H, W)``) view the online branch masks.
            target: the pixel-shifted (temporally shifted) view of the same crop for the target branch.
            ids_keep / mask: a fixed mask (from ``sample_mask``); drawn at random when omitted.

        Returns:
            ``loss`` (weighted sum), ``loss_rc``, ``loss_ct``, ``pred`` (B, N, P) and ``mask`` (B, N).
        """
        c = self.config
        if ids_keep is None or mask is None:
            ids_keep, mask = self.sample_mask(online.shape[0], online.device)
        # online encoder on the visible tokens only
        latent = self.encoder(online, ids_keep)
        # pixel reconstruction of the masked patches (Eq. 1)
        pred = self.pixel_decoder(latent, ids_keep)
        per_patch = ((pred - self.reconstruction_target(online)) ** 2).mean(dim=-1)
        loss_rc = (per_patch * mask).sum() / mask.sum()
        # feature decoder completes the masked positions; mean -> projector -> predictor = query (Sec. 3.3)
        query = self.predictor(self.projector(self.feature_decoder(latent, ids_keep).mean(dim=1)))
        # target: full view, un-normalised last block output, mean of the patch tokens (Sec. 3.2)
        with torch.no_grad():
            tokens = self.target_encoder(target, final_norm=False)
            key = self.target_projector(tokens[:, self.target_encoder.num_prefix_tokens :].mean(dim=1))
        # InfoNCE against keys of the whole (all-gathered) batch, tau = 0.07, x 2 tau (Eq. 3)
        loss_ct = info_nce(F.normalize(query, dim=-1), F.normalize(key, dim=-1).detach(), c.temperature)
        if c.contrastive_scale_2tau:
            loss_ct = 2 * c.temperature * loss_ct
        loss = c.rc_weight * loss_rc + c.ct_weight * loss_ct
        return {"loss": loss, "loss_rc": loss_rc, "loss_ct": loss_ct, "pred": pred, "mask": mask}

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA: target <- m * target + (1 - m) * online, after each optimiser step (Sec. 3.2)."""
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            online_params = [p.detach() for p in online.parameters()]
            target_params = list(target.parameters())
            torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
            for ob, tb in zip(online.buffers(), target.buffers(), strict=True):
                tb.copy_(ob)


def build_cmae(preset: PresetName, **overrides: object) -> CMAE:
    """A CMAE of the named preset (``tiny``, ``vit_base``, ``video_vit_base``, ``convvit_base`` ...)."""
    return CMAE(get_config(preset, **overrides))


# ---- fine-tuning / linear probing ----------------------------------------------------------------


class CMAEClassifier(nn.Module):
    """Encoder -> mean of the patch tokens -> ``fc_norm`` -> ``head`` (MAE/CMAE fine-tuning, ``global_pool``).

    Same computation and names as timm's ``VisionTransformer(global_pool='avg')`` (whose ``norm`` is
    Identity), so ``convert.export_timm`` writes a file timm loads. ``linear_probe=True`` freezes the
    encoder and puts MAE's BatchNorm (no affine) before the head (MAE appendix A.2).
    """

    def __init__(self, config: CMAEConfig, num_classes: int, linear_probe: bool = False) -> None:
        super().__init__()
        self.config = config
        # the hybrid fine-tunes without the multi-scale fusion (ConvMAE's ConvViT classifier)
        self.encoder = build_encoder(config, fuse=False)
        self.encoder.norm = nn.Identity()
        # fine-tuning trains the image position embedding (a parameter in MAE's, CMAE's and ConvMAE's
        # fine-tuning models); VideoMAE's fine-tuning keeps its sinusoid table fixed
        self.encoder.pos_embed.requires_grad_(not linear_probe and not config.is_video)
        self.fc_norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.linear_probe = linear_probe
        self.head = nn.Linear(config.embed_dim, num_classes)
        self.head_norm = nn.BatchNorm1d(config.embed_dim, affine=False, eps=1e-6) if linear_probe else nn.Identity()
        trunc_normal_(self.head.weight, std=2e-5 if not linear_probe else 0.01)
        nn.init.zeros_(self.head.bias)
        if linear_probe:
            self.encoder.requires_grad_(False)
            self.fc_norm.requires_grad_(False)

    def features(self, x: Tensor) -> Tensor:
        tokens = self.encoder(x)
        return self.fc_norm(tokens[:, self.encoder.num_prefix_tokens :].mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.head_norm(self.features(x)))

    def no_weight_decay(self) -> set[str]:
        """Names timm's ``param_groups_layer_decay`` exempts from weight decay (besides 1-D tensors)."""
        return {"encoder.pos_embed", "encoder.cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """Layer ids for layer-wise lr decay (timm protocol): embeddings 0, block i -> i + 1, head last."""
        if self.config.backbone == "convvit":
            return {
                "stem": r"^encoder\.(?:patch_embed1|pos_embed)",
                "stage1": [(r"^encoder\.blocks1\.(\d+)", None), (r"^encoder\.(?:patch_embed2|stage1_output)", (99,))],
                "stage2": [
                    (r"^encoder\.blocks2\.(\d+)", None),
                    (r"^encoder\.(?:patch_embed[34]|stage2_output)", (99,)),
                ],
                "blocks": [(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))],
            }
        return {
            "stem": r"^encoder\.(?:cls_token|pos_embed|patch_embed)",
            "blocks": [(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))],
        }


def build_classifier(
    preset: PresetName, num_classes: int, linear_probe: bool = False, **overrides: object
) -> CMAEClassifier:
    """A classifier on the named preset's encoder (``drop_path_rate=0.1`` for fine-tuning)."""
    return CMAEClassifier(get_config(preset, **overrides), num_classes, linear_probe)
