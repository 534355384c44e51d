"""Words of the synthetic world: captions, referring expressions, MUSE-style and VQA-style questions.

Every sentence is a template from the constants below filled with attribute words, so the language is
small and closed (``vocabulary()`` lists it) yet compositional: a model has to ground colour, shape,
size, position, count and direction words separately to get far above chance.

The functions take a rendered ``Scene``/``Video`` and the generator of their stream; they never draw from
any other randomness, so the world stays a pure function of (seed, index).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vislang.shared.data.synthetic.render import BACKGROUNDS, COLORS, COOL_COLORS, SHAPES, SIZES, WARM_COLORS

if TYPE_CHECKING:
    from vislang.shared.data.synthetic.world import Scene, Video

__all__ = [
    "CAPTIONS_PER_IMAGE",
    "DIRECTIONS",
    "SEG_PLACEHOLDER",
    "SPEEDS",
    "ReasoningQuestion",
    "ReferringExpression",
    "VQAQuestion",
    "vocabulary",
]

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SPEEDS: tuple[str, ...] = ("slowly", "quickly")
SEG_PLACEHOLDER = "{seg}"
"""MUSE's placeholder in ``text_answers``: one per target, in the order of the target masks."""
CAPTIONS_PER_IMAGE = 5
NUM_ANSWERS = 10

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
HPOS = ("left", "center", "right")
VPOS = ("top", "middle", "bottom")
HPOS_PHRASE = {"left": "on the left", "center": "in the center", "right": "on the right"}
VPOS_PHRASE = {"top": "at the top", "middle": "in the middle", "bottom": "at the bottom"}
GENERIC_NOUN = "object"
"""Noun used when the shape must not be named (e.g. in "what shape is the red object?")."""

# ---- templates (all literal text lives here, so vocabulary() can read it) ------------------------------
CAPTION_TEMPLATES = (
    "{items} on {a_bg} {bg} background",
    "{a_bg} {bg} background with {items}",
    "there {be} {n} {shape_noun}: {items}",
    "an image of {items}",
    "{n} {shape_noun} on {a_bg} {bg} background, {items}",
)
REFERRING_TEMPLATE = "the {np}"
FALLBACK_TEMPLATES = ("the {extreme} {np}", "the {ordinal} {np} from the {side}")
EXTREMES = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}
REASONING_TEMPLATES: dict[str, tuple[tuple[str, ...], str, str]] = {
    # concept: (question paraphrases, answer intro for several targets, answer intro for one)
    "warm": (
        (
            "which shapes are warm-colored?",
            "find every shape with a warm color.",
            "segment the shapes that have a warm color.",
        ),
        "the warm-colored shapes are",
        "the only warm-colored shape is",
    ),
    "cool": (
        (
            "which shapes are cool-colored?",
            "find every shape with a cool color.",
            "segment the shapes that have a cool color.",
        ),
        "the cool-colored shapes are",
        "the only cool-colored shape is",
    ),
    "shape": (
        ("point out every {shape_pl}.", "where are the {shape_pl}?", "segment all the {shape_pl} in the image."),
        "the {shape_pl} are",
        "the only {shape} is",
    ),
    "color": (
        ("which objects are {color}?", "segment every {color} object.", "find all the {color} shapes."),
        "the {color} objects are",
        "the only {color} object is",
    ),
    "round": (
        ("which shapes have no corners?", "segment the round shapes."),
        "the round shapes are",
        "the only round shape is",
    ),
    "cornered": (
        ("which shapes have corners?", "segment every shape with straight edges."),
        "the shapes with corners are",
        "the only shape with corners is",
    ),
    "size": (
        ("which shapes are {size}?", "segment all the {size} shapes."),
        "the {size} shapes are",
        "the only {size} shape is",
    ),
    "half": (
        ("which shapes are in the {half} half of the image?", "segment the shapes in the {half} half."),
        "the shapes in the {half} half are",
        "the only shape in the {half} half is",
    ),
    "remove": (
        ("if every {color} shape were removed, which shapes would remain?",),
        "the remaining shapes would be",
        "the only remaining shape would be",
    ),
}
HALVES = ("left", "right", "upper", "lower")
VQA_TEMPLATES = {
    "color": "what color is the {np}?",
    "shape": "what shape is the {np}?",
    "count_all": "how many shapes are there?",
    "count_shape": "how many {shape_pl} are there?",
    "count_color": "how many {color} shapes are there?",
    "count_color_shape": "how many {color} {shape_pl} are there?",
    "exists": "is there {a} {color} {shape}?",
    "exists_any": "are there any {shape_pl}?",
    "position_yesno": "is the {np} {position}?",
    "where": "where is the {np}?",
    "background": "what pattern is on the background?",
}
VIDEO_CAPTION_TEMPLATES = (
    "{clauses}",
    "{clauses} on {a_bg} {bg} background",
    "a video of {clauses}",
    "{n} {shape_noun} moving on {a_bg} {bg} background: {clauses}",
    "{clauses}",
)
VIDEO_CLAUSES = (
    "{a} {color} {shape} moves {direction}",
    "{a} {size} {color} {shape} moving {direction}",
    "{a} {color} {shape} {speed} moving {direction}",
    "{a} {color} {shape} going {direction}",
    "the {color} {shape} {speed} moves {direction}",
)
VIDEO_QA_TEMPLATES = {
    "color": "what color is the {np}?",
    "shape": "what shape is the {np}?",
    "direction": "which direction does the {np} move?",
    "count_all": "how many shapes are there?",
    "count_direction": "how many shapes move {direction}?",
    "direction_yesno": "is the {np} moving {direction}?",
}
_GLUE = "a an and while are is there shape shapes object objects moving seg"
"""Words the code joins templates with; ``seg`` is the word inside MUSE's ``{seg}`` placeholder."""


