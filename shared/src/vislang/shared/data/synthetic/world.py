"""The synthetic world: seeded scenes and videos of coloured shapes, and ``SyntheticWorld``, its front door.

Everything is a pure function of ``(seed, index, stream)``: each view (scene pixels, captions, VQA, ...)
draws from its own ``numpy.random.Generator`` (PCG64 seeded by ``SeedSequence([seed, index, stream])``),
so asking for captions never shifts the VQA noise, and a DataLoader worker in another process produces
the same bytes as the main process. There is no global RNG and no cache.

Occlusion rule: instances are painted in list order (``depth`` 0 at the bottom); a later instance hides
the pixels of earlier ones where they overlap, and every ``mask`` is the *visible* region. Layouts are
re-drawn until every instance keeps at least ``MIN_VISIBLE_FRACTION`` of its full shape visible (in
every frame, for videos), so no object is hidden enough to make its colour, count or motion ambiguous.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from vislang.shared.data.synthetic import texts
from vislang.shared.data.synthetic.render import (
    BACKGROUNDS,
    COLOR_JITTER,
    COLORS,
    SHAPES,
    SIZES,
    draw_background,
    shape_mask,
    shape_radius,
)
from vislang.shared.data.synthetic.texts import (
    DIRECTIONS,
    SPEEDS,
    ReasoningQuestion,
    ReferringExpression,
    VQAQuestion,
)

__all__ = [
    "CLASS_NAMES",
    "VIDEO_CLASS_NAMES",
    "Instance",
    "Sample",
    "Scene",
    "SyntheticWorld",
    "Video",
    "VideoInstance",
    "VideoSample",
    "rng_for",
]

CLASS_NAMES: tuple[str, ...] = SHAPES
"""Image class = the shape of the instance with the largest visible area (ties: the lower depth)."""

VIDEO_CLASS_NAMES: tuple[str, ...] = tuple(f"moving {d}" for d in DIRECTIONS)
"""Video class = the motion direction of the main shape (largest mean visible area; ties: lower depth)."""

MIN_VISIBLE_FRACTION = 0.7
"""Each scene instance keeps >= 70% of its full shape visible; videos use ``MIN_VISIBLE_FRACTION_VIDEO``."""
MIN_VISIBLE_FRACTION_VIDEO = 0.55
_PLACEMENT_ATTEMPTS = 40
_DUPLICATE_PROBABILITY = 0.3
"""Chance that a new scene instance copies an earlier one's colour and shape, so counts above one occur."""
_TRAVEL_FRACTION = {"slowly": 0.25, "quickly": 0.45}
"""Distance a shape travels over the whole clip, as a fraction of the frame side."""

_STREAMS = {
    "scene": 0,
    "video": 1,
    "captions": 2,
    "referring": 3,
    "reasoning": 4,
    "vqa": 5,
    "video_captions": 6,
    "video_qa": 7,
    "nlvr2": 8,
    "snli_ve": 9,
}


def rng_for(seed: int, index: int, stream: str) -> np.random.Generator:
    """The generator of one view of one sample: PCG64 keyed by (seed, index, stream), nothing else."""
    if stream not in _STREAMS:
        raise ValueError(f"unknown stream {stream!r}; known: {sorted(_STREAMS)}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index, _STREAMS[stream]])))


def _bbox_xywh(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight COCO box (x, y, w, h) in whole pixels: the mask's extreme columns/rows, inclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if xs.size else (math.nan, math.nan)


def _third(value: float, extent: int, names: tuple[str, str, str]) -> str:
    return names[min(int(3 * value / extent), 2)]


def _jitter_rgb(color: str, rng: np.random.Generator) -> tuple[int, int, int]:
    base = np.asarray(COLORS[color], dtype=np.int64)
    rgb = np.clip(base + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3), 0, 255)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


# ---- data structures -------------------------------------------------------------------------------


@dataclass(eq=False)
class Instance:
    """One shape in a scene. ``mask`` is the visible region (H x W bool) after occlusion by later shapes;
    ``amodal_mask`` the whole shape as if nothing covered it.

    ``bbox`` is COCO xywh of the visible mask in whole pixels; ``hpos``/``vpos`` are the thirds of the
    image (left/center/right, top/middle/bottom) that hold the visible mask's centroid (x, y).
    """

    shape: str
    color: str
    size: str
    rgb: tuple[int, int, int]
    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    area: int
    centroid: tuple[float, float]
    hpos: str
    vpos: str
    depth: int
    amodal_mask: np.ndarray

    @property
    def category_id(self) -> int:
        """COCO category id (1-based position in ``SHAPES``)."""
        return SHAPES.index(self.shape) + 1

    def attributes(self) -> dict[str, str]:
        """The words a text may use to pick this instance out."""
        return {"shape": self.shape, "color": self.color, "size": self.size, "hpos": self.hpos, "vpos": self.vpos}


@dataclass(eq=False)
class Scene:
    """A still image of the world. ``image`` is H x W x 3 uint8; ``instances`` are in painting order."""

    index: int
    seed: int
    image: np.ndarray
    background: str
    instances: list[Instance]
    label: int
    """Index into ``CLASS_NAMES``: the shape of the largest visible instance."""

    @property
    def image_id(self) -> int:
        """The COCO/VQA ``image_id`` of this scene: its index."""
        return self.index

    @property
    def label_name(self) -> str:
        return CLASS_NAMES[self.label]

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(eq=False)
class VideoInstance:
    """One moving shape: ``masks`` T x H x W bool (visible regions), ``bboxes``/``centroids`` per frame.

    It moves in a straight line at constant speed: ``direction`` in ``DIRECTIONS``, ``speed`` ``slowly``
    (a quarter of the frame over the clip) or ``quickly`` (nearly half of it).
    """

    shape: str
    color: str
    size: str
    rgb: tuple[int, int, int]
    direction: str
    speed: str
    masks: np.ndarray
    bboxes: list[tuple[int, int, int, int]]
    centroids: list[tuple[float, float]]
    depth: int

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "direction": self.direction}


