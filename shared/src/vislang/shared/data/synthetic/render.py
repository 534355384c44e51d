"""Pixels of the synthetic world: the closed vocabulary of shapes/colours/textures and how each is drawn.

Shapes are rasterised with PIL straight to binary masks (no anti-aliasing), so a mask and the pixels it
paints agree exactly -- the tests and the COCO writers rely on that. Backgrounds are grey, low-contrast
textures: busy enough that a model must look at shapes rather than at flat colour, quiet enough that
every shape colour stays far from every background pixel.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "COOL_COLORS",
    "SHAPES",
    "SIZES",
    "WARM_COLORS",
    "draw_background",
    "object_centric_image",
    "shape_mask",
    "shape_radius",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
"""Shape categories; COCO ``category_id`` is the position here + 1."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (240, 135, 25),
    "yellow": (235, 215, 45),
    "green": (45, 170, 65),
    "cyan": (40, 200, 215),
    "blue": (45, 80, 215),
    "purple": (150, 60, 200),
}
"""Nominal RGB of each colour name; instances jitter it by at most ``COLOR_JITTER`` per channel."""

WARM_COLORS: frozenset[str] = frozenset({"red", "orange", "yellow"})
COOL_COLORS: frozenset[str] = frozenset({"green", "cyan", "blue", "purple"})

COLOR_JITTER = 10
"""Per-channel jitter of an instance's colour: colour names are categories, not single RGB values."""

SIZES: tuple[str, ...] = ("small", "large")
_RADIUS_FRACTION = {"small": 0.11, "large": 0.17}
"""Half-extent of a shape as a fraction of the image side (64 px: 7 and 11 px); large is ~1.5x small."""

BACKGROUNDS: tuple[str, ...] = ("striped", "checkered", "noisy", "gradient")


def shape_radius(size_name: str, image_size: int) -> float:
    """Nominal half-extent in pixels of a ``small``/``large`` shape in an image of side ``image_size``."""
    if size_name not in _RADIUS_FRACTION:
        raise ValueError(f"size must be one of {SIZES}, got {size_name!r}")
    return max(_RADIUS_FRACTION[size_name] * image_size, 2.5)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = 0.85 * r  # a square of half-side r would look much bigger than a circle of radius r
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "cross":
        a = 0.36 * r
        return [
            (cx - a, cy - r),
            (cx + a, cy - r),
            (cx + a, cy - a),
            (cx + r, cy - a),
            (cx + r, cy + a),
            (cx + a, cy + a),
            (cx + a, cy + r),
            (cx - a, cy + r),
            (cx - a, cy + a),
            (cx - r, cy + a),
            (cx - r, cy - a),
            (cx - a, cy - a),
        ]
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def shape_mask(shape: str, cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    """The full (un-occluded) binary mask, H x W bool, of ``shape`` centred at (cx, cy) with half-extent r."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=255)
    return np.asarray(canvas) > 0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Value noise in [-1, 1]: a coarse random grid upsampled bicubically (a cheap Perlin stand-in)."""
    coarse = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    up = Image.fromarray(coarse, mode="L").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 127.5 - 1.0


def draw_background(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A low-contrast textured background, H x W x 3 uint8.

    A grey base (95..150) with a faint tint carries a texture of amplitude 10..18 grey levels; the most
    saturated channel of any background pixel stays far below that of the shape colours.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = float(max(height, width))
    theta = rng.uniform(0, math.pi)
    if kind == "striped":
        period = side / rng.uniform(5, 9)
        pattern = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    elif kind == "checkered":
        cell = max(side / rng.integers(4, 9), 2.0)
        pattern = (
            (np.floor(xx / cell) + np.floor(yy / cell)) % 2
        ) - 0.5  # in [-0.5, 0.5]: hard edges look busier than smooth textures
    elif kind == "noisy":
        pattern = 0.7 * _smooth_noise(rng, height, width, 6) + 0.3 * rng.uniform(-1, 1, size=(height, width))
    elif kind == "gradient":
        ramp = xx * math.cos(theta) + yy * math.sin(theta)
        pattern = 2.0 * (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6) - 1.0
    else:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {kind!r}")
    base = rng.uniform(95, 150) + rng.normal(0, 5, size=3)
    amplitude = rng.uniform(10, 18)
    pixels = base[None, None, :] + amplitude * pattern[..., None]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def object_centric_image(
    shape: str,
    rgb: tuple[int, int, int],
    background_rgb: tuple[int, int, int],
    size: int,
    cx: float,
    cy: float,
    r: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One large shape on a flat background (an object-centric image), ``(size x size x 3 uint8, mask)``.

    Unlike a scene, nothing but the outline tells the classes apart: the background is one flat colour and
    the shape is filled with one colour, so a model that classifies these images has to see the shape.
    """
    mask = shape_mask(shape, cx, cy, r, size, size)
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[...] = np.asarray(background_rgb, dtype=np.uint8)
    image[mask] = np.asarray(rgb, dtype=np.uint8)
    return image, mask