# ---- records -----------------------------------------------------------------------------------------


@dataclass(eq=False)
class ReferringExpression:
    """A phrase that picks out exactly one instance, with that instance's mask (H x W bool) and box."""

    instance_index: int
    text: str
    mask: np.ndarray
    bbox: tuple[int, int, int, int]


@dataclass(eq=False)
class ReasoningQuestion:
    """A MUSE-style multi-target question.

    ``answer`` holds one ``{seg}`` per target, in the order of ``target_indices``/``masks`` (targets are
    sorted left to right by centroid); ``target_descriptions`` are the phrases before each ``{seg}``
    (MUSE's ``rephrased_name``); the category name is ``scene.instances[k].shape``.
    """

    question: str
    answer: str
    target_indices: tuple[int, ...]
    target_descriptions: tuple[str, ...]
    masks: list[np.ndarray]
    concept: str

    @property
    def num_targets(self) -> int:
        return len(self.target_indices)


@dataclass(eq=False)
class VQAQuestion:
    """One VQA v2-style question with ten annotator answers.

    ``answer`` is the ground truth; ``answers`` are the ten annotators' (mostly ``answer``, a few
    plausible mistakes); ``multiple_choice_answer`` is their most common answer (ties: the truth), as in
    VQA v2. ``question_type`` is a VQA v2 prefix, ``answer_type`` ``yes/no``, ``number`` or ``other``;
    ``kind`` names the template; ``target_indices`` the instances the question is about (may be empty).
    """

    question_id: int
    image_id: int
    question: str
    question_type: str
    answer_type: str
    answer: str
    answers: tuple[str, ...]
    answer_confidences: tuple[str, ...]
    multiple_choice_answer: str
    kind: str
    target_indices: tuple[int, ...]

    def question_record(self) -> dict[str, Any]:
        """The entry of ``v2_OpenEnded_mscoco_*_questions.json``'s ``questions`` list."""
        return {"image_id": self.image_id, "question": self.question, "question_id": self.question_id}

    def annotation_record(self) -> dict[str, Any]:
        """The entry of ``v2_mscoco_*_annotations.json``'s ``annotations`` list."""
        return {
            "question_id": self.question_id,
            "image_id": self.image_id,
            "question_type": self.question_type,
            "answer_type": self.answer_type,
            "multiple_choice_answer": self.multiple_choice_answer,
            "answers": [
                {"answer": a, "answer_confidence": c, "answer_id": k + 1}
                for k, (a, c) in enumerate(zip(self.answers, self.answer_confidences, strict=True))
            ],
        }


# ---- phrase helpers ----------------------------------------------------------------------------------


