"""The synthetic world in the image-text formats that `vislang.shared.data.vl` reads.

==============================  ================================================================
writer                          layout under ``out_dir`` (returns the main annotation file)
==============================  ================================================================
``write_vqa_v2``                ``v2_OpenEnded_mscoco_{sub}_questions.json``, ``v2_mscoco_{sub}_annotations.json``
                                (not for test2015), ``{sub}/COCO_{sub}_{image_id:012d}.jpg``
``write_karpathy``              ``dataset_{coco,flickr30k}.json``; COCO images in ``{train,val}2014/``,
                                Flickr30k images in ``flickr30k-images/``
``write_vg_regions``            ``region_descriptions.json``, ``VG_100K/{image_id}.jpg``
``write_nlvr2``                 ``{train,dev,test1}.json`` (JSON lines), ``images/{split}[/{directory}]/*.png``
``write_snli_ve``               ``snli_ve_{train,dev,test}.jsonl``, ``flickr30k_images/{image_id}.jpg``
==============================  ================================================================

Splits map to the world's disjoint index ranges (``train`` -> train, ``val``/``dev`` -> val, ``test``/
``test1`` -> test), so no image of a held-out split is ever seen in training. Images are JPEG (quality 95)
where the real dataset ships JPEG: flat colours survive it, and the loaders see the real file type.

NLVR2 statements and SNLI-VE hypotheses are drawn from the scenes' instances: statements are true or
false by construction; *neutral* hypotheses speak of what a picture cannot show (material, intent).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vislang.shared.data.synthetic.render import COLORS, SHAPES
from vislang.shared.data.synthetic.texts import NUMBER_WORDS
from vislang.shared.data.synthetic.world import Scene, SyntheticWorld, rng_for
from vislang.shared.data.synthetic.writers import SPLIT_OFFSETS, _resolve_indices, dump_json, split_indices
from vislang.shared.data.vl import SNLI_VE_LABELS, vqa_v2_image_name

__all__ = [
    "NLVR2_SPLITS",
    "SNLI_VE_SPLITS",
    "VQA_V2_SUBTYPES",
    "write_karpathy",
    "write_nlvr2",
    "write_snli_ve",
    "write_vg_regions",
    "write_vqa_v2",
]

VQA_V2_SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015"}
NLVR2_SPLITS = {"train": "train", "dev": "val", "test1": "test"}
SNLI_VE_SPLITS = {"train": "train", "dev": "val", "test": "test"}
_VQA_INFO = {"description": "vislang synthetic world in the VQA v2 format", "version": "2.0"}
_NEUTRAL_PREDICATES = (
    "is made of paper",
    "is made of metal",
    "was drawn by a child",
    "is somebody's favourite",
    "is about to be moved",
    "was painted last week",
)


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.fromarray(image).save(path, format="PNG")
    else:
        Image.fromarray(image).save(path, format="JPEG", quality=95)


def _progress(items: Iterable[Any], description: str, total: int | None = None) -> Iterable[Any]:
    return tqdm(items, desc=description, total=total, unit="image", disable=None, leave=False)


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _has(scene: Scene, color: str | None, shape: str | None) -> bool:
    return any((color in (None, i.color)) and (shape in (None, i.shape)) for i in scene.instances)


# ---- VQA v2 -----------------------------------------------------------------------------------------


def write_vqa_v2(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], split: str = "train", indices: Iterable[int] | None = None
) -> Path:
    """VQA v2 questions (+ annotations, except for the test split) and COCO-named images; returns the questions JSON.

    ``indices`` default to the split's first ``world.num_images`` (train) or a tenth of it (val, test).
    """
    if split not in VQA_V2_SUBTYPES:
        raise ValueError(f"split must be one of {sorted(VQA_V2_SUBTYPES)}, got {split!r}")
    subtype = VQA_V2_SUBTYPES[split]
    out = Path(out_dir)
    ids = _resolve_indices(world, split, indices)
    questions, annotations = [], []
    for index in _progress(ids, f"synthetic VQA v2 {subtype} -> {out}"):
        sample = world.sample(index)
        _save(sample.scene.image, out / subtype / vqa_v2_image_name(subtype, sample.scene.image_id))
        questions.extend(q.question_record() for q in sample.vqa)
        annotations.extend(q.annotation_record() for q in sample.vqa)
    header = {"info": _VQA_INFO, "license": {}, "data_type": "mscoco", "data_subtype": subtype}
    path = dump_json(
        {**header, "task_type": "Open-Ended", "questions": questions},
        out / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
    )
    if split != "test":
        dump_json({**header, "annotations": annotations}, out / f"v2_mscoco_{subtype}_annotations.json")
    return path


# ---- Karpathy splits (COCO, Flickr30k) and Visual Genome regions -----------------------------------


def write_karpathy(
    world: SyntheticWorld,
    out_dir: str | os.PathLike[str],
    dataset: str = "coco",
    num_train: int = 100,
    num_val: int = 10,
    num_test: int = 10,
) -> Path:
    """Karpathy's ``dataset_{coco,flickr30k}.json`` with five captions per image, and the images.

    Read it back with ``read_karpathy(path, out_dir)`` for COCO (``filepath`` ``train2014``/``val2014``, as
    Karpathy's val and test come from COCO val2014) and ``read_karpathy(path, out_dir / "flickr30k-images")``
    for Flickr30k (no ``filepath``).
    """
    if dataset not in ("coco", "flickr30k"):
        raise ValueError(f"dataset must be 'coco' or 'flickr30k', got {dataset!r}")
    out = Path(out_dir)
    plan = [(i, "train") for i in split_indices("train", num_train)]
    plan += [(i, "val") for i in split_indices("val", num_val)]
    plan += [(i, "test") for i in split_indices("test", num_test)]
    images, sentence_id = [], 0
    for imgid, (index, split) in enumerate(_progress(plan, f"synthetic Karpathy {dataset} -> {out}")):
        scene = world.scene(index)
        record: dict[str, Any] = {"imgid": imgid, "split": split}
        if dataset == "coco":
            folder = "train2014" if split == "train" else "val2014"
            record.update(filepath=folder, filename=vqa_v2_image_name(folder, scene.image_id), cocoid=scene.image_id)
            _save(scene.image, out / folder / record["filename"])
        else:
            record["filename"] = f"{scene.image_id}.jpg"
            _save(scene.image, out / "flickr30k-images" / record["filename"])
        sentences = []
        for caption in world.captions(index):
            tokens = caption.lower().replace(",", " ").replace(".", " ").split()
            sentences.append({"tokens": tokens, "raw": caption, "imgid": imgid, "sentid": sentence_id})
            sentence_id += 1
        record.update(sentences=sentences, sentids=[s["sentid"] for s in sentences])
        images.append(record)
    return dump_json({"images": images, "dataset": dataset}, out / f"dataset_{dataset}.json")


def write_vg_regions(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], indices: Iterable[int] | None = None
) -> Path:
    """Visual Genome ``region_descriptions.json``: one region per instance (its referring expression and box)."""
    out = Path(out_dir)
    ids = _resolve_indices(world, "train", indices)
    records, region_id = [], 0
    for index in _progress(ids, f"synthetic Visual Genome regions -> {out}"):
        sample = world.sample(index)
        _save(sample.scene.image, out / "VG_100K" / f"{sample.scene.image_id}.jpg")
        regions = []
        for expression in sample.referring:
            x, y, w, h = expression.bbox
            region_id += 1
            regions.append(
                {
                    "region_id": region_id,
                    "image_id": sample.scene.image_id,
                    "phrase": expression.text,
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                }
            )
        records.append({"id": sample.scene.image_id, "regions": regions})
    return dump_json(records, out / "region_descriptions.json")


# ---- NLVR2 ------------------------------------------------------------------------------------------


def _nlvr2_statement(rng: np.random.Generator, left: Scene, right: Scene) -> tuple[str, Any]:
    """A statement template and its truth function over (left, right); attributes drawn so about half hold."""
    source = (left, right)[int(rng.integers(2))].instances
    picked = source[int(rng.integers(len(source)))]
    color = picked.color if rng.random() < 0.6 else list(COLORS)[int(rng.integers(len(COLORS)))]
    shape = picked.shape if rng.random() < 0.6 else SHAPES[int(rng.integers(len(SHAPES)))]
    count = int(rng.integers(1, 5))
    kind = int(rng.integers(6))
    if kind == 0:
        return f"the left image contains {_a(color)} {color} {shape}", lambda a, b: _has(a, color, shape)
    if kind == 1:
        return f"the right image contains {_a(color)} {color} {shape}", lambda a, b: _has(b, color, shape)
    if kind == 2:
        return f"both images contain {_a(shape)} {shape}", lambda a, b: _has(a, None, shape) and _has(b, None, shape)
    if kind == 3:
        return (
            "there are more shapes in the left image than in the right image",
            lambda a, b: len(a.instances) > len(b.instances),
        )
    if kind == 4:
        return (
            f"exactly one image contains {_a(color)} {color} object",
            lambda a, b: _has(a, color, None) != _has(b, color, None),
        )
    noun = "shape" if count == 1 else "shapes"
    return f"there are {NUMBER_WORDS[count]} {noun} in total", lambda a, b: len(a.instances) + len(b.instances) == count


def write_nlvr2(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], split: str = "train", num_examples: int = 100
) -> Path:
    """NLVR2 JSON lines ``{split}.json`` with two image pairs per sentence (so consistency is defined).

    Each sentence is written for two pairs of scenes; the second pair is re-drawn (up to 20 times) to have
    the opposite truth value when possible, which balances labels and makes the pair-level task non-trivial.
    """
    if split not in NLVR2_SPLITS:
        raise ValueError(f"split must be one of {sorted(NLVR2_SPLITS)}, got {split!r}")
    out = Path(out_dir)
    first = SPLIT_OFFSETS[NLVR2_SPLITS[split]]
    pool = max(4 * num_examples, 16)
    lines = []
    num_sets = (num_examples + 1) // 2
    for set_id in _progress(range(num_sets), f"synthetic NLVR2 {split} -> {out}", total=num_sets):
        rng = rng_for(world.seed, first + set_id, "nlvr2")

        def draw(rng: np.random.Generator = rng) -> tuple[Scene, Scene]:
            a, b = (int(v) for v in rng.choice(pool, size=2, replace=False))
            return world.scene(first + a), world.scene(first + b)

        pairs = [draw()]
        sentence, truth = _nlvr2_statement(rng, *pairs[0])
        wanted = not truth(*pairs[0])
        for _attempt in range(20):
            candidate = draw()
            if truth(*candidate) == wanted:
                break
        pairs.append(candidate)
        for pair_id, (left, right) in enumerate(pairs[: num_examples - 2 * set_id]):
            prefix = f"{split}-{set_id}-{pair_id}"
            record = {
                "identifier": f"{prefix}-0",
                "sentence": sentence,
                "label": str(bool(truth(left, right))),
                "left_url": f"synthetic://{left.image_id}",
                "right_url": f"synthetic://{right.image_id}",
                "writer": "synthetic",
                "synset": "shape",
                "query": "shapes",
            }
            folder = out / "images" / split
            if split == "train":
                record["directory"] = str(set_id % 100)
                folder = folder / record["directory"]
            _save(left.image, folder / f"{prefix}-img0.png")
            _save(right.image, folder / f"{prefix}-img1.png")
            lines.append(json.dumps(record))
    path = out / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- SNLI-VE ----------------------------------------------------------------------------------------


def _hypotheses(rng: np.random.Generator, scene: Scene) -> dict[str, str]:
    """One entailed, one contradicted and one neutral hypothesis about ``scene``."""
    present = scene.instances[int(rng.integers(len(scene.instances)))]
    n = len(scene.instances)
    absent = [(c, s) for c in COLORS for s in SHAPES if not _has(scene, c, s)]
    color, shape = absent[int(rng.integers(len(absent)))]
    wrong_count = int(rng.choice([k for k in range(1, 6) if k != n]))
    if rng.random() < 0.5:
        entailed = f"there is {_a(present.color)} {present.color} {present.shape} in the picture"
        contradicted = f"there is {_a(color)} {color} {shape} in the picture"
    else:
        entailed = f"the picture shows {NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'}"
        contradicted = f"the picture shows {NUMBER_WORDS[wrong_count]} {'shape' if wrong_count == 1 else 'shapes'}"
    predicate = _NEUTRAL_PREDICATES[int(rng.integers(len(_NEUTRAL_PREDICATES)))]
    return {
        "entailment": entailed,
        "contradiction": contradicted,
        "neutral": f"the {present.color} {present.shape} {predicate}",
    }


def write_snli_ve(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], split: str = "train", num_images: int = 100
) -> Path:
    """``snli_ve_{split}.jsonl`` with three hypotheses per image (one per label) and Flickr30k-named images."""
    if split not in SNLI_VE_SPLITS:
        raise ValueError(f"split must be one of {sorted(SNLI_VE_SPLITS)}, got {split!r}")
    out = Path(out_dir)
    lines = []
    for index in _progress(split_indices(SNLI_VE_SPLITS[split], num_images), f"synthetic SNLI-VE {split} -> {out}"):
        scene = world.scene(index)
        name = f"{scene.image_id}.jpg"
        _save(scene.image, out / "flickr30k_images" / name)
        caption = world.captions(index)[0]
        hypotheses = _hypotheses(rng_for(world.seed, index, "snli_ve"), scene)
        for label in SNLI_VE_LABELS:
            record = {
                "Flikr30kID": name,
                "sentence1": caption,
                "sentence2": hypotheses[label],
                "gold_label": label,
                "pairID": f"{name}#0r{label[0]}",
                "captionID": f"{name}#0",
            }
            lines.append(json.dumps(record))
    path = out / f"snli_ve_{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
