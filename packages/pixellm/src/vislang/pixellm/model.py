"""PixelLM (Ren et al., CVPR 2024, arXiv 2312.02228): a LLaVA-style LMM that segments many targets.

Read top to bottom it follows the paper's Figure 2:

1. **Vision input** (§3.1): a CLIP ViT at 448 px, position embeddings interpolated from the pretrained grid
   as the released model was trained (`interpolate_clip_position_embeddings`). Images are resized on
   their longest side and padded bottom-right; padded patches are masked in the ViT's attention and the
   LLM's (`PixelLM.encode_image`, `PixelLM.embed_inputs`).
2. **LLM** (LLaMA family via transformers, LoRA via peft): sees the image as a bilinearly downsampled
   grid of projected CLIP patches (LLaVA's V->T projector) spliced in place of `<image>`.
3. **Segmentation codebook** (§3.2): N tokens x L scales per target, added to the vocabulary
   (`add_codebook_tokens`). The LLM's last hidden state at the position that *predicts* a codebook token
   is that token's embedding (`codebook_hidden_states`); the N tokens of a scale are fused by registered
   learnable weights or the paper's linear projection (`TokenFusion`).
4. **Lightweight pixel decoder** (§3.3): one SAM-style two-way transformer per scale (segment-anything's
   modules, no SAM weights and no SAM image encoder) over CLIP features from the configured layers;
   scale l+1 is modulated by scale l's mask, f' = f ⊙ (σ(m) + 1); masks of all scales are summed with
   registered learnable weights γ, upsampled to the input size and cropped to the unpadded image.
5. **Losses** (§3.4): L = L_txt + λ_ref L_ref + λ_dice L_dice, with the target refinement loss L_ref a
   per-pixel BCE weighted by α on pixels that two or more of a question's predicted masks claim
   (`target_refinement_loss`).

`PixelLM.generate` decodes greedily with the KV cache and collects the codebook hidden states as it decodes
(the state that generates a codebook token is the one that predicts it); incomplete token groups are
truncated to whole groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModel, DynamicCache, LlamaConfig, LlamaForCausalLM

from vislang.shared.losses import IGNORE_INDEX, dice_loss

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IMAGE_TOKEN",
    "IM_END_TOKEN",
    "IM_START_TOKEN",
    "PRESETS",
    "CLIPSize",
    "GenerationOutput",
    "LlamaSize",
    "PixelDecoder",
    "PixelLM",
    "PixelLMConfig",
    "PresetName",
    "TokenFusion",
    "add_codebook_tokens",
    "build_pixellm",
    "codebook_token_strings",
    "codebook_hidden_states",
    "interpolate_clip_position_embeddings",
    "mask_confidence",
    "preset_config",
    "target_refinement_loss",
    "whole_groups",
]

IMAGE_TOKEN = "<image>"
"""Placeholder of the image in the prompt; expanded to `llm_grid**2` copies before the LLM."""
IM_START_TOKEN, IM_END_TOKEN = "<im_start>", "<im_end>"
"""The released model was trained with the image wrapped as `<im_start><image><im_end>` (`use_mm_start_end`)."""


# ------------------------------------------------------------------------------------------------------
# Configuration and presets
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CLIPSize:
    """The CLIP vision tower's sizes: `transformers.CLIPVisionConfig` fields (the rest keep their defaults)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int
    image_size: int
    projection_dim: int

    def hf_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(**asdict(self))


@dataclass(frozen=True)
class LlamaSize:
    """The LLM's sizes: `transformers.LlamaConfig` fields. The vocabulary is not a size of the preset: it is
    the tokenizer's (LLaMA's 32,000 tokens plus the codebook and image tokens `add_codebook_tokens` adds)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6

    def hf_config(self, vocab_size: int) -> LlamaConfig:
        """Input and output embeddings untied, as LLaMA's."""
        return LlamaConfig(**asdict(self), vocab_size=vocab_size, tie_word_embeddings=False)


