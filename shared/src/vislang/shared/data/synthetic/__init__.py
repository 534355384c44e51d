"""A seeded procedural world of coloured shapes on textured backgrounds; every task is a view of it.

``SyntheticWorld(seed, image_size)`` renders scenes (images, instance masks, boxes, attributes, class
labels) and short videos of moving shapes, and derives their texts: captions, referring expressions,
MUSE-style multi-target questions, VQA questions with ten answers, video captions and QA. ``writers``
saves them in real datasets' formats; ``python -m vislang.shared.data.synthetic preview`` draws a contact
sheet. Everything is a pure function of (seed, index).
"""

from vislang.shared.data.synthetic.render import BACKGROUNDS, COLORS, COOL_COLORS, SHAPES, SIZES, WARM_COLORS
from vislang.shared.data.synthetic.texts import (
    CAPTIONS_PER_IMAGE,
    DIRECTIONS,
    SEG_PLACEHOLDER,
    SPEEDS,
    ReasoningQuestion,
    ReferringExpression,
    VQAQuestion,
)
from vislang.shared.data.synthetic.world import (
    CLASS_NAMES,
    VIDEO_CLASS_NAMES,
    Instance,
    Sample,
    Scene,
    SyntheticWorld,
    Video,
    VideoInstance,
    VideoSample,
    rng_for,
    vocabulary,
)

__all__ = [
    "BACKGROUNDS",
    "CAPTIONS_PER_IMAGE",
    "CLASS_NAMES",
    "COLORS",
    "COOL_COLORS",
    "DIRECTIONS",
    "SEG_PLACEHOLDER",
    "SHAPES",
    "SIZES",
    "SPEEDS",
    "VIDEO_CLASS_NAMES",
    "WARM_COLORS",
    "Instance",
    "ReasoningQuestion",
    "ReferringExpression",
    "Sample",
    "Scene",
    "SyntheticWorld",
    "VQAQuestion",
    "Video",
    "VideoInstance",
    "VideoSample",
    "rng_for",
    "vocabulary",
]