class _Described(Protocol):
    def attributes(self) -> dict[str, str]: ...


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _noun_phrase(attrs: dict[str, str], keys: Sequence[str]) -> str:
    """E.g. keys (size, color, shape, hpos) -> "large red circle on the left"; without shape -> "object"."""
    words = [attrs[k] for k in ("size", "color") if k in keys]
    words.append(attrs["shape"] if "shape" in keys else GENERIC_NOUN)
    if "hpos" in keys:
        words.append(HPOS_PHRASE[attrs["hpos"]])
    if "vpos" in keys:
        words.append(VPOS_PHRASE[attrs["vpos"]])
    if "direction" in keys:
        words.append(f"moving {attrs['direction']}")
    return " ".join(words)


_SCENE_KEY_SETS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color", "shape"),
    ("color",),
    ("size", "color"),
    ("shape", "hpos"),
    ("color", "shape", "hpos"),
    ("shape", "vpos"),
    ("color", "shape", "vpos"),
    ("hpos",),
    ("color", "hpos"),
    ("size", "color", "shape", "hpos"),
    ("size", "color", "shape", "vpos"),
)
_VIDEO_KEY_SETS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color", "shape"),
    ("color",),
    ("direction",),
    ("shape", "direction"),
    ("color", "direction"),
    ("color", "shape", "direction"),
)


def _unique_key_sets(
    things: Sequence[_Described], index: int, key_sets: Sequence[tuple[str, ...]], forbidden: frozenset[str]
) -> list[tuple[str, ...]]:
    """The attribute sets, free of ``forbidden`` keys, whose values match instance ``index`` only."""
    attrs = [t.attributes() for t in things]
    mine = attrs[index]
    found = []
    for keys in key_sets:
        if forbidden.intersection(keys):
            continue
        if all(any(other[k] != mine[k] for k in keys) for j, other in enumerate(attrs) if j != index):
            found.append(keys)
    return found


def _describe(
    things: Sequence[_Described],
    index: int,
    rng: np.random.Generator | None,
    key_sets: Sequence[tuple[str, ...]],
    forbidden: frozenset[str] = frozenset(),
    centroids: Sequence[tuple[float, float]] | None = None,
) -> str | None:
    """A noun phrase (with "the") naming ``things[index]`` and nothing else, or None if there is none.

    With ``rng`` a random unique attribute set is used (variety for referring expressions), else the most
    informative one that names both colour and shape when possible (answers, which should be explicit).
    When attributes cannot separate identical shapes and ``centroids`` are given, an ordinal along the
    axis where the look-alikes are most spread out is used: "the leftmost red circle", "the second ...".
    """
    options = _unique_key_sets(things, index, key_sets, forbidden)
    if options:
        if rng is not None:
            keys = options[int(rng.integers(len(options)))]
        else:
            explicit = [k for k in options if "color" in k and "shape" in k]
            keys = explicit[0] if explicit else options[0]
        return REFERRING_TEMPLATE.format(np=_noun_phrase(things[index].attributes(), keys))
    if centroids is None or forbidden & {"color", "shape", "hpos", "vpos"}:
        return None
    mine = things[index].attributes()
    twins = [j for j, t in enumerate(things) if all(t.attributes()[k] == mine[k] for k in ("color", "shape"))]
    xs = [centroids[j][0] for j in twins]
    ys = [centroids[j][1] for j in twins]
    axis, (low, high) = (0, ("left", "right")) if np.ptp(xs) >= np.ptp(ys) else (1, ("top", "bottom"))
    order = sorted(twins, key=lambda j: (centroids[j][axis], j))
    rank = order.index(index)
    np_ = _noun_phrase(mine, ("color", "shape"))
    if rank == 0:
        return FALLBACK_TEMPLATES[0].format(extreme=EXTREMES[low], np=np_)
    if rank == len(order) - 1:
        return FALLBACK_TEMPLATES[0].format(extreme=EXTREMES[high], np=np_)
    return FALLBACK_TEMPLATES[1].format(ordinal=ORDINALS[rank], np=np_, side=low)


def _counted(words: str, count: int, plural: str) -> str:
    return f"{_a(words)} {words}" if count == 1 else f"{NUMBER_WORDS[count]} {plural}"


def _grouped(instances: Sequence[Any], keys: Sequence[str]) -> list[str]:
    """Group instances with equal ``keys`` attributes (first-appearance order): "a red circle", "two blue squares"."""
    counts: Counter[tuple[str, ...]] = Counter()
    order: list[tuple[str, ...]] = []
    for inst in instances:
        a = inst.attributes()
        key = tuple(a[k] for k in keys)
        if key not in counts:
            order.append(key)
        counts[key] += 1
    phrases = []
    for key in order:
        words = " ".join(key)
        plural = " ".join([*key[:-1], PLURALS[key[-1]]])
        phrases.append(_counted(words, counts[key], plural))
    return phrases