@dataclass(eq=False)
class Video:
    """A short clip: ``frames`` T x H x W x 3 uint8 at ``fps``, with its moving ``instances``."""

    index: int
    seed: int
    frames: np.ndarray
    background: str
    instances: list[VideoInstance]
    main: int
    """Index of the main instance (largest mean visible area), whose direction is the class label."""
    fps: int

    @property
    def label(self) -> int:
        return DIRECTIONS.index(self.instances[self.main].direction)

    @property
    def label_name(self) -> str:
        return VIDEO_CLASS_NAMES[self.label]

    @property
    def video_id(self) -> str:
        """A file stem in MSRVTT style (``video{index}``)."""
        return f"video{self.index}"


@dataclass(eq=False)
class Sample:
    """Every view of one scene, rendered once."""

    scene: Scene
    captions: list[str]
    referring: list[ReferringExpression]
    reasoning: list[ReasoningQuestion]
    vqa: list[VQAQuestion]


@dataclass(eq=False)
class VideoSample:
    """Every view of one video, rendered once."""

    video: Video
    captions: list[str]
    qa: list[VQAQuestion]


# ---- the world -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticWorld:
    """A seeded, infinite, procedural world of coloured shapes on textured backgrounds.

    ``scene(i)``/``video(i)`` accept any index >= 0; ``num_images``/``num_videos`` only bound iteration
    (``len``, ``world[i]``, ``corpus``) and the writers' default split sizes.

    Args:
        seed: world seed; every output is a pure function of (seed, index).
        image_size: side of the square scene images (>= 24; shapes are ~22% and ~34% of it across).
        min_objects / max_objects: number of shapes per scene (uniform; fewer if placement fails).
        num_images / num_videos: nominal dataset sizes.
        video_size: side of video frames (defaults to ``image_size``).
        num_frames: frames per clip.
        max_video_objects: shapes per clip, 1..this.
        fps: nominal frame rate written into video files.
        answer_noise: probability that one of the ten VQA annotators gives a plausible wrong answer.
    """

    seed: int = 0
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    num_images: int = 1000
    num_videos: int = 200
    video_size: int | None = None
    num_frames: int = 16
    max_video_objects: int = 3
    fps: int = 8
    answer_noise: float = 0.1
    _video_size: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        for name in ("image_size", "video_size"):
            value = getattr(self, name)
            if value is not None and value < 24:
                raise ValueError(f"{name} must be >= 24 pixels so shapes stay recognisable, got {value}")
        if not 1 <= self.min_objects <= self.max_objects <= 10:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 10, got {self.min_objects}, {self.max_objects}")
        if not 1 <= self.max_video_objects <= 5:
            raise ValueError(f"max_video_objects must be in 1..5, got {self.max_video_objects}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 to show motion, got {self.num_frames}")
        if not 0.0 <= self.answer_noise < 0.5:
            raise ValueError(
                f"answer_noise must be in [0, 0.5) so the majority answer is right, got {self.answer_noise}"
            )
        if self.num_images < 0 or self.num_videos < 0 or self.fps <= 0:
            raise ValueError("num_images and num_videos must be >= 0 and fps > 0")
        object.__setattr__(self, "_video_size", self.video_size or self.image_size)

    # -- dataset protocol: scenes with all their texts --
    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return self.sample(index)

    def __iter__(self) -> Iterator[Sample]:
        return (self.sample(i) for i in range(self.num_images))

    def _check_index(self, index: int) -> None:
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be a non-negative int, got {index!r}")

    # -- scenes --
    def scene(self, index: int) -> Scene:
        """Render scene ``index``: background, shapes with visible masks, boxes, attributes and label."""
        self._check_index(index)
        rng = rng_for(self.seed, int(index), "scene")
        size = self.image_size
        background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        image = draw_background(background, size, size, rng)
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        specs: list[tuple[str, str, str, tuple[int, int, int]]] = []
        full: list[np.ndarray] = []
        visible: list[np.ndarray] = []
        for _ in range(n):
            if specs and rng.random() < _DUPLICATE_PROBABILITY:
                shape, color = specs[int(rng.integers(len(specs)))][:2]
            else:
                shape, color = SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))]
            size_name = SIZES[rng.integers(len(SIZES))]
            rgb = _jitter_rgb(color, rng)
            for _attempt in range(_PLACEMENT_ATTEMPTS):
                r = shape_radius(size_name, size) * rng.uniform(0.92, 1.08)
                cx, cy = rng.uniform(r + 1, size - r - 2, size=2)
                mask = shape_mask(shape, cx, cy, r, size, size)
                if all(
                    (vis & ~mask).sum() >= MIN_VISIBLE_FRACTION * f.sum() for vis, f in zip(visible, full, strict=True)
                ):
                    break
            else:
                continue  # no room for this one: the scene gets fewer shapes
            visible = [vis & ~mask for vis in visible] + [mask]
            full.append(mask)
            specs.append((shape, color, size_name, rgb))
        instances = []
        for depth, ((shape, color, size_name, rgb), mask, whole) in enumerate(zip(specs, visible, full, strict=True)):
            image[mask] = rgb
            centroid = _centroid(mask)
            instances.append(
                Instance(
                    shape=shape,
                    color=color,
                    size=size_name,
                    rgb=rgb,
                    mask=mask,
                    bbox=_bbox_xywh(mask),
                    area=int(mask.sum()),
                    centroid=centroid,
                    hpos=_third(centroid[0], size, ("left", "center", "right")),
                    vpos=_third(centroid[1], size, ("top", "middle", "bottom")),
                    depth=depth,
                    amodal_mask=whole,
                )
            )
        largest = max(range(len(instances)), key=lambda k: (instances[k].area, -k))
        return Scene(int(index), self.seed, image, background, instances, SHAPES.index(instances[largest].shape))

    def captions(self, index: int) -> list[str]:
        """Five paraphrases; the first is canonical (left-to-right, sizes, positions), the rest vary."""
        return texts.scene_captions(self.scene(index), rng_for(self.seed, int(index), "captions"))

    def referring_expressions(self, index: int) -> list[ReferringExpression]:
        """One expression per instance that picks it out uniquely, with its mask and box."""
        return texts.referring_expressions(self.scene(index), rng_for(self.seed, int(index), "referring"))

    def reasoning_questions(self, index: int) -> list[ReasoningQuestion]:
        """MUSE-style questions: an answer text with one ``{seg}`` per target, target masks in order."""
        return texts.reasoning_questions(self.scene(index), rng_for(self.seed, int(index), "reasoning"))

    def vqa(self, index: int) -> list[VQAQuestion]:
        """VQA v2-style questions with ten (occasionally noisy) annotator answers each."""
        return texts.scene_vqa(self.scene(index), rng_for(self.seed, int(index), "vqa"), self.answer_noise)

    def sample(self, index: int) -> Sample:
        """The scene and all its text views, rendering the scene once (the views equal the methods')."""
        scene = self.scene(index)
        i = int(index)
        return Sample(
            scene=scene,
            captions=texts.scene_captions(scene, rng_for(self.seed, i, "captions")),
            referring=texts.referring_expressions(scene, rng_for(self.seed, i, "referring")),
            reasoning=texts.reasoning_questions(scene, rng_for(self.seed, i, "reasoning")),
            vqa=texts.scene_vqa(scene, rng_for(self.seed, i, "vqa"), self.answer_noise),
        )

    # -- videos --
    def video(self, index: int) -> Video:
        """Render clip ``index``: shapes moving in straight lines over a static textured background."""
        self._check_index(index)
        rng = rng_for(self.seed, int(index), "video")
        size, frames_n = self._video_size, self.num_frames
        background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        still = draw_background(background, size, size, rng)
        n = int(rng.integers(1, self.max_video_objects + 1))
        t = np.arange(frames_n) / (frames_n - 1)
        specs: list[tuple[str, str, str, tuple[int, int, int], str, str]] = []
        fulls: list[np.ndarray] = []  # T x H x W per instance
        for _ in range(n):
            shape, color = SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))]
            size_name = SIZES[rng.integers(len(SIZES))]
            direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
            speed = SPEEDS[rng.integers(len(SPEEDS))]
            rgb = _jitter_rgb(color, rng)
            for _attempt in range(_PLACEMENT_ATTEMPTS):
                r = shape_radius(size_name, size) * rng.uniform(0.92, 1.08)
                lo, hi = r + 1, size - r - 2
                travel = min(_TRAVEL_FRACTION[speed] * size, hi - lo)
                dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
                # start so the whole path stays inside the frame
                x0 = rng.uniform(lo + travel * (dx < 0), hi - travel * (dx > 0))
                y0 = rng.uniform(lo + travel * (dy < 0), hi - travel * (dy > 0))
                path = np.stack(
                    [shape_mask(shape, x0 + dx * travel * s, y0 + dy * travel * s, r, size, size) for s in t]
                )
                if self._video_layout_ok([*fulls, path]):
                    break
            else:
                continue
            fulls.append(path)
            specs.append((shape, color, size_name, rgb, direction, speed))
        frames = np.repeat(still[None], frames_n, axis=0)
        visible = [f.copy() for f in fulls]
        for k, f in enumerate(fulls):
            for j in range(k):
                visible[j] &= ~f
        instances = []
        for depth, ((shape, color, size_name, rgb, direction, speed), masks) in enumerate(
            zip(specs, visible, strict=True)
        ):
            frames[masks] = rgb
            instances.append(
                VideoInstance(
                    shape=shape,
                    color=color,
                    size=size_name,
                    rgb=rgb,
                    direction=direction,
                    speed=speed,
                    masks=masks,
                    bboxes=[_bbox_xywh(m) for m in masks],
                    centroids=[_centroid(m) for m in masks],
                    depth=depth,
                )
            )
        main = max(range(len(instances)), key=lambda k: (float(instances[k].masks.sum()), -k))
        return Video(int(index), self.seed, frames, background, instances, main, self.fps)

    @staticmethod
    def _video_layout_ok(paths: Sequence[np.ndarray]) -> bool:
        """Whether every instance keeps MIN_VISIBLE_FRACTION_VIDEO of itself visible in every frame."""
        for k, path in enumerate(paths):
            above = np.zeros_like(path)
            for later in paths[k + 1 :]:
                above |= later
            full_area = path.sum(axis=(1, 2))
            visible_area = (path & ~above).sum(axis=(1, 2))
            if np.any(visible_area < MIN_VISIBLE_FRACTION_VIDEO * full_area):
                return False
        return True

    def video_captions(self, index: int) -> list[str]:
        """Five paraphrases of what moves where; the first is canonical (main shape first)."""
        return texts.video_captions(self.video(index), rng_for(self.seed, int(index), "video_captions"))

    def video_qa(self, index: int) -> list[VQAQuestion]:
        """Questions about colour, shape, count and direction, in the same record type as image VQA."""
        return texts.video_qa(self.video(index), rng_for(self.seed, int(index), "video_qa"), self.answer_noise)

    def video_sample(self, index: int) -> VideoSample:
        """The video and its text views, rendering the clip once."""
        video = self.video(index)
        i = int(index)
        return VideoSample(
            video=video,
            captions=texts.video_captions(video, rng_for(self.seed, i, "video_captions")),
            qa=texts.video_qa(video, rng_for(self.seed, i, "video_qa"), self.answer_noise),
        )

    # -- text corpus --
    def corpus(self, num_images: int | None = None, num_videos: int | None = None) -> Iterator[str]:
        """Texts for training a tokenizer: captions, expressions, questions and answers of the first
        ``num_images`` scenes / ``num_videos`` videos (default: 200 / 50), then one line holding every
        word in ``vocabulary()`` so rare template words are never missing from the tokenizer.
        """
        n_img = min(self.num_images, 200) if num_images is None else num_images
        n_vid = min(self.num_videos, 50) if num_videos is None else num_videos
        for i in range(n_img):
            s = self.sample(i)
            yield from s.captions
            yield from (r.text for r in s.referring)
            for q in s.reasoning:
                yield q.question
                yield q.answer
            for v in s.vqa:
                yield v.question
                yield from sorted(set(v.answers))
        for i in range(n_vid):
            vs = self.video_sample(i)
            yield from vs.captions
            for v in vs.qa:
                yield v.question
                yield from sorted(set(v.answers))
        yield " ".join(texts.vocabulary())


def vocabulary() -> list[str]:
    """Every word (lower-case ``[a-z0-9]+`` token) any text of the world can contain, sorted."""
    return texts.vocabulary()
