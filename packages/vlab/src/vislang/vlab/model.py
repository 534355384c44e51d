"""VLAB: Video-Language pre-training by feature Adapting and Blending (He et al., 2023).

The model reads top to bottom as the abstract describes it:

1. **Image stream** — a CLIP ViT applied to every frame independently: CLIP's own, strong
   per-image features.
2. **Video stream (feature adapting)** — a second copy of the same CLIP ViT whose residual blocks
   carry a *video adapter* that mixes information across frames. The adapter's output projection
   starts at zero, so at step 0 this stream *is* CLIP; training moves it away only as far as the
   temporal signal pays.
3. **Feature blending** — gated cross-attention from the video stream (queries) to the image stream
   (keys, values), gate tanh(α) with α = 0 at init (Flamingo's gated cross-attention), trained end
   to end: the model learns how much of each stream to keep.
4. **Heads** — a contrastive video-text head (CLIP's text tower, symmetric InfoNCE) and a generative
   text decoder with cross-attention to the blended visual tokens (captioning and open-ended QA,
   as in VALOR/COSA, the authors' sister code bases). The same decoder, read at the caption's last
   token, feeds a video-text matching (ITM) classifier trained on hard negatives (ALBEF §3.2) that
   re-ranks the contrastive top-k at test time (UMT's `k_test`).

Both CLIP kinds open_clip builds are supported: its native ViT (`ViT-B-16`, ...) and EVA-CLIP
(`EVA02-B-16`, ...), whose image tower is a timm `Eva` trunk wrapped in open_clip's `TimmModel`.

The paper's full text is not available; where it is silent (adapter form and placement, blending
direction, pooling, decoder), the choice here is a config switch and is listed as an assumption
in the package README.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig, BertLMHeadModel, DynamicCache, EncoderDecoderCache

from vislang.shared.checkpoint import LoadReport, StateDictMismatchError, load_into, load_state_dict, rename_keys

__all__ = [
    "BERT_BASE",
    "BERT_LARGE",
    "PRESETS",
    "ClipSize",
    "ClipTextSize",
    "ClipVisionSize",
    "DecoderSize",
    "GatedCrossAttentionBlend",
    "TemporalAdapter",
    "TimmVisionSize",
    "VLAB",
    "VLABConfig",
    "Preset",
    "build_vlab",
    "clip_uses_quick_gelu",
    "load_bert_decoder",
    "load_clip_state_dict",
    "sample_hard_negatives",
]


@dataclass(frozen=True)
class ClipVisionSize:
    """open_clip `vision_cfg` of a shrunk CLIP image tower (it replaces the architecture's whole dict)."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    head_width: int


@dataclass(frozen=True)
class TimmVisionSize:
    """open_clip `vision_cfg` of an image tower timm builds by name (EVA-CLIP's Eva trunk), e.g. timm's
    smallest EVA-02 for a tiny EVA-CLIP; depth and width are the timm model's own."""

    image_size: int
    timm_model_name: str
    timm_model_pretrained: bool = False
    timm_pool: str = "token"
    timm_proj: str | None = None


@dataclass(frozen=True)
class ClipTextSize:
    """open_clip `text_cfg` of a shrunk CLIP text tower (it replaces the architecture's whole dict)."""

    context_length: int
    vocab_size: int
    width: int
    heads: int
    layers: int


@dataclass(frozen=True)
class ClipSize:
    """A CLIP smaller than its `clip_arch`: the `embed_dim`, `vision_cfg` and `text_cfg` overrides of
    open_clip's `create_model` (how the tiny preset shrinks CLIP)."""

    embed_dim: int
    vision: ClipVisionSize | TimmVisionSize
    text: ClipTextSize

    def create_model_kwargs(self) -> dict[str, Any]:
        return dict(embed_dim=self.embed_dim, vision_cfg=asdict(self.vision), text_cfg=asdict(self.text))


@dataclass(frozen=True)
class DecoderSize:
    """BERT sizes of the generative decoder (transformers `BertConfig` fields); the default is BERT-base."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512


BERT_BASE = DecoderSize()
BERT_LARGE = DecoderSize(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


@dataclass(frozen=True)
class VLABConfig:
    """Sizes and switches of a VLAB model. Named presets are in `PRESETS`.

    Args:
        clip_arch: open_clip architecture name: a native ViT (`ViT-B-32`, `ViT-B-16`, `ViT-L-14`, ...)
            or EVA-CLIP (`EVA02-B-16`, `EVA02-L-14`, `EVA01-g-14`, ...: a timm Eva trunk).
        clip_size: a CLIP smaller than `clip_arch`'s (the tiny preset); None builds the architecture as is.
        adapter: temporal mixing inside the video adapter: `attention` (self-attention over the
            T frames of every spatial token, TimeSformer's divided attention) or `conv` (depthwise
            temporal convolution, ST-Adapter style).
        adapter_every: an adapter in every k-th residual block of the video stream (1 = all).
        adapter_ratio: adapter bottleneck width as a fraction of the ViT width.
        max_frames: longest clip the adapter's temporal position embedding supports.
        blend_heads: heads of the blending cross-attention.
        decoder: BERT sizes of the generative decoder.
    """

    clip_arch: str = "ViT-B-16"
    clip_size: ClipSize | None = None
    adapter: Literal["attention", "conv"] = "attention"
    adapter_every: int = 1
    adapter_ratio: float = 0.25
    max_frames: int = 16
    blend_heads: int = 8
    decoder: DecoderSize = BERT_BASE


Preset = Literal["tiny", "vlab_b32", "vlab_b16", "vlab_l14", "vlab_eva02_b16", "vlab_eva02_l14", "vlab_eva01_g14"]

PRESETS: dict[Preset, VLABConfig] = {
    # Runs on a laptop CPU in minutes: CLIP shrunk to 2 layers of width 64 at 32 px.
    "tiny": VLABConfig(
        clip_arch="ViT-B-32",
        clip_size=ClipSize(
            embed_dim=64,
            vision=ClipVisionSize(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
            text=ClipTextSize(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
        ),
        adapter_ratio=0.5,
        blend_heads=2,
        decoder=DecoderSize(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
        ),
    ),
    "vlab_b32": VLABConfig(clip_arch="ViT-B-32"),
    "vlab_b16": VLABConfig(clip_arch="ViT-B-16"),
    "vlab_l14": VLABConfig(clip_arch="ViT-L-14", blend_heads=16, decoder=BERT_LARGE),
    # EVA-CLIP (Sun et al. 2023): open_clip builds the image tower from timm's Eva (EVA-02: RoPE, SwiGLU)
    "vlab_eva02_b16": VLABConfig(clip_arch="EVA02-B-16"),
    "vlab_eva02_l14": VLABConfig(clip_arch="EVA02-L-14", blend_heads=16, decoder=BERT_LARGE),
    # EVA01-g/14, the giant encoder the survey attributes to VLAB (reference §1.1, unverified)
    "vlab_eva01_g14": VLABConfig(clip_arch="EVA01-g-14", blend_heads=16, decoder=BERT_LARGE),
}


class TemporalAdapter(nn.Module):
    """Bottleneck adapter that mixes each token with the same token in the other frames (§feature adapting).

    It runs before a CLIP residual block, on the B·T frames the block sees as a batch:
    x + up(mix_T(down(norm(x)))). `up` is zero-initialised, so the adapter starts as the identity
    and the video stream starts as CLIP.
    """

    def __init__(self, width: int, bottleneck: int, kind: Literal["attention", "conv"], max_frames: int) -> None:
        super().__init__()
        self.kind = kind
        self.num_frames = 1  # set by VLAB before every forward; frames arrive flattened into the batch
        self.norm = nn.LayerNorm(width)
        self.down = nn.Linear(width, bottleneck)
        if kind == "attention":
            self.frame_position = nn.Parameter(torch.zeros(max_frames, bottleneck))
            heads = max(1, bottleneck // 64)
            while bottleneck % heads:  # e.g. EVA01-g's 352-wide bottleneck: 4 heads, not 5
                heads -= 1
            self.mix = nn.MultiheadAttention(bottleneck, num_heads=heads, batch_first=True)
        elif kind == "conv":
            self.mix = nn.Conv1d(bottleneck, bottleneck, kernel_size=3, padding=1, groups=bottleneck)
        else:
            raise ValueError(f"adapter must be 'attention' or 'conv', got {kind!r}")
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B·T, L, D) tokens of B clips of T frames → same shape."""
        frames_x_clips, length, _ = x.shape
        frames = self.num_frames
        if frames_x_clips % frames:
            raise ValueError(f"batch of {frames_x_clips} frames is not a whole number of {frames}-frame clips")
        clips = frames_x_clips // frames
        h = self.down(self.norm(x))
        width = h.shape[-1]
        # (B, T, L, d) → one length-T sequence per (clip, token)
        h = h.view(clips, frames, length, width).permute(0, 2, 1, 3).reshape(clips * length, frames, width)
        if self.kind == "attention":
            if frames > self.frame_position.shape[0]:
                raise ValueError(f"clip of {frames} frames exceeds max_frames={self.frame_position.shape[0]}")
            h = h + self.frame_position[:frames]
            h = self.mix(h, h, h, need_weights=False)[0]
        else:
            h = self.mix(h.transpose(1, 2)).transpose(1, 2)
        h = F.gelu(h).view(clips, length, frames, width).permute(0, 2, 1, 3).reshape(frames_x_clips, length, width)
        return x + self.up(h)


class GatedCrossAttentionBlend(nn.Module):
    """Feature blending: video tokens attend to image tokens; tanh-gated residuals start closed (α = 0).

    The gated cross-attention + gated feed-forward pair follows Flamingo (Alayrac et al. 2022, §2.2);
    that VLAB blends this way is an assumption (the paper's text says "blending" through
    cross-attention, trained end to end).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_video = nn.LayerNorm(width)
        self.norm_image = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.attention_gate = nn.Parameter(torch.zeros(()))
        self.norm_ffn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.ffn_gate = nn.Parameter(torch.zeros(()))

    def forward(self, video_tokens: Tensor, image_tokens: Tensor) -> Tensor:
        """Both (B, T·L, D): every token of the clip can look at every frame's CLIP tokens."""
        image = self.norm_image(image_tokens)
        attended = self.attention(self.norm_video(video_tokens), image, image, need_weights=False)[0]
        x = video_tokens + torch.tanh(self.attention_gate) * attended
        return x + torch.tanh(self.ffn_gate) * self.ffn(self.norm_ffn(x))


class VLAB(nn.Module):
    """The two CLIP streams, the blending, the contrastive text tower and the generative decoder.

    State-dict layout: `clip.*` is an open_clip CLIP (its `visual` is the image stream, its text
    tower the contrastive text encoder), `video_visual.*` the adapted copy of `clip.visual`, so an
    open_clip checkpoint maps onto both with its own key names (see `load_clip_state_dict`).
    `clip.visual` is either open_clip's native `VisionTransformer` (blocks `transformer.resblocks`)
    or, for EVA-CLIP, a `TimmModel` (blocks `trunk.blocks`); `_vit_*` below hide the difference.
    """

    def __init__(
        self,
        config: VLABConfig,
        decoder_vocab_size: int | None,
        decoder_pad_token_id: int = 0,
        clip_tag: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        # build where the caller builds (the meta device for parameter counting of full-size presets)
        device = torch.get_default_device()
        # the architecture the weights were trained with: open_clip's settings for the pretrained tag
        # (OpenAI's CLIP used QuickGELU, which open_clip's plain `ViT-B-16` config does not)
        self.clip = open_clip.create_model(
            config.clip_arch,
            pretrained=None,
            device=device,
            force_quick_gelu=clip_uses_quick_gelu(config.clip_arch, clip_tag),
            **(config.clip_size.create_model_kwargs() if config.clip_size else {}),
        )
        visual = self.clip.visual
        width = _vit_width(visual, config.clip_arch)

        # §feature adapting: a second CLIP ViT whose blocks carry temporal adapters. Attached as
        # submodules with a forward pre-hook, so the block's own parameter names stay CLIP's.
        self.video_visual = copy.deepcopy(visual)
        for index, block in enumerate(_vit_blocks(self.video_visual)):
            if index % config.adapter_every == 0:
                bottleneck = max(8, int(width * config.adapter_ratio))
                block.add_module(
                    "temporal_adapter", TemporalAdapter(width, bottleneck, config.adapter, config.max_frames)
                )
                block.register_forward_pre_hook(_run_adapter_first, with_kwargs=True)

        # §feature blending
        self.blend = GatedCrossAttentionBlend(width, config.blend_heads)

        # generative head: a BERT decoder cross-attending to the blended visual tokens (VALOR/COSA style).
        # Retrieval-only models have none (no decoder vocabulary): no tokenizer to load, no weights to train.
        self.decoder: BertLMHeadModel | None = None
        self.visual_to_decoder: nn.Linear | None = None
        self.itm_head: nn.Linear | None = None
        if decoder_vocab_size is None:
            return
        decoder_config = BertConfig(
            vocab_size=decoder_vocab_size,
            pad_token_id=decoder_pad_token_id,
            is_decoder=True,
            add_cross_attention=True,
            **asdict(config.decoder),
        )
        self.visual_to_decoder = nn.Linear(width, decoder_config.hidden_size)
        self.decoder = BertLMHeadModel(decoder_config)
        # video-text matching: match / no-match from the decoder's last caption token (ALBEF §3.2, UMT).
        # Initialised from a forked RNG, so the random stream after building the model, and with it
        # every run that does not use ITM, is the same as before the head existed.
        with torch.random.fork_rng(devices=[]):
            self.itm_head = nn.Linear(decoder_config.hidden_size, 2)

    # ---- encoders ---------------------------------------------------------------------------

    @property
    def adapters(self) -> list[TemporalAdapter]:
        return [m for m in self.video_visual.modules() if isinstance(m, TemporalAdapter)]

    def _set_num_frames(self, num_frames: int) -> None:
        for adapter in self.adapters:
            adapter.num_frames = num_frames

    def encode_video_tokens(self, video: Tensor) -> Tensor:
        """video: (B, T, 3, H, W) normalised frames → blended tokens (B, T, 1+N, D) before `ln_post`."""
        clips, frames = video.shape[:2]
        flat = video.flatten(0, 1)
        self._set_num_frames(frames)
        # image stream: CLIP per frame; video stream: the adapted copy, frames mixed in every block
        image_tokens = _vit_tokens(self.clip.visual, flat)
        video_tokens = _vit_tokens(self.video_visual, flat)
        length = video_tokens.shape[1]
        blended = self.blend(
            video_tokens.reshape(clips, frames * length, -1), image_tokens.reshape(clips, frames * length, -1)
        )
        return blended.view(clips, frames, length, -1)

    def frame_embeddings(self, tokens: Tensor) -> Tensor:
        """Per-frame CLIP embeddings (B, T, E) from blended tokens, pooled and projected as `encode_image` does."""
        visual = self.video_visual
        if _is_timm(visual):
            # open_clip TimmModel.forward = head(trunk.forward_head(trunk.forward_features(x))): final norm,
            # timm's pooling (EVA-CLIP: the class token) and classifier-as-projection, then open_clip's head
            clips, frames = tokens.shape[:2]
            pooled = visual.trunk.forward_head(visual.trunk.norm(tokens.flatten(0, 1)))
            return visual.head(pooled).view(clips, frames, -1)
        # native ViT: `ln_post` + projection of the class token
        cls = visual.ln_post(tokens[:, :, 0])
        return cls @ visual.proj if visual.proj is not None else cls

    def encode_video(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, 3, H, W) → (unit-norm clip embedding (B, E), blended tokens (B, T, 1+N, D))."""
        tokens = self.encode_video_tokens(video)
        # mean of the frames' embeddings (CLIP4Clip's "meanP"), then unit norm for cosine similarity
        return F.normalize(self.frame_embeddings(tokens).mean(dim=1), dim=-1), tokens

    def encode_text(self, text_ids: Tensor) -> Tensor:
        """CLIP BPE ids (B, context) → unit-norm text embedding (B, E)."""
        return self.clip.encode_text(text_ids, normalize=True)

    def logit_scale(self) -> Tensor:
        # CLIP clamps the learnable temperature at 100 (log 100 ≈ 4.6052)
        return self.clip.logit_scale.clamp(max=math.log(100.0)).exp()

    # ---- generative head --------------------------------------------------------------------

    def decoder_memory(self, tokens: Tensor) -> Tensor:
        """Blended tokens (B, T, 1+N, D) → cross-attention memory (B, T·(1+N), H) for the decoder."""
        return self.visual_to_decoder(_vit_final_norm(self.video_visual)(tokens.flatten(1, 2)))

    def decoder_loss(self, memory: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """Next-token cross-entropy on the positions whose label is not -100 (caption, or QA answer)."""
        output = self.decoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=memory, labels=labels
        )
        return output.loss

    # ---- video-text matching (ALBEF §3.2; re-ranking as UMT's `k_test`) ------------------------------

    def itm_logits(self, memory: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(no-match, match) logits (B, 2) of B (video memory, `[CLS] caption [SEP]`) pairs, right-padded.

        ALBEF reads the [CLS] of a bidirectional fusion encoder; this decoder is causal, so the last
        non-pad token is the one that has seen the whole caption (and, through cross-attention, the video).
        """
        hidden = self.decoder.bert(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=memory, use_cache=False
        ).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        return self.itm_head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])

    def itm_loss(
        self,
        memory: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        similarity: Tensor,
        same: Tensor | None = None,
    ) -> Tensor:
        """ITM with in-batch hard negatives (ALBEF §3.2): cross-entropy over 3B pairs.

        Args:
            memory: (B, M, H) decoder memory of the batch's videos; pair b is (video b, text b).
            input_ids, attention_mask: (B, L) right-padded `[CLS] caption [SEP]`.
            similarity: (B, B) video-text contrastive similarities (rows videos), for the sampling only.
            same: optional (B, B) bool, True where video i and text j also match (never a negative).
        """
        negative_video, negative_text = sample_hard_negatives(similarity, same)
        # B positives, B (video b, hard negative text), B (hard negative video, text b)
        memory = torch.cat([memory, memory, memory[negative_video]])
        input_ids = torch.cat([input_ids, input_ids[negative_text], input_ids])
        attention_mask = torch.cat([attention_mask, attention_mask[negative_text], attention_mask])
        batch = similarity.shape[0]
        labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(memory.device)
        return F.cross_entropy(self.itm_logits(memory, input_ids, attention_mask), labels)

    @torch.no_grad()
    def generate(
        self, memory: Tensor, prompt_ids: Tensor, prompt_mask: Tensor, max_new_tokens: int, end_token_id: int
    ) -> list[list[int]]:
        """Greedy decoding after a (left-padded) prompt, with the decoder's KV cache; returns new ids per item."""
        # BERT's cross-attention layers need an encoder-decoder cache; transformers 5 creates a plain
        # DynamicCache for a decoder-only model and then fails inside cross-attention.
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        output = self.decoder.generate(
            input_ids=prompt_ids,
            cache=cache,
            attention_mask=prompt_mask,
            encoder_hidden_states=memory,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=end_token_id,
            pad_token_id=self.decoder.config.pad_token_id,
        )
        generated = output[:, prompt_ids.shape[1] :].tolist()
        return [seq[: seq.index(end_token_id)] if end_token_id in seq else seq for seq in generated]