@dataclass(frozen=True)
class PixelLMConfig:
    """Sizes of every part.

    Attributes:
        vision / llm: the CLIP vision tower's and the LLM's sizes.
        feature_layers: CLIP hidden-state indices of the L decoder scales, deepest first (official: the
            penultimate layer -2 and layer 14 of 24, -11). The first one also feeds the LLM (LLaVA's
            `mm_vision_select_layer=-2`).
        llm_grid: side of the image-token grid the LLM sees (official 16: the 32x32 CLIP grid at 448 px
            bilinearly downsampled, 256 tokens).
        tokens_per_scale: N, codebook tokens per scale and target (official 3).
        fusion: `weighted` = registered learnable scalar weights over the N tokens (the released code's
            form, there never trained); `linear` = the paper's linear projection φ of the N tokens.
        decoder_dim / decoder_depth / decoder_heads / decoder_mlp_dim: the two-way transformers (SAM's
            256 / 2 / 8 / 2048).
        lora_r / lora_alpha / lora_dropout / lora_targets: LoRA on the LLM (official r 8, α 16, q/v).
    """

    vision: CLIPSize
    llm: LlamaSize
    feature_layers: tuple[int, ...] = (-2, -11)
    llm_grid: int = 16
    tokens_per_scale: int = 3
    fusion: Literal["weighted", "linear"] = "weighted"
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")

    @property
    def num_scales(self) -> int:
        return len(self.feature_layers)

    @property
    def group_size(self) -> int:
        """N·L codebook tokens per target."""
        return self.tokens_per_scale * self.num_scales

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def vision_grid(self) -> int:
        return self.image_size // self.vision.patch_size


_CLIP_L14_448 = CLIPSize(  # CLIP ViT-L/14-336 resized to 448 px (32x32 patches)
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=448,
    projection_dim=768,
)

PresetName = Literal["pixellm_7b", "pixellm_13b", "small", "tiny"]
"""The named model sizes (`PRESETS`)."""

PRESETS: dict[PresetName, PixelLMConfig] = {
    # LLaVA-Lightning-7B-v1-1 (Vicuna-7B v1.1, 32,000-token vocabulary) + CLIP ViT-L/14 at 448 px
    "pixellm_7b": PixelLMConfig(
        vision=_CLIP_L14_448,
        llm=LlamaSize(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
        ),
    ),
    # llava-llama-2-13b-chat-lightning-preview (LLaMA-2-13B-chat, 32,000 tokens) + the same vision tower
    "pixellm_13b": PixelLMConfig(
        vision=_CLIP_L14_448,
        llm=LlamaSize(
            hidden_size=5120,
            intermediate_size=13824,
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=40,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        ),
    ),
    # >= 50 M parameters with LLaMA's 32,000-token vocabulary (the generation-speed benchmark): CLIP width
    # 256 at 224 px (16x16 patches), LLM width 512 x 4 layers seeing 8x8 = 64 image tokens
    "small": PixelLMConfig(
        vision=CLIPSize(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=6,
            num_attention_heads=4,
            patch_size=14,
            image_size=224,
            projection_dim=256,
        ),
        llm=LlamaSize(
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=8,
            max_position_embeddings=1024,
        ),
        feature_layers=(-2, -5),
        llm_grid=8,
        decoder_dim=128,
        decoder_depth=2,
        decoder_heads=4,
        decoder_mlp_dim=512,
    ),
    # random-init CPU model: 64 px images, 8x8 patches, LLM sees 4x4 = 16 image tokens
    "tiny": PixelLMConfig(
        vision=CLIPSize(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=2,
            patch_size=8,
            image_size=64,
            projection_dim=64,
        ),
        llm=LlamaSize(
            hidden_size=96,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
        ),
        feature_layers=(-1, -3),
        llm_grid=4,
        decoder_dim=64,
        decoder_depth=2,
        decoder_heads=2,
        decoder_mlp_dim=128,
        lora_r=8,
        lora_alpha=16,
    ),
}