def _shuffled(items: Sequence[Any], rng: np.random.Generator) -> list[Any]:
    return [items[k] for k in rng.permutation(len(items))]


# ---- scene texts --------------------------------------------------------------------------------------


def scene_captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Five captions. The first is canonical and deterministic -- shapes left to right with size and, for
    up to three shapes, position -- so a captioner has one learnable target and retrieval sees distinct
    captions for distinct scenes; the others shuffle the order and vary detail, like COCO's annotators.
    """
    by_x = sorted(scene.instances, key=lambda inst: inst.centroid[0])
    n = len(by_x)
    bg = scene.background
    common = {
        "a_bg": _a(bg),
        "bg": bg,
        "n": NUMBER_WORDS[n],
        "be": "is" if n == 1 else "are",
        "shape_noun": "shape" if n == 1 else "shapes",
    }
    if n <= 3:
        detailed = [f"{_a(i.size)} {i.size} {i.color} {i.shape} {HPOS_PHRASE[i.hpos]}" for i in by_x]
    else:
        detailed = _grouped(by_x, ("size", "color", "shape"))
    by_shape = _grouped(_shuffled(by_x, rng), ("shape",))
    return [
        CAPTION_TEMPLATES[0].format(items=_join(detailed), **common),
        CAPTION_TEMPLATES[1].format(items=_join(_grouped(_shuffled(by_x, rng), ("color", "shape"))), **common),
        CAPTION_TEMPLATES[2].format(items=_join(_grouped(_shuffled(by_x, rng), ("color", "shape"))), **common),
        CAPTION_TEMPLATES[3].format(items=_join(_grouped(_shuffled(by_x, rng), ("size", "color", "shape"))), **common),
        CAPTION_TEMPLATES[4].format(items=_join(by_shape), **common),
    ]


def referring_expressions(scene: Scene, rng: np.random.Generator) -> list[ReferringExpression]:
    """One uniquely-identifying expression per instance, with a randomly chosen attribute combination."""
    centroids = [inst.centroid for inst in scene.instances]
    out = []
    for k, inst in enumerate(scene.instances):
        text = _describe(scene.instances, k, rng, _SCENE_KEY_SETS, centroids=centroids)
        assert text is not None  # the ordinal fallback always succeeds
        out.append(ReferringExpression(k, text, inst.mask, inst.bbox))
    return out


def _reasoning_concepts(scene: Scene) -> list[tuple[str, dict[str, str], Callable[[Any], bool]]]:
    """(concept, template fields, predicate on an instance) for every concept this scene can ask about."""
    insts = scene.instances
    half = scene.width / 2, scene.height / 2
    concepts: list[tuple[str, dict[str, str], Callable[[Any], bool]]] = [
        ("warm", {}, lambda i: i.color in WARM_COLORS),
        ("cool", {}, lambda i: i.color in COOL_COLORS),
        ("round", {}, lambda i: i.shape == "circle"),
        ("cornered", {}, lambda i: i.shape != "circle"),
    ]
    for s in sorted({i.shape for i in insts}, key=SHAPES.index):
        concepts.append(("shape", {"shape": s, "shape_pl": PLURALS[s]}, lambda i, s=s: i.shape == s))
    colors_present = sorted({i.color for i in insts}, key=list(COLORS).index)
    for c in colors_present:
        concepts.append(("color", {"color": c}, lambda i, c=c: i.color == c))
        if len(colors_present) > 1:
            concepts.append(("remove", {"color": c}, lambda i, c=c: i.color != c))
    for z in SIZES:
        concepts.append(("size", {"size": z}, lambda i, z=z: i.size == z))
    tests = {
        "left": lambda i: i.centroid[0] < half[0],
        "right": lambda i: i.centroid[0] >= half[0],
        "upper": lambda i: i.centroid[1] < half[1],
        "lower": lambda i: i.centroid[1] >= half[1],
    }
    for h in HALVES:
        concepts.append(("half", {"half": h}, tests[h]))
    return concepts


def reasoning_questions(scene: Scene, rng: np.random.Generator, max_questions: int = 4) -> list[ReasoningQuestion]:
    """Up to ``max_questions`` MUSE-style questions with at least one target, multi-target ones first.

    MUSE itself only has questions with >= 2 targets; a writer for it should keep ``num_targets >= 2``.
    """
    centroids = [inst.centroid for inst in scene.instances]
    candidates = []
    for concept, fields, predicate in _reasoning_concepts(scene):
        targets = sorted((k for k, inst in enumerate(scene.instances) if predicate(inst)), key=lambda k: centroids[k])
        if targets:
            candidates.append((concept, fields, targets))
    order = _shuffled(candidates, rng)
    order.sort(key=lambda c: len(c[2]) < 2)  # stable: multi-target first, random within each group
    out = []
    for concept, fields, targets in order[:max_questions]:
        paraphrases, intro_many, intro_one = REASONING_TEMPLATES[concept]
        question = paraphrases[int(rng.integers(len(paraphrases)))].format(**fields)
        descriptions = tuple(
            _describe(scene.instances, k, None, _SCENE_KEY_SETS, centroids=centroids) or "" for k in targets
        )
        intro = (intro_many if len(targets) > 1 else intro_one).format(**fields)
        answer = f"{intro} {_join([f'{d} {SEG_PLACEHOLDER}' for d in descriptions])}."
        masks = [scene.instances[k].mask for k in targets]
        out.append(ReasoningQuestion(question, answer, tuple(targets), descriptions, masks, concept))
    return out


def _confusions(kind: str, truth: str) -> list[str]:
    """Plausible wrong answers an annotator might give (same answer family as the truth)."""
    if truth in ("yes", "no"):
        return ["no" if truth == "yes" else "yes"]
    if truth.isdigit():
        n = int(truth)
        return [str(m) for m in (n - 1, n + 1) if m >= 0]
    for family in (tuple(COLORS), SHAPES, HPOS, BACKGROUNDS, DIRECTIONS):
        if truth in family:
            return [w for w in family if w != truth]
    raise ValueError(f"no answer family for {truth!r} ({kind})")


def _annotate(
    question_id: int,
    image_id: int,
    question: str,
    question_type: str,
    answer_type: str,
    truth: str,
    kind: str,
    targets: Sequence[int],
    rng: np.random.Generator,
    noise: float,
) -> VQAQuestion:
    """Ten annotators: each gives the truth, except with probability ``noise`` a plausible mistake."""
    wrong = _confusions(kind, truth)
    answers = [truth if rng.random() >= noise else wrong[int(rng.integers(len(wrong)))] for _ in range(NUM_ANSWERS)]
    confidences = ["yes" if a == truth else "maybe" for a in answers]
    counts = Counter(answers)
    top = max(counts.values())
    majority = truth if counts[truth] == top else sorted(a for a, c in counts.items() if c == top)[0]
    return VQAQuestion(
        question_id,
        image_id,
        question,
        question_type,
        answer_type,
        truth,
        tuple(answers),
        tuple(confidences),
        majority,
        kind,
        tuple(targets),
    )


def _pick_referent(
    insts: Sequence[Any], rng: np.random.Generator, key_sets: Any, forbidden: frozenset[str]
) -> tuple[int, str] | None:
    """A random instance that can be named without the `forbidden` attributes (the ones the question
    asks about), with its noun phrase minus the article; None when no instance can be."""
    for k in rng.permutation(len(insts)):
        text = _describe(insts, int(k), rng, key_sets, forbidden)
        if text is not None:
            return int(k), text[len("the ") :]
    return None


def scene_vqa(scene: Scene, rng: np.random.Generator, noise: float) -> list[VQAQuestion]:
    """Seven questions per scene (fewer when a referent cannot be named): colour, shape, count, existence,
    position yes/no, where, background. Yes/no answers are balanced; counts include zero.

    ``question_id`` is ``image_id * 100 + k``.
    """
    insts = scene.instances
    rows: list[tuple[str, str, str, str, str, tuple[int, ...]]] = []  # question, qtype, atype, truth, kind, targets

    def pick(forbidden: frozenset[str]) -> tuple[int, str] | None:
        return _pick_referent(insts, rng, _SCENE_KEY_SETS, forbidden)

    if (got := pick(frozenset({"color"}))) is not None:
        k, np_ = got
        rows.append(
            (VQA_TEMPLATES["color"].format(np=np_), "what color is the", "other", insts[k].color, "color", (k,))
        )
    if (got := pick(frozenset({"shape"}))) is not None:
        k, np_ = got
        rows.append((VQA_TEMPLATES["shape"].format(np=np_), "what", "other", insts[k].shape, "shape", (k,)))

    count_kind = ("count_all", "count_shape", "count_color", "count_color_shape")[int(rng.integers(4))]
    ref = insts[int(rng.integers(len(insts)))]
    shape = ref.shape if rng.random() < 0.75 else SHAPES[int(rng.integers(len(SHAPES)))]
    color = ref.color if rng.random() < 0.75 else list(COLORS)[int(rng.integers(len(COLORS)))]
    match = {
        "count_all": lambda i: True,
        "count_shape": lambda i: i.shape == shape,
        "count_color": lambda i: i.color == color,
        "count_color_shape": lambda i: i.color == color and i.shape == shape,
    }[count_kind]
    counted = tuple(k for k, i in enumerate(insts) if match(i))
    question = VQA_TEMPLATES[count_kind].format(shape_pl=PLURALS[shape], color=color)
    rows.append((question, "how many", "number", str(len(counted)), count_kind, counted))

    present = sorted({(i.color, i.shape) for i in insts})
    if rng.random() < 0.5:
        color, shape = present[int(rng.integers(len(present)))]
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = absent[int(rng.integers(len(absent)))]
    if rng.random() < 0.5:
        hits = tuple(k for k, i in enumerate(insts) if i.color == color and i.shape == shape)
        question = VQA_TEMPLATES["exists"].format(a=_a(color), color=color, shape=shape)
        rows.append((question, "is there", "yes/no", "yes" if hits else "no", "exists", hits))
    else:
        hits = tuple(k for k, i in enumerate(insts) if i.shape == shape)
        question = VQA_TEMPLATES["exists_any"].format(shape_pl=PLURALS[shape])
        rows.append((question, "are there", "yes/no", "yes" if hits else "no", "exists_any", hits))

    if (got := pick(frozenset({"hpos", "vpos"}))) is not None:
        k, np_ = got
        asked = insts[k].hpos if rng.random() < 0.5 else HPOS[int(rng.integers(len(HPOS)))]
        question = VQA_TEMPLATES["position_yesno"].format(np=np_, position=HPOS_PHRASE[asked])
        rows.append((question, "is the", "yes/no", "yes" if asked == insts[k].hpos else "no", "position_yesno", (k,)))
    if (got := pick(frozenset({"hpos", "vpos"}))) is not None:
        k, np_ = got
        rows.append((VQA_TEMPLATES["where"].format(np=np_), "where is the", "other", insts[k].hpos, "where", (k,)))
    rows.append((VQA_TEMPLATES["background"], "what", "other", scene.background, "background", ()))

    return [
        _annotate(scene.image_id * 100 + q, scene.image_id, question, qtype, atype, truth, kind, targets, rng, noise)
        for q, (question, qtype, atype, truth, kind, targets) in enumerate(rows)
    ]


# ---- video texts --------------------------------------------------------------------------------------


def video_captions(video: Video, rng: np.random.Generator) -> list[str]:
    """Five captions; the first is canonical: the main shape first, then the others in painting order."""
    ordered = [video.instances[video.main]] + [i for k, i in enumerate(video.instances) if k != video.main]
    n = len(ordered)
    bg = video.background
    common = {"a_bg": _a(bg), "bg": bg, "n": NUMBER_WORDS[n], "shape_noun": "shape" if n == 1 else "shapes"}

    def clauses(template: str, instances: Sequence[Any]) -> str:
        parts = []
        for i in instances:
            first_word = i.size if template.startswith("{a} {size}") else i.color  # decides "a" vs "an"
            fields = {"color": i.color, "shape": i.shape, "size": i.size, "speed": i.speed, "direction": i.direction}
            parts.append(template.format(a=_a(first_word), **fields))
        return " while ".join(parts) if template == VIDEO_CLAUSES[4] else _join(parts)

    return [
        VIDEO_CAPTION_TEMPLATES[0].format(clauses=clauses(VIDEO_CLAUSES[0], ordered), **common),
        VIDEO_CAPTION_TEMPLATES[1].format(clauses=clauses(VIDEO_CLAUSES[1], _shuffled(ordered, rng)), **common),
        VIDEO_CAPTION_TEMPLATES[2].format(clauses=clauses(VIDEO_CLAUSES[2], _shuffled(ordered, rng)), **common),
        VIDEO_CAPTION_TEMPLATES[3].format(clauses=clauses(VIDEO_CLAUSES[3], _shuffled(ordered, rng)), **common),
        VIDEO_CAPTION_TEMPLATES[4].format(clauses=clauses(VIDEO_CLAUSES[4], _shuffled(ordered, rng)), **common),
    ]


def video_qa(video: Video, rng: np.random.Generator, noise: float) -> list[VQAQuestion]:
    """Up to six questions: colour, shape, direction, two counts and a direction yes/no.

    ``question_id`` is ``video.index * 100 + k``; ``image_id`` holds the video index.
    """
    insts = video.instances
    rows: list[tuple[str, str, str, str, str, tuple[int, ...]]] = []

    def pick(forbidden: frozenset[str]) -> tuple[int, str] | None:
        return _pick_referent(insts, rng, _VIDEO_KEY_SETS, forbidden)

    if (got := pick(frozenset({"color"}))) is not None:
        k, np_ = got
        rows.append(
            (VIDEO_QA_TEMPLATES["color"].format(np=np_), "what color is the", "other", insts[k].color, "color", (k,))
        )
    if (got := pick(frozenset({"shape"}))) is not None:
        k, np_ = got
        rows.append((VIDEO_QA_TEMPLATES["shape"].format(np=np_), "what", "other", insts[k].shape, "shape", (k,)))
    if (got := pick(frozenset({"direction"}))) is not None:
        k, np_ = got
        question = VIDEO_QA_TEMPLATES["direction"].format(np=np_)
        rows.append((question, "which", "other", insts[k].direction, "direction", (k,)))
    rows.append(
        (VIDEO_QA_TEMPLATES["count_all"], "how many", "number", str(len(insts)), "count_all", tuple(range(len(insts))))
    )
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    movers = tuple(k for k, i in enumerate(insts) if i.direction == direction)
    question = VIDEO_QA_TEMPLATES["count_direction"].format(direction=direction)
    rows.append((question, "how many", "number", str(len(movers)), "count_direction", movers))
    if (got := pick(frozenset({"direction"}))) is not None:
        k, np_ = got
        asked = insts[k].direction if rng.random() < 0.5 else DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        question = VIDEO_QA_TEMPLATES["direction_yesno"].format(np=np_, direction=asked)
        rows.append(
            (question, "is the", "yes/no", "yes" if asked == insts[k].direction else "no", "direction_yesno", (k,))
        )
    return [
        _annotate(video.index * 100 + q, video.index, question, qtype, atype, truth, kind, targets, rng, noise)
        for q, (question, qtype, atype, truth, kind, targets) in enumerate(rows)
    ]


# ---- vocabulary ---------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")


def vocabulary() -> list[str]:
    """Every word (lower-case ``[a-z0-9]+`` token) any text of the world can contain, sorted.

    Read from the templates (placeholders removed) and the attribute word lists, not from samples, so it
    is complete by construction; a test checks sampled texts against it.
    """
    pieces: list[str] = [*CAPTION_TEMPLATES, REFERRING_TEMPLATE, *FALLBACK_TEMPLATES, *VQA_TEMPLATES.values()]
    pieces += [*VIDEO_CAPTION_TEMPLATES, *VIDEO_CLAUSES, *VIDEO_QA_TEMPLATES.values(), _GLUE, GENERIC_NOUN]
    for paraphrases, many, one in REASONING_TEMPLATES.values():
        pieces += [*paraphrases, many, one]
    pieces += [*HPOS_PHRASE.values(), *VPOS_PHRASE.values(), *EXTREMES.values(), *HALVES, *HPOS, *VPOS]
    pieces += [*SHAPES, *PLURALS.values(), *COLORS, *SIZES, *BACKGROUNDS, *DIRECTIONS, *SPEEDS]
    pieces += [*NUMBER_WORDS, *ORDINALS, *(str(n) for n in range(len(NUMBER_WORDS))), "yes no"]
    words: set[str] = set()
    for piece in pieces:
        words.update(_WORD.findall(re.sub(r"\{[a-z_]+\}", " ", piece).lower()))
    return sorted(words)
