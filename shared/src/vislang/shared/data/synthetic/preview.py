"""A contact sheet of the synthetic world, to see at a glance what the models are trained on.

Each tile shows a scene twice (nearest-neighbour upscaled): as rendered, so colours can be judged, and
with a translucent overlay and a box per instance, numbered by painting order; then a caption, a referring expression (its instance's box drawn thicker),
one VQA question with its answer and a MUSE-style question. A row of video frames with its caption and
class label closes the sheet.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vislang.shared.data.synthetic.world import SyntheticWorld

__all__ = ["render_preview", "save_preview", "sheet_size"]

TILE = 128
"""Side of one upscaled image; a tile holds two of them side by side."""
TILE_WIDTH = 2 * TILE + 4
PAD = 8
COLUMNS = 4
LINE_HEIGHT = 13
TEXT_LINES = 7
VIDEO_FRAMES_SHOWN = 8
VIDEO_TEXT_LINES = 3
_BACKGROUND = (250, 250, 250)
_INK = (20, 20, 20)
_OVERLAY_PALETTE = ((255, 255, 255), (0, 0, 0), (255, 0, 255), (0, 255, 0), (255, 140, 200), (120, 60, 0))
"""Overlay colours, chosen to stand out from the shape colours; instance k gets entry k mod 6."""


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and font.getlength(trial) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    if current:
        lines.append(current)
    return lines


def sheet_size(n: int) -> tuple[int, int]:
    """(width, height) in pixels of the sheet for ``n`` scenes (the video row always follows)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rows = math.ceil(n / COLUMNS)
    width = COLUMNS * (TILE_WIDTH + PAD) + PAD
    frame = (width - PAD * (VIDEO_FRAMES_SHOWN + 1)) // VIDEO_FRAMES_SHOWN
    tile_h = TILE + TEXT_LINES * LINE_HEIGHT + 2 + PAD
    height = PAD + rows * tile_h + frame + VIDEO_TEXT_LINES * LINE_HEIGHT + 2 * PAD
    return width, height


def _scene_tile(world: SyntheticWorld, index: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    sample = world.sample(index)
    scene = sample.scene
    scale = TILE / scene.width
    raw = Image.fromarray(scene.image).resize((TILE, TILE), Image.Resampling.NEAREST)
    base = np.asarray(raw, dtype=np.float32)
    for k, inst in enumerate(scene.instances):
        big = np.asarray(Image.fromarray(inst.mask).resize((TILE, TILE), Image.Resampling.NEAREST))
        base[big] = 0.5 * base[big] + 0.5 * np.asarray(_OVERLAY_PALETTE[k % len(_OVERLAY_PALETTE)], dtype=np.float32)
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    referred = sample.referring[0].instance_index if sample.referring else -1
    for k, inst in enumerate(scene.instances):
        x, y, w, h = inst.bbox
        colour = _OVERLAY_PALETTE[k % len(_OVERLAY_PALETTE)]
        box = [x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1]
        draw.rectangle(box, outline=colour, width=3 if k == referred else 1)
        draw.text((box[0] + 2, box[1] + 1), str(k), fill=colour, font=font)
    lines = [f"#{index} class: {scene.label_name}"]
    lines += _wrap(f"C: {sample.captions[0]}", font, TILE_WIDTH)
    if sample.referring:
        lines += _wrap(f"R[{referred}]: {sample.referring[0].text}", font, TILE_WIDTH)
    if sample.vqa:
        q = sample.vqa[int(index) % len(sample.vqa)]
        lines += _wrap(f"Q: {q.question} A: {q.multiple_choice_answer}", font, TILE_WIDTH)
    if sample.reasoning:
        lines += _wrap(
            f"M: {sample.reasoning[0].question} (targets: {sample.reasoning[0].num_targets})", font, TILE_WIDTH
        )
    if len(lines) > TEXT_LINES:
        lines = lines[: TEXT_LINES - 1] + [lines[TEXT_LINES - 1].rstrip() + " ..."]
    tile = Image.new("RGB", (TILE_WIDTH, TILE + TEXT_LINES * LINE_HEIGHT + 2), _BACKGROUND)
    tile.paste(raw, (0, 0))
    tile.paste(image, (TILE + 4, 0))
    text = ImageDraw.Draw(tile)
    for row, line in enumerate(lines):
        text.text((0, TILE + 2 + row * LINE_HEIGHT), line, fill=_INK, font=font)
    return tile


def render_preview(world: SyntheticWorld, n: int = 8, first: int = 0, video_index: int = 0) -> Image.Image:
    """Scenes ``first .. first+n-1`` in a grid of ``COLUMNS`` tiles, then video ``video_index``'s frames."""
    width, height = sheet_size(n)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    font = _font()
    tile_h = TILE + TEXT_LINES * LINE_HEIGHT + 2 + PAD
    for k in range(n):
        row, col = divmod(k, COLUMNS)
        sheet.paste(_scene_tile(world, first + k, font), (PAD + col * (TILE_WIDTH + PAD), PAD + row * tile_h))
    sample = world.video_sample(video_index)
    video = sample.video
    top = PAD + math.ceil(n / COLUMNS) * tile_h
    frame = (width - PAD * (VIDEO_FRAMES_SHOWN + 1)) // VIDEO_FRAMES_SHOWN
    shown = np.linspace(0, len(video.frames) - 1, VIDEO_FRAMES_SHOWN).round().astype(int)
    draw = ImageDraw.Draw(sheet)
    for k, t in enumerate(shown):
        image = Image.fromarray(video.frames[t]).resize((frame, frame), Image.Resampling.NEAREST)
        left = PAD + k * (frame + PAD)
        sheet.paste(image, (left, top))
        draw.text((left + 2, top + 1), f"t={t}", fill=(255, 255, 255), font=font)
    text = f"video {video_index} ({video.label_name}): {sample.captions[0]}"
    if sample.qa:
        text += f" | Q: {sample.qa[0].question} A: {sample.qa[0].multiple_choice_answer}"
    for row, line in enumerate(_wrap(text, font, width - 2 * PAD)[:VIDEO_TEXT_LINES]):
        draw.text((PAD, top + frame + 2 + row * LINE_HEIGHT), line, fill=_INK, font=font)
    return sheet


def save_preview(path: str | os.PathLike[str], seed: int = 0, n: int = 8, image_size: int = 64) -> Path:
    """Render a contact sheet of a fresh ``SyntheticWorld(seed, image_size)`` and save it as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_preview(SyntheticWorld(seed=seed, image_size=image_size), n=n).save(path, format="PNG")
    return path