@torch.no_grad()
def sample_hard_negatives(similarity: Tensor, same: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One hard negative per row and per column of a (B, B) video-text similarity (ALBEF §3.2).

    ALBEF samples negatives with probability softmax(similarity) over the batch, the positive (and
    here anything marked `same`) excluded, so that more similar, harder negatives are chosen more often.

    Returns:
        (negative video for each text (B,), negative text for each video (B,)), indices into the batch.
    """
    batch = similarity.shape[0]
    if batch < 2:
        raise ValueError("hard negatives need a batch of at least 2 pairs")
    excluded = torch.eye(batch, dtype=torch.bool, device=similarity.device)
    if same is not None:
        excluded = excluded | same.to(similarity.device)
    if bool(excluded.all(dim=1).any()) or bool(excluded.all(dim=0).any()):
        raise ValueError("a pair matches every other item of the batch: no negative to sample")
    sim = similarity.detach().float()
    # +1e-5 as ALBEF, so that a row whose softmax underflows still samples among its negatives
    weights_v2t = (sim.softmax(dim=1) + 1e-5).masked_fill(excluded, 0.0)
    weights_t2v = (sim.t().softmax(dim=1) + 1e-5).masked_fill(excluded.t(), 0.0)
    negative_text = torch.multinomial(weights_v2t, 1).squeeze(1)
    negative_video = torch.multinomial(weights_t2v, 1).squeeze(1)
    return negative_video, negative_text


# ---- the two CLIP image-tower kinds ----------------------------------------------------------------


def _is_timm(visual: nn.Module) -> bool:
    # open_clip wraps timm towers (EVA-CLIP) in `TimmModel`: the timm model is its `trunk`
    return hasattr(visual, "trunk")


def _vit_blocks(visual: nn.Module) -> Sequence[nn.Module]:
    return visual.trunk.blocks if _is_timm(visual) else visual.transformer.resblocks


def _vit_width(visual: nn.Module, arch: str) -> int:
    if _is_timm(visual) and hasattr(visual.trunk, "blocks") and hasattr(visual.trunk, "embed_dim"):
        return visual.trunk.embed_dim
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        return visual.transformer.width
    raise ValueError(f"{arch}: VLAB's adapters need a ViT image tower (open_clip's native ViT or a timm ViT/Eva)")


def _vit_final_norm(visual: nn.Module) -> nn.Module:
    return visual.trunk.norm if _is_timm(visual) else visual.ln_post


def _vit_tokens(visual: nn.Module, images: Tensor) -> Tensor:
    """Images (N, 3, H, W) → tokens after the last block, before the final norm: (N, prefix + patches, D)."""
    if not _is_timm(visual):
        return visual.transformer(visual._embeds(images))
    # timm Eva.forward_features without its final norm: patch embedding, absolute position embedding
    # and the rotary embedding (EVA-02's RoPE), then the blocks, each given `rope`
    trunk = visual.trunk
    x, rope = trunk._pos_embed(trunk.patch_embed(images))
    x = trunk.norm_pre(x)
    per_block = getattr(trunk, "rope_mixed", False) and rope is not None  # depth-dependent RoPE
    for index, block in enumerate(trunk.blocks):
        block_rope = rope[index] if per_block else rope
        if trunk.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, rope=block_rope, use_reentrant=False)
        else:
            x = block(x, rope=block_rope)
    return x


def _run_adapter_first(block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    # open_clip's and timm's blocks both get the tokens positionally (also under gradient
    # checkpointing); timm's Eva blocks take `rope` as a keyword, which passes through
    return (block.temporal_adapter(args[0]), *args[1:]), kwargs


def build_vlab(
    preset: Preset | VLABConfig,
    decoder_vocab_size: int | None,
    decoder_pad_token_id: int = 0,
    clip_tag: str | None = None,
) -> VLAB:
    """Build a VLAB from a preset name (`tiny`, `vlab_b32`, ..., `vlab_eva02_b16`, ...) or a config.

    `decoder_vocab_size=None` builds no generative decoder and no ITM head (retrieval only);
    `clip_tag` is the open_clip pretrained tag of the CLIP weights to be loaded (`openai`, ...).
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown VLAB preset {preset!r}; choose one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    return VLAB(preset, decoder_vocab_size, decoder_pad_token_id, clip_tag=clip_tag)


def clip_uses_quick_gelu(clip_arch: str, clip_tag: str | None) -> bool:
    """Whether open_clip builds `clip_arch` with QuickGELU for the pretrained tag `clip_tag`.

    open_clip records it in the tag's pretrained config (`quick_gelu: True` for OpenAI's weights) and
    applies it when it loads those weights itself; loading them by hand must do the same.
    """
    if clip_tag is None:
        return False
    tags = open_clip.list_pretrained_tags_by_model(clip_arch)
    if clip_tag not in tags:
        raise ValueError(
            f"clip_tag: open_clip has no pretrained tag {clip_tag!r} for {clip_arch}; choose one of {tags}"
        )
    return bool(open_clip.get_pretrained_cfg(clip_arch, clip_tag).get("quick_gelu", False))


def load_clip_state_dict(model: VLAB, state_dict: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """Load open_clip CLIP weights into both streams and the text tower.

    Returns (missing, unexpected) keys; for a complete CLIP checkpoint `missing` holds only the
    adapters, the blending, the generative and the ITM heads, which CLIP does not have.
    """
    mapped = {f"clip.{key}": value for key, value in state_dict.items()}
    mapped.update({f"video_{key}": value for key, value in state_dict.items() if key.startswith("visual.")})
    result = model.load_state_dict(mapped, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


# Hugging Face BERT checkpoints (BertForPreTraining, BertModel; TF-era `gamma`/`beta` names) → the decoder.
# The pooler and next-sentence head have no place in a decoder; cross-attention is new (VALOR/COSA start
# their multimodal decoder from BERT the same way).
_BERT_TO_DECODER_RULES: list[tuple[str, str | None]] = [
    (r"^(bert\.)?pooler\.", None),
    (r"^cls\.seq_relationship\.", None),
    (r"^bert\.", ""),
    (r"^(?!cls\.)", "bert."),
    (r"LayerNorm\.gamma$", "LayerNorm.weight"),
    (r"LayerNorm\.beta$", "LayerNorm.bias"),
]
_DECODER_NEW_KEYS = [r"bert\.encoder\.layer\.\d+\.crossattention\..*"]


def load_bert_decoder(model: VLAB, path: str) -> LoadReport:
    """Initialise the generative decoder from Hugging Face BERT (`bert-base-uncased`, `bert-large-uncased`).

    `path` is a BERT directory (`model.safetensors` or `pytorch_model.bin` beside `config.json`) or one
    weights file. Every BERT weight must fit the decoder by name and shape; only the cross-attention
    layers may stay new (and the LM head, for a bare `BertModel`). Returns what was not loaded.
    """
    if model.decoder is None:
        raise ValueError("decoder_weights: this model has no decoder (set decoder_tokenizer to build one)")
    file = Path(path)
    if file.is_dir():
        candidates = [file / name for name in ("model.safetensors", "pytorch_model.bin")]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"decoder_weights: {path} holds neither model.safetensors nor pytorch_model.bin")
        file = found[0]
    state = rename_keys(load_state_dict(file), _BERT_TO_DECODER_RULES)
    state.pop("bert.embeddings.position_ids", None)  # a buffer older checkpoints saved
    bare = not any(key.startswith("cls.") for key in state)
    allowed = _DECODER_NEW_KEYS + ([r"cls\.predictions\..*"] if bare else [])
    head = model.decoder.cls.predictions
    if head.decoder.weight.data_ptr() == model.decoder.bert.embeddings.word_embeddings.weight.data_ptr():
        # the output layer is tied to the word embeddings (and its bias to the head's): checkpoints omit it
        allowed.append(r"cls\.predictions\.decoder\.(weight|bias)")
    try:
        return load_into(model.decoder, state, strict=True, allowed_missing=allowed)
    except StateDictMismatchError as err:
        raise ValueError(
            f"decoder_weights: {file} does not fit the preset's decoder ({str(err).splitlines()[0]}); "
            "use BERT-base for the B presets and BERT-large for the L/g presets"
        ) from None
