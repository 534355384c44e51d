"""PixelLM tab: an image and a question in; the generated answer, one coloured mask per target and a legend out.

The model call is the package's own `PixelLMModule.segment` (greedy generation with the KV cache, one mask
per complete codebook group, masks at the image's size) and `write_overlay_png` (each mask blended in
`PALETTE[k]`). The legend ties mask k to the words the answer puts before its k-th `[SEG]`.
"""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vislang.app.checkpoints import checkpoint_hparams, resolve_relative
from vislang.app.inputs import CheckedImage, check_question
from vislang.pixellm.callbacks import PALETTE, write_overlay_png
from vislang.pixellm.module import PixelLMModule

__all__ = [
    "DISPLAY_MIN_SIDE",
    "PixelLMResult",
    "Target",
    "answer_phrases",
    "load_pixellm",
    "outline_masks",
    "run_pixellm",
]

SEG = "[SEG]"
DISPLAY_MIN_SIDE = 384
"""Overlays of smaller images are enlarged by an integer factor (nearest neighbour) to about this size."""
# what separates one target's words from the text before them: "are the red circle [SEG], the blue
# square [SEG] and the green star [SEG]."
_BEFORE_TARGET = re.compile(r"(?:,|;|:|\.|\band\b|\bare\b|\bis\b|\bor\b)\s*", flags=re.IGNORECASE)


@dataclass
class Target:
    """One predicted mask: its number (1-based), colour, the answer's words for it, confidence, area."""

    number: int
    colour: tuple[int, int, int]
    words: str
    score: float
    area: float  # fraction of the image's pixels

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.colour)


@dataclass
class PixelLMResult:
    answer: str
    overlay: Path
    targets: list[Target]
    notes: list[str] = field(default_factory=list)

    def legend_html(self) -> str:
        """The answer with each target's words in its mask's colour, then one legend row per mask."""
        parts = self.answer.split(SEG)
        spans = []
        for k, text in enumerate(parts):
            if k < len(self.targets):
                target = self.targets[k]
                words, stripped = target.words, text.rstrip()
                head = stripped[: len(stripped) - len(words)] if words and stripped.endswith(words) else text
                spans.append(html.escape(head))
                spans.append(
                    f'<span class="seg" style="background:{target.hex};color:#fff;padding:0 4px;'
                    f'border-radius:4px">{html.escape(words or "?")} [mask {target.number}]</span>'
                )
            else:
                spans.append(html.escape(text) + (html.escape(SEG) if k < len(parts) - 1 else ""))
        rows = "".join(
            f'<li class="legend-row"><span style="display:inline-block;width:1em;height:1em;background:{t.hex};'
            f'vertical-align:middle;margin-right:6px;border:1px solid #333"></span><b>mask {t.number}</b>: '
            f"{html.escape(t.words or '(no words before its [SEG])')} "
            f"<small>(confidence {t.score:.2f}, {100 * t.area:.1f}% of the image)</small></li>"
            for t in self.targets
        )
        if not self.targets:
            rows = "<li>no mask: the answer has no complete segmentation-token group</li>"
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f'<div id="pixellm-answer"><p><b>Answer:</b> {"".join(spans)}</p>'
            f'<ul id="pixellm-legend" style="list-style:none;padding-left:0">{rows}</ul>'
            + (f"<ul><small>{notes}</small></ul>" if notes else "")
            + "</div>"
        )


def answer_phrases(answer: str, count: int) -> list[str]:
    """The words naming each of the first `count` targets: the text before its `[SEG]`, back to the last
    comma, 'and', 'are', 'is', ... ("the red circle" in "the shapes are the red circle [SEG], ...")."""
    parts = answer.split(SEG)
    phrases = []
    for k in range(count):
        if k >= len(parts) - 1:
            phrases.append("")
            continue
        text = parts[k]
        cuts = list(_BEFORE_TARGET.finditer(text))
        phrases.append(text[cuts[-1].end() :].strip() if cuts else text.strip())
    return phrases


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """4-neighbour erosion, `steps` times; pixels on the image border count as edge."""
    inner = mask.copy()
    for _ in range(steps):
        eroded = inner.copy()
        eroded[0, :] = eroded[-1, :] = eroded[:, 0] = eroded[:, -1] = False
        eroded[1:] &= inner[:-1]
        eroded[:-1] &= inner[1:]
        eroded[:, 1:] &= inner[:, :-1]
        eroded[:, :-1] &= inner[:, 1:]
        inner = eroded
    return inner


def outline_masks(overlay: Path, masks: np.ndarray) -> int:
    """Enlarge a small overlay by whole pixels (nearest) to about `DISPLAY_MIN_SIDE`, then draw each mask's
    edge in its pure legend colour: the blend alone (mask colour over a coloured shape) can look like
    another colour, the edge ties the region to its legend swatch. Returns the enlargement factor."""
    picture = Image.open(overlay).convert("RGB")
    factor = max(1, DISPLAY_MIN_SIDE // max(picture.size))
    canvas = np.asarray(picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST))
    canvas = canvas.copy()
    width = max(1, factor // 3)  # display pixels; 2 for a 64-px image shown 6x larger
    for k, mask in enumerate(masks):
        big = np.repeat(np.repeat(mask, factor, 0), factor, 1)
        canvas[big & ~_erode(big, width)] = PALETTE[k % len(PALETTE)]
    Image.fromarray(canvas).save(overlay)
    return factor


def load_pixellm(path: str | Path) -> PixelLMModule:
    """A PixelLM checkpoint for inference on the CPU (no base weights re-read: the checkpoint holds them)."""
    hparams = checkpoint_hparams(path)
    if "tokenizer" not in hparams or "max_new_tokens" not in hparams:
        raise ValueError(f"{path}: not a PixelLM checkpoint (PixelLMModule); pass one to --pixellm-ckpt")
    tokenizer = resolve_relative(hparams.get("tokenizer"), path)
    model = PixelLMModule.load_from_checkpoint(
        path,
        map_location="cpu",
        tokenizer=tokenizer,
        llava_weights=None,
        clip_weights=None,
        pixellm_weights=None,
        init_weights=None,
        results_dir=None,
    )
    return model.eval()


def run_pixellm(model: PixelLMModule, image: CheckedImage, question: str, out_dir: Path) -> PixelLMResult:
    """Segment every target the answer names; the overlay PNG goes into `out_dir` (the app's temp folder)."""
    question = check_question(question)
    result = model.segment(image.array, question)
    masks = np.asarray(result.masks, dtype=bool).reshape(-1, *image.array.shape[:2])
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay = write_overlay_png(image.array, masks, out_dir / f"pixellm_overlay_{uuid.uuid4().hex[:12]}.png")
    outline_masks(overlay, masks)
    words = answer_phrases(result.answer, len(masks))
    targets = [
        Target(k + 1, PALETTE[k % len(PALETTE)], words[k], float(result.scores[k]), float(masks[k].mean()))
        for k in range(len(masks))
    ]
    notes = list(image.notes)
    if result.dropped_tokens:
        notes.append(f"{result.dropped_tokens} segmentation tokens of an incomplete group were dropped")
    return PixelLMResult(result.answer, overlay, targets, notes)