def preset_config(name: str) -> PixelLMConfig:
    """The sizes of a named preset; an unknown name is refused naming the choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


# ------------------------------------------------------------------------------------------------------
# The segmentation codebook's vocabulary (§3.2)
# ------------------------------------------------------------------------------------------------------


def codebook_token_strings(config: PixelLMConfig) -> list[str]:
    """`[SEG0]`...`[SEG{N·L-1}]`: scale-major, tokens 0..N-1 are scale 0 (the released order)."""
    return [f"[SEG{k}]" for k in range(config.group_size)]


def add_codebook_tokens(tokenizer: PreTrainedTokenizerBase, config: PixelLMConfig) -> tuple[list[int], int]:
    """Add the N·L codebook tokens, `<im_start>`, `<im_end>` and `<image>` to `tokenizer` (the released order:
    `train_ds.py` adds `[SEG0..]` then the two image delimiters; a released tokenizer already holds them, so
    only `<image>` is new); return (codebook ids, image id).

    Ids are resolved with `convert_tokens_to_ids` and asserted unique: the official
    `tokenizer(tok).input_ids[0]` can return SentencePiece's `▁` prefix for every token (PixelLM #23).
    """
    tokens = codebook_token_strings(config)
    tokenizer.add_tokens([*tokens, IM_START_TOKEN, IM_END_TOKEN, IMAGE_TOKEN], special_tokens=True)
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]
    image_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    unk = tokenizer.unk_token_id
    if len(set(ids + [image_id])) != len(ids) + 1 or unk in ids or image_id == unk:
        raise AssertionError(f"codebook ids are not unique or resolve to [UNK]: {dict(zip(tokens, ids, strict=True))}")
    return ids, image_id


# ------------------------------------------------------------------------------------------------------
# Vision input (§3.1)
# ------------------------------------------------------------------------------------------------------


def interpolate_clip_position_embeddings(
    weight: Tensor, new_grid: int, layout: Literal["official", "fixed"] = "official"
) -> Tensor:
    """Resize a CLIP position-embedding table (1 + g², d) to (1 + new_grid², d), bilinearly.

    `official` (what the released model was trained with, `clip_encoder.py`): the *last* row is taken as the
    CLS embedding and rows 0..g²-1 (HF's CLS position plus g²-1 patches) as the g x g grid; the interpolated
    grid comes first and that last row is appended, so (positions being read in order) CLS gets the grid's
    top-left entry, patch p the grid entry p + 1 in raster order, and the last patch the old last patch's
    embedding. `fixed`: HF CLIP's layout, CLS at index 0 and rows 1.. the patch grid.
    """
    if layout not in ("official", "fixed"):
        raise ValueError(f"CLIP position layout must be 'official' or 'fixed', got {layout!r}")
    old = math.isqrt(weight.shape[0] - 1)
    if old * old != weight.shape[0] - 1:
        raise ValueError(f"position embeddings of {weight.shape[0]} rows are not 1 + a square grid")
    if old == new_grid:
        return weight.clone()
    extra, grid = (weight[-1:], weight[:-1]) if layout == "official" else (weight[:1], weight[1:])
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(weight.dtype)
    return torch.cat([grid, extra]) if layout == "official" else torch.cat([extra, grid])


def _projector(in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA-1.5 style 2-layer MLP with GELU (the official `separate_mm_projector`: in -> 2·out -> out)."""
    return nn.Sequential(nn.Linear(in_dim, 2 * out_dim), nn.GELU(), nn.Linear(2 * out_dim, out_dim))


# ------------------------------------------------------------------------------------------------------
# Token fusion and the lightweight pixel decoder (§3.3)
# ------------------------------------------------------------------------------------------------------


class TokenFusion(nn.Module):
    """Fuse the N codebook embeddings of one scale into one: (T, L, N, D) -> (T, L, D).

    `weighted`: Σ_n w_n h_n with w registered, initialised to `init`. The released model's weights are
    1/(N·L) each (its list holds one 1/(N·L) scalar per codebook token, of which the fusion reads the first
    N, so the fused token is half the mean for L = 2); they are never saved, so a converted release needs
    exactly that value. `linear`: the paper's φ, a linear map of
    the concatenated N embeddings. With N = 1 both reduce to the identity-like single token.
    """

    def __init__(self, tokens_per_scale: int, dim: int, mode: Literal["weighted", "linear"], init: float) -> None:
        super().__init__()
        self.mode = mode
        if mode == "weighted":
            self.weights = nn.Parameter(torch.full((tokens_per_scale,), float(init)))
        elif mode == "linear":
            self.proj = nn.Linear(tokens_per_scale * dim, dim)
        else:
            raise ValueError(f"fusion must be 'weighted' or 'linear', got {mode!r}")

    def forward(self, tokens: Tensor) -> Tensor:
        if self.mode == "weighted":
            return torch.einsum("tlnd,n->tld", tokens, self.weights.to(tokens.dtype))
        return self.proj(tokens.flatten(2))


class PixelDecoder(nn.Module):
    """L two-way transformers, coarse (deep features) to fine, each prompted by one fused codebook token.

    Level l runs at grid·2^l (its features upsampled l times by transposed convolutions) and outputs a
    mask at grid·2^(l+1). Level l's input is modulated by level l-1's mask: f' = f ⊙ (σ(m) + 1).
    """

    def __init__(
        self, num_scales: int, dim: int, depth: int, heads: int, mlp_dim: int, num_mask_tokens: int = 4
    ) -> None:
        super().__init__()
        self.num_scales = num_scales
        self.no_mask_embed = nn.Embedding(1, dim)  # SAM's dense prompt when no mask prompt is given
        # SAM's random Fourier positional encoding, one per level (official: prompt_encoder.pe_layer, pe1)
        self.pe = nn.ModuleList(PositionEmbeddingRandom(dim // 2) for _ in range(num_scales))
        # SAM's output tokens: the IoU token and 1 + 3 multi-mask tokens. Only the first mask token's output
        # becomes a mask (single-mask output), but all of them take part in the two-way attention.
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.level_embed = nn.Embedding(num_scales, dim)
        self.transformers = nn.ModuleList(TwoWayTransformer(depth, dim, heads, mlp_dim) for _ in range(num_scales))
        # level l >= 1: l successive 2x transposed convolutions bring its features to grid·2^l
        self.level_upsample = nn.ModuleList(
            nn.Sequential(
                *[m for _ in range(level) for m in (nn.ConvTranspose2d(dim, dim, 2, 2), LayerNorm2d(dim), nn.GELU())]
            )
            for level in range(num_scales)
        )
        self.output_upscaling = nn.Sequential(nn.ConvTranspose2d(dim, dim // 8, 2, 2), LayerNorm2d(dim // 8), nn.GELU())
        self.hypernetwork = MLP(dim, dim, dim // 8, 3)
        # γ: registered learnable scale weights (the released code keeps them in a plain list: fixed at 1/L)
        self.scale_weights = nn.Parameter(torch.full((num_scales,), 1.0 / num_scales))

    def forward(self, features: Sequence[Tensor], owner: Tensor, prompts: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Masks of T targets.

        Args:
            features: L tensors (B, D, g, g), the neck's output per scale for each image.
            owner: (T,) the image of each target.
            prompts: (T, L, D) fused codebook embeddings.

        Returns:
            (T, g·2^L, g·2^L) fused mask logits, and each level's (T, g·2^(l+1), g·2^(l+1)) logits.
        """
        t, dim = prompts.shape[0], prompts.shape[-1]
        level_masks: list[Tensor] = []
        for level in range(self.num_scales):
            src = self.level_upsample[level](features[level])[owner]  # upsample per image, then per target
            if level > 0:  # §3.3: f' = f ⊙ (σ(m) + 1), m the previous scale's mask
                previous = F.interpolate(level_masks[-1][:, None], size=src.shape[-2:], mode="bilinear")
                src = src * (previous.sigmoid() + 1)
            src = src + self.no_mask_embed.weight.view(1, dim, 1, 1)
            # [IoU token, mask tokens, codebook prompt], each plus the level embedding (released decoder)
            output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).expand(t, -1, -1)
            tokens = torch.cat([output_tokens, prompts[:, level, None]], dim=1) + self.level_embed.weight[level]
            h, w = src.shape[-2:]
            queries, keys = self.transformers[level](src, self.pe[level]((h, w))[None].to(src.dtype), tokens)
            upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(t, dim, h, w))
            kernel = self.hypernetwork(queries[:, 1])  # (T, D/8): the first mask token's output as a dynamic kernel
            level_masks.append(torch.einsum("tc,tchw->thw", kernel, upscaled))
        size = level_masks[-1].shape[-2:]
        fused = sum(
            self.scale_weights[level] * F.interpolate(m[:, None], size=size, mode="bilinear")[:, 0]
            for level, m in enumerate(level_masks)
        )
        return fused, level_masks


# ------------------------------------------------------------------------------------------------------
# Codebook hidden states
# ------------------------------------------------------------------------------------------------------


def whole_groups(count: int, group_size: int) -> int:
    """How many codebook tokens to keep: complete groups only (the official code drops *all* of a
    sequence's tokens when `count % group_size != 0`)."""
    return count - count % group_size


def codebook_hidden_states(
    hidden: Tensor, input_ids: Tensor, codebook_ids: Sequence[int], group_size: int
) -> tuple[list[Tensor], list[Tensor]]:
    """Per sequence, the hidden states of its codebook tokens, (K, group_size, d), and their positions.

    Token t uses the state at position t - 1: the one that *predicts* it (the released convention, which
    the `[:, 1:]` shift of LISA implements). Codebook tokens are taken in order, truncated to whole groups.
    """
    is_code = torch.isin(input_ids, torch.as_tensor(list(codebook_ids), device=input_ids.device))
    is_code[:, 0] = False  # nothing predicts position 0
    states, positions = [], []
    for row in range(input_ids.shape[0]):
        pos = is_code[row].nonzero().squeeze(1)
        pos = pos[: whole_groups(pos.numel(), group_size)]
        states.append(hidden[row, pos - 1].reshape(-1, group_size, hidden.shape[-1]))
        positions.append(pos)
    return states, positions


# ------------------------------------------------------------------------------------------------------
# Losses (§3.4)
# ------------------------------------------------------------------------------------------------------


def refinement_weights(logits: Tensor, alpha: float) -> Tensor:
    """A_i = α where two or more of one question's K predicted masks are positive, else 1 (detached)."""
    claimed = (logits.detach() > 0).sum(0, keepdim=True)
    return torch.where(claimed >= 2, torch.full_like(logits, alpha), torch.ones_like(logits))


def target_refinement_loss(logits: Tensor, targets: Tensor, alpha: float) -> Tensor:
    """Σ_k mean_i A_i · BCE(m_ki, y_ki) over one question's K masks (divide by the number of masks outside).

    With α = 1 this is the plain per-mask BCE of the released code (whose refinement loss is disabled).
    """
    weight = refinement_weights(logits, alpha)
    bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), weight=weight, reduction="none")
    return bce.flatten(1).mean(1).sum()


# ------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------


@dataclass
class GenerationOutput:
    """`PixelLM.generate`'s result per prompt: new token ids, mask logits (K, H, W) and confidences (K,)."""

    tokens: list[Tensor]
    masks: list[Tensor]
    scores: list[Tensor]
    dropped_tokens: list[int]


class PixelLM(nn.Module):
    """CLIP vision tower + LLaMA LLM with LoRA + segmentation codebook + lightweight pixel decoder.

    Args:
        config: sizes (see `PRESETS`).
        codebook_ids: the N·L codebook token ids (`add_codebook_tokens`), scale-major.
        image_token_id: id of `<image>`.
        vocab_size: rows of the LLM's embedding (base vocabulary + added tokens).
        lora: inject LoRA adapters into the LLM (False = plain LLM, e.g. for FLOP counts).
    """

    def __init__(
        self,
        config: PixelLMConfig,
        codebook_ids: Sequence[int],
        image_token_id: int,
        vocab_size: int,
        lora: bool = True,
    ) -> None:
        super().__init__()
        if len(codebook_ids) != config.group_size or len(set(codebook_ids)) != config.group_size:
            raise ValueError(f"need {config.group_size} distinct codebook ids, got {list(codebook_ids)}")
        if image_token_id in codebook_ids:
            raise ValueError("the image token id must differ from the codebook ids")
        self.config = config
        self.register_buffer("codebook_ids", torch.tensor(list(codebook_ids)), persistent=False)
        self.image_token_id = int(image_token_id)
        self.vision = CLIPVisionModel(config.vision.hf_config())
        self.llm = LlamaForCausalLM(config.llm.hf_config(vocab_size))
        if lora:
            lora_config = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_targets),
                bias="none",
            )
            inject_adapter_in_model(lora_config, self.llm)
        v, d, dd = config.vision.hidden_size, config.llm.hidden_size, config.decoder_dim
        self.mm_projector = _projector(v, d)  # V -> T: image tokens for the LLM
        self.out_mm_projector = _projector(v, d)  # V -> D: decoder features, p_{V->D}
        # SAM-style neck from the LLM width to the decoder width
        self.neck = nn.Sequential(
            nn.Conv2d(d, dd, 1, bias=False),
            LayerNorm2d(dd),
            nn.Conv2d(dd, dd, 3, padding=1, bias=False),
            LayerNorm2d(dd),
        )
        self.text_hidden_fcs = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, dd))
        self.fusion = TokenFusion(config.tokens_per_scale, dd, config.fusion, init=1.0 / config.group_size)
        self.decoder = PixelDecoder(
            config.num_scales, dd, config.decoder_depth, config.decoder_heads, config.decoder_mlp_dim
        )

    # ---- trainable set ------------------------------------------------------------------------------

    def trainable_prefixes(self, train_vision: bool = False, train_llm: bool = False) -> list[str]:
        """Parameter-name prefixes that train: everything but CLIP and the LLM base (paper §4.1), plus
        LoRA and the LLM's input/output embeddings (new codebook rows; the released code trains them whole)."""
        prefixes = [
            "mm_projector.",
            "out_mm_projector.",
            "neck.",
            "text_hidden_fcs.",
            "fusion.",
            "decoder.",
            "llm.model.embed_tokens.",
            "llm.lm_head.",
        ]
        if train_vision:
            prefixes.append("vision.")
        if train_llm:
            prefixes.append("llm.")
        return prefixes

    def set_trainable(self, train_vision: bool = False, train_llm: bool = False) -> list[str]:
        """Apply `trainable_prefixes` (+ every LoRA weight); return the names that now require grad."""
        prefixes = tuple(self.trainable_prefixes(train_vision, train_llm))
        names = []
        for name, parameter in self.named_parameters():
            train = name.startswith(prefixes) or ".lora_" in name
            parameter.requires_grad_(train)
            if train:
                names.append(name)
        return names

    # ---- vision ------------------------------------------------------------------------------------

    def encode_image(self, pixel_values: Tensor, patch_mask: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """CLIP with padded patches masked; returns LLM image tokens, their validity, decoder features.

        Args:
            pixel_values: (B, 3, S, S) padded images.
            patch_mask: (B, G, G) bool, True on patches that hold image content.

        Returns:
            image_tokens (B, g², d) for the LLM, image_token_mask (B, g²), and per scale (B, D, G, G) features.
        """
        b = pixel_values.shape[0]
        grid = self.config.vision_grid
        vision = self.vision
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=hidden.device), patch_mask.flatten(1)], dim=1)
        bias = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        bias = bias.masked_fill(~keep, torch.finfo(hidden.dtype).min)[:, None, None, :]  # keys of padded patches
        layers = vision.encoder.layers
        wanted = sorted({i % (len(layers) + 1) for i in self.config.feature_layers})
        states = {0: hidden}
        for index, layer in enumerate(layers[: wanted[-1]], start=1):
            hidden = layer(hidden, bias)
            states[index] = hidden

        def patches(layer_index: int) -> Tensor:  # (B, C, G, G) without CLS
            x = states[layer_index % (len(layers) + 1)][:, 1:]
            return x.transpose(1, 2).reshape(b, -1, grid, grid)

        # LLM input: deepest tap, bilinearly downsampled to the LLM grid, then V -> T (LLaVA)
        g = self.config.llm_grid
        llm_feat = F.interpolate(patches(self.config.feature_layers[0]), size=(g, g), mode="bilinear")
        image_tokens = self.mm_projector(llm_feat.flatten(2).transpose(1, 2))
        token_mask = F.interpolate(patch_mask[:, None].float(), size=(g, g), mode="nearest")[:, 0].flatten(1) > 0
        # decoder input: every tap through p_{V->D} and the neck, on the full G x G grid
        features = []
        for layer_index in self.config.feature_layers:
            x = self.out_mm_projector(patches(layer_index).flatten(2).transpose(1, 2))
            features.append(self.neck(x.transpose(1, 2).reshape(b, -1, grid, grid)))
        return image_tokens, token_mask, features

    def embed_inputs(
        self, input_ids: Tensor, attention_mask: Tensor, image_tokens: Tensor, image_token_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Token embeddings with the image tokens spliced in at the `<image>` positions (g² per sequence)
        and the padded image tokens removed from the attention mask."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        is_image = input_ids == self.image_token_id
        if input_ids.device.type != "meta":  # (no data-dependent checks on the meta device)
            counts = is_image.sum(1)
            if not bool((counts == image_tokens.shape[1]).all()):
                raise ValueError(f"each sequence needs {image_tokens.shape[1]} image tokens, got {counts.tolist()}")
        embeds = embeds.masked_scatter(is_image[..., None], image_tokens.to(embeds.dtype))
        valid = torch.ones_like(attention_mask).masked_scatter(is_image, image_token_mask.to(attention_mask.dtype))
        return embeds, attention_mask * valid

    @staticmethod
    def position_ids(token_mask: Tensor) -> Tensor:
        """Positions counting every non-pad token (left padding shifts them; masked image patches count)."""
        return (token_mask.long().cumsum(1) - 1).clamp(min=0)

    # ---- masks ---------------------------------------------------------------------------------------

    def masks_from_hidden(
        self, codebook_states: Sequence[Tensor], features: Sequence[Tensor], resized: Tensor, original: Sequence
    ) -> list[Tensor]:
        """Mask logits (K, H, W) per image at its original size from its (K, N·L, d) codebook states."""
        counts = [s.shape[0] for s in codebook_states]
        out: list[Tensor] = []
        if sum(counts) == 0:
            return [features[0].new_zeros((0, int(h), int(w))) for h, w in original]
        states = torch.cat(list(codebook_states))  # (T, N·L, d)
        t = states.shape[0]
        emb = self.text_hidden_fcs(states).reshape(t, self.config.num_scales, self.config.tokens_per_scale, -1)
        prompts = self.fusion(emb)  # (T, L, D)
        owner = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)], device=states.device)
        fused, _ = self.decoder(features, owner, prompts)
        size = self.config.image_size
        fused = F.interpolate(fused[:, None], size=(size, size), mode="bilinear")[:, 0]
        start = 0
        for index, count in enumerate(counts):
            h, w = (int(v) for v in resized[index])
            oh, ow = (int(v) for v in original[index])
            crop = fused[start : start + count, :h, :w]  # drop the padding, then back to the original size
            out.append(
                F.interpolate(crop[:, None], size=(oh, ow), mode="bilinear")[:, 0]
                if count
                else fused.new_zeros((0, oh, ow))
            )
            start += count
        return out

    # ---- training forward ---------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: Tensor,
        patch_mask: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        resized_sizes: Tensor,
        original_sizes: Sequence,
        labels: Tensor | None = None,
    ) -> dict[str, Any]:
        """Teacher-forced pass: LM logits/loss and the mask logits of every complete codebook group."""
        image_tokens, image_mask, features = self.encode_image(pixel_values, patch_mask)
        embeds, mask = self.embed_inputs(input_ids, attention_mask, image_tokens, image_mask)
        out = self.llm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=self.position_ids(attention_mask),
            output_hidden_states=True,
            use_cache=False,
        )
        states, _ = codebook_hidden_states(
            out.hidden_states[-1], input_ids, self.codebook_ids.tolist(), self.config.group_size
        )
        result: dict[str, Any] = {
            "logits": out.logits,
            "masks": self.masks_from_hidden(states, features, resized_sizes, original_sizes),
        }
        if labels is not None:
            shift_logits, shift_labels = out.logits[:, :-1], labels[:, 1:]
            result["ce"] = F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]).float(),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return result

    @staticmethod
    def mask_losses(
        pred: Sequence[Tensor],
        gt: Sequence[Tensor],
        alpha: float,
        dice_scale: float = 1000.0,
        dice_smooth: float = 1e-6,
    ) -> dict[str, Tensor]:
        """BCE with the target refinement weights (per question) and Dice, normalised by the batch's masks.

        Predictions and ground truths are paired in answer order (teacher forcing, no matching in training).
        """
        total = sum(g.shape[0] for g in gt)
        zero = next(iter(pred)).sum() * 0 if pred else torch.zeros(())
        if total == 0:
            return {"bce": zero, "dice": zero}
        bce, dice = zero, zero
        for p, g in zip(pred, gt, strict=True):
            if p.shape[0] != g.shape[0]:
                raise ValueError(f"{p.shape[0]} predicted masks for {g.shape[0]} targets")
            if g.shape[0] == 0:
                continue
            bce = bce + target_refinement_loss(p, g, alpha) / total
            dice = dice + dice_loss(p, g, num_masks=total, scale=dice_scale, smooth=dice_smooth)
        return {"bce": bce, "dice": dice}

    # ---- generation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        pixel_values: Tensor,
        patch_mask: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        resized_sizes: Tensor,
        original_sizes: Sequence,
        max_new_tokens: int,
        eos_token_id: int,
        use_cache: bool = True,
        with_masks: bool = True,
        logits_processor: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> GenerationOutput:
        """Greedy decoding of left-padded prompts; the codebook hidden states are collected while decoding.

        The state that *predicts* a codebook token is the last hidden state of the step that generates it,
        so no second pass over the sequence is needed (§3.2's embedding of each codebook token).
        `use_cache=False` recomputes CLIP and the LLM over the whole sequence at every step, as the released
        code does (`use_cache=False`); it yields the same tokens and exists for the benchmark.
        `logits_processor(ids, logits) -> logits` may edit each step's logits (as HF's logits processors).
        """
        # §3.1: the image as LLM tokens, spliced into the prompt; the decoder's multi-scale features
        image_tokens, image_mask, features = self.encode_image(pixel_values, patch_mask)
        embeds, llm_mask = self.embed_inputs(input_ids, attention_mask, image_tokens, image_mask)
        decoding = _Decoding.start(input_ids, attention_mask, llm_mask)
        cache = DynamicCache() if use_cache else None
        step_inputs = (embeds, llm_mask, self.position_ids(attention_mask))
        for _ in range(max_new_tokens):
            hidden, logits = self._step(*step_inputs, cache)
            token = self._greedy_token(logits, decoding, eos_token_id, logits_processor)
            decoding.append(token, hidden, torch.isin(token, self.codebook_ids), eos_token_id)
            if bool(decoding.done.all()):
                break
            step_inputs = self._next_step_inputs(decoding, token, pixel_values, patch_mask, use_cache)
        tokens = decoding.answers(eos_token_id)
        if not with_masks:
            return GenerationOutput(tokens, [], [], [0] * len(tokens))
        # §3.2: each target's N·L codebook states (whole groups only); §3.3: decoded into its mask
        states, dropped = self._codebook_groups(decoding.code_states, features[0])
        masks = self.masks_from_hidden(states, features, resized_sizes, original_sizes)
        return GenerationOutput(tokens, masks, [mask_confidence(m) for m in masks], dropped)

    def _step(
        self, embeds: Tensor, mask: Tensor, positions: Tensor, cache: DynamicCache | None
    ) -> tuple[Tensor, Tensor]:
        """One decoding step: the last position's final hidden state (B, d) and its next-token logits (B, V).

        The LM head runs on the last position only: the prompt's other positions need no logits.
        """
        out = self.llm.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=cache is not None
        )
        hidden = out.last_hidden_state[:, -1]
        return hidden, self.llm.lm_head(hidden)

    def _greedy_token(
        self,
        logits: Tensor,
        decoding: _Decoding,
        eos_token_id: int,
        logits_processor: Callable[[Tensor, Tensor], Tensor] | None,
    ) -> Tensor:
        """The most likely next token per row (B,); rows that already ended repeat the end token."""
        logits[:, self.image_token_id] = float("-inf")  # the image is given, never generated
        if logits_processor is not None:
            logits = logits_processor(decoding.ids, logits)
        token = logits.argmax(-1)
        return torch.where(decoding.done, torch.full_like(token, eos_token_id), token)

    def _next_step_inputs(
        self, decoding: _Decoding, token: Tensor, pixel_values: Tensor, patch_mask: Tensor, use_cache: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The LLM's next input (embeddings, attention mask, positions): the new token alone with the KV cache,
        else the whole sequence again, the vision tower included (the released code's path)."""
        if use_cache:
            positions = self.position_ids(decoding.token_mask)[:, -1:]
            return self.llm.get_input_embeddings()(token[:, None]), decoding.llm_mask, positions
        image_tokens, image_mask, _ = self.encode_image(pixel_values, patch_mask)
        embeds, llm_mask = self.embed_inputs(decoding.ids, decoding.token_mask, image_tokens, image_mask)
        return embeds, llm_mask, self.position_ids(decoding.token_mask)

    def _codebook_groups(self, code_states: list[list[Tensor]], like: Tensor) -> tuple[list[Tensor], list[int]]:
        """Per row, its collected codebook states as (K, N·L, d) whole groups, and how many trailing tokens of
        an incomplete group were dropped (`whole_groups`)."""
        group, d = self.config.group_size, self.config.llm.hidden_size
        dropped = [len(c) % group for c in code_states]
        states = [
            torch.stack(c[: whole_groups(len(c), group)]).reshape(-1, group, d)
            if len(c) >= group
            else like.new_zeros((0, group, d))
            for c in code_states
        ]
        return states, dropped


@dataclass
class _Decoding:
    """The running state of `PixelLM.generate`'s greedy decoding of a batch of left-padded prompts."""

    ids: Tensor  # (B, prompt + t): the prompt and the tokens generated so far
    token_mask: Tensor  # (B, prompt + t): 1 on every non-pad token (positions count these)
    llm_mask: Tensor  # the LLM's attention mask: `token_mask` with the padded image patches removed
    done: Tensor  # (B,) rows that generated their end token
    new_tokens: list[Tensor]  # one (B,) tensor per step
    code_states: list[list[Tensor]]  # per row, the hidden state that predicted each codebook token

    @classmethod
    def start(cls, input_ids: Tensor, attention_mask: Tensor, llm_mask: Tensor) -> _Decoding:
        b = input_ids.shape[0]
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        return cls(input_ids, attention_mask.clone(), llm_mask, done, [], [[] for _ in range(b)])

    def append(self, token: Tensor, hidden: Tensor, is_code: Tensor, eos_token_id: int) -> None:
        """Record one step's tokens; a codebook token keeps the state that generated it (§3.2)."""
        for row in (is_code & ~self.done).nonzero().flatten().tolist():
            self.code_states[row].append(hidden[row])
        self.new_tokens.append(token)
        self.done = self.done | (token == eos_token_id)
        self.ids = torch.cat([self.ids, token[:, None]], 1)
        self.token_mask = torch.cat([self.token_mask, torch.ones_like(self.token_mask[:, :1])], 1)
        self.llm_mask = torch.cat([self.llm_mask, torch.ones_like(self.llm_mask[:, :1])], 1)

    def answers(self, eos_token_id: int) -> list[Tensor]:
        """Each row's generated ids, cut after its first end token."""
        generated = torch.stack(self.new_tokens, 1) if self.new_tokens else self.ids[:, :0]
        tokens = []
        for row_tokens in generated:
            end = (row_tokens == eos_token_id).nonzero()
            tokens.append(row_tokens[: int(end[0]) + 1] if end.numel() else row_tokens)
        return tokens


def mask_confidence(logits: Tensor) -> Tensor:
    """Per mask, the mean probability over its predicted-positive pixels (the released `mask_scores`); 0 if empty."""
    prob = logits.sigmoid().flatten(1)
    positive = logits.flatten(1) > 0
    count = positive.sum(1)
    return torch.where(count > 0, (prob * positive).sum(1) / count.clamp(min=1), torch.zeros_like(prob[:, 0]))


def build_pixellm(
    preset: str | PixelLMConfig,
    vocab_size: int,
    codebook_ids: Sequence[int] | None = None,
    image_token_id: int | None = None,
    lora: bool = True,
    **overrides: Any,
) -> PixelLM:
    """Build a preset; codebook/image ids default to the rows after `vocab_size - N·L - 1` (meta-device counts).

    `overrides` replace config fields (e.g. `fusion="linear"`, `tokens_per_scale=1`).
    """
    config = preset_config(preset) if isinstance(preset, str) else preset
    config = replace(config, **overrides) if overrides else config
    if codebook_ids is None or image_token_id is None:
        base = vocab_size - config.group_size - 1
        image_token_id, codebook_ids = base, list(range(base + 1, vocab_size))
    return PixelLM(config, codebook_ids, image_token_id, vocab_size, lora=lora)
