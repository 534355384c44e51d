"""The synthetic world as reasoning / referring segmentation datasets: MUSE JSON and the refCOCO refer layout.

==================  ==========================================================================================
writer              layout under ``out_dir``
==================  ==========================================================================================
``write_muse``      ``images/{split}/{image_id:012d}.png``; ``{json_name}`` (default ``muse_{split}.json``);
                    ``file_name`` is ``{split}/{image_id:012d}.png``, relative to ``images/``
``write_refer``     ``images/mscoco/images/train2014/COCO_train2014_{image_id:012d}.png``;
                    ``{dataset}/instances.json`` (COCO instances, polygons); ``{dataset}/refs({split_by}).p``
``write_ade20k``    ``ade20k/images/training/{id}.jpg``, ``ade20k/annotations/training/{id}.png`` (uint8: 0 =
                    unlabelled, k + 1 = class k), ``ade20k/ade20k_classes.json`` (the class-name list)
``write_cocostuff`` ``coco/train2017/{id}.jpg``, ``cocostuff/train2017/{id}.png`` (class index, 255 =
                    unlabelled), ``cocostuff/cocostuff_classes.txt`` (a header line, then ``k: name``)
``write_paco_lvis`` ``coco/train2017/{id}.jpg``, ``vlpart/paco/annotations/paco_lvis_v1_train.json`` (COCO
                    instances; categories ``object`` and ``object:part``; ``file_name`` ``train2017/{id}.jpg``)
``write_pascal_part`` ``vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/{id}.jpg``,
                    ``vlpart/pascal_part/train.json`` (COCO instances; categories ``object:part``)
==================  ==========================================================================================

The four semantic-segmentation layouts are those PixelLM's (and LISA's) ``sem_seg_dataset.py`` reads under
its ``dataset_dir``. Their classes here are the world's shapes; the parts of PACO-LVIS and PASCAL-Part are
each instance's upper and lower half.

MUSE (PixelLM's benchmark) is a list of per-image dicts: ``file_name``, ``height``, ``width``, ``ann_list``
(every instance), ``questions``, ``answers`` (per question, its target instances in answer order) and
``text_answers`` (per question, an answer with one ``{seg}`` per target). Masks are COCO polygons
(``mask_format="polygon"``), compressed RLE (``"rle"``) or alternate between the two per instance
(``"mixed"``); polygons are exact: one rectangle per horizontal run of mask pixels, which pycocotools
rasterises back to the same pixels. MUSE keeps only questions with at least two targets (``min_targets``).

The refer layout is the one of ``refer.py`` (Licheng Yu) that LISA and PixelLM read: ``refs(unc).p`` is a
pickled list of refs with ``split``, ``ann_id``, ``image_id``, ``sentences``; ``instances.json`` holds
the COCO images, annotations and categories. World splits map to refer splits (train -> train, val ->
val, test -> testA and testB alternately).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vislang.shared.data.synthetic.world import SHAPES, SyntheticWorld
from vislang.shared.data.synthetic.writers import (
    SPLIT_OFFSETS,
    _resolve_indices,
    coco_categories,
    dump_json,
    encode_rle,
    write_scene_images,
)

__all__ = [
    "mask_to_polygons",
    "write_ade20k",
    "write_cocostuff",
    "write_muse",
    "write_paco_lvis",
    "write_pascal_part",
    "write_refer",
]

MaskFormat = Literal["polygon", "rle", "mixed"]


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons that rasterise exactly to ``mask``: one rectangle ``[x0, y, x1, y, x1, y+1, x0, y+1]`` per run."""
    polygons = []
    for y in range(mask.shape[0]):
        row = np.concatenate([[0], mask[y].astype(np.int8), [0]])
        change = np.diff(row)
        for x0, x1 in zip(np.nonzero(change == 1)[0], np.nonzero(change == -1)[0], strict=True):
            polygons.append(
                [float(x0), float(y), float(x1), float(y), float(x1), float(y + 1), float(x0), float(y + 1)]
            )
    return polygons


def _segmentation(mask: np.ndarray, mask_format: MaskFormat, number: int) -> Any:
    if mask_format == "rle" or (mask_format == "mixed" and number % 2):
        return encode_rle(mask)
    if mask_format in ("polygon", "mixed"):
        return mask_to_polygons(mask)
    raise ValueError(f"mask_format must be 'polygon', 'rle' or 'mixed', got {mask_format!r}")


def write_muse(
    world: SyntheticWorld,
    out_dir: str | os.PathLike[str],
    split: str = "train",
    indices: Iterable[int] | None = None,
    mask_format: MaskFormat = "polygon",
    min_targets: int = 2,
    max_targets: int | None = None,
    text_answers: bool = True,
    json_name: str | None = None,
) -> Path:
    """The world's multi-target questions as a MUSE JSON (``muse_{split}.json``) plus the images.

    Args:
        world: the synthetic world.
        out_dir: root; images go to ``images/{split}/``.
        split: world split (``train``/``val``/``test``: disjoint scenes).
        indices: explicit scene indices instead of the split's default range.
        mask_format: ``polygon``, ``rle`` or ``mixed`` (alternating per instance).
        min_targets / max_targets: keep questions with this many targets (MUSE: >= 2; its test split is
            cut into few- and many-target files).
        text_answers: write ``text_answers``; without them a loader composes the answer from the
            instances' ``rephrased_name``/``category_name`` (the released data lacks some, PixelLM #14).
        json_name: file name of the JSON (default ``muse_{split}.json``).

    Returns:
        The JSON path. Scenes without a kept question are left out.
    """
    out_dir = Path(out_dir)
    ids = _resolve_indices(world, split, indices)
    records, kept = [], []
    for index in ids:
        questions = [
            q
            for q in world.reasoning_questions(index)
            if q.num_targets >= min_targets and (max_targets is None or q.num_targets <= max_targets)
        ]
        if questions:
            kept.append((index, questions))
    scenes = write_scene_images(world, out_dir / "images" / split, [index for index, _ in kept])
    number = 0
    for (scene, entry), (_, questions) in zip(scenes, kept, strict=True):
        segmentation = []
        for inst in scene.instances:
            segmentation.append(_segmentation(inst.mask, mask_format, number))
            number += 1
        ann_list = [
            {
                "id": scene.image_id * 100 + k,
                "category_id": inst.category_id,
                "category_name": inst.shape,
                "bbox": [float(v) for v in inst.bbox],
                "area": float(inst.area),
                "segmentation": segmentation[k],
            }
            for k, inst in enumerate(scene.instances)
        ]
        answers = []
        for q in questions:
            answers.append(
                [
                    {**ann_list[k], "rephrased_name": description}
                    for k, description in zip(q.target_indices, q.target_descriptions, strict=True)
                ]
            )
        entry = {**entry, "file_name": f"{split}/{entry['file_name']}"}  # relative to images/, like COCO's folders
        record = {**entry, "ann_list": ann_list, "questions": [q.question for q in questions], "answers": answers}
        if text_answers:
            record["text_answers"] = [q.answer for q in questions]
        records.append(record)
    return dump_json(records, out_dir / (json_name or f"muse_{split}.json"))


def write_refer(
    world: SyntheticWorld,
    out_dir: str | os.PathLike[str],
    dataset: str = "refcoco",
    split_by: str = "unc",
    counts: dict[str, int] | None = None,
) -> Path:
    """The world's referring expressions in the refer layout (``{dataset}/refs({split_by}).p``).

    Args:
        counts: scenes per world split, default ``{"train": 100, "val": 20, "test": 20}``; test scenes
            alternate between refer's ``testA`` and ``testB``.

    Returns:
        The refs pickle's path.
    """
    out_dir = Path(out_dir)
    counts = counts or {"train": 100, "val": 20, "test": 20}
    image_dir = out_dir / "images" / "mscoco" / "images" / "train2014"
    images, annotations, refs = [], [], []
    for world_split, count in counts.items():
        ids = _resolve_indices(
            world, world_split, range(SPLIT_OFFSETS[world_split], SPLIT_OFFSETS[world_split] + count)
        )
        for n, index in enumerate(ids):
            scene = world.scene(index)
            name = f"COCO_train2014_{scene.image_id:012d}.png"
            write_scene_images_as(world, image_dir, index, name)
            images.append({"id": scene.image_id, "file_name": name, "height": scene.height, "width": scene.width})
            refer_split = world_split if world_split != "test" else ("testA" if n % 2 == 0 else "testB")
            ann_ids = {}
            for k, inst in enumerate(scene.instances):
                ann_id = scene.image_id * 100 + k
                ann_ids[k] = ann_id
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": scene.image_id,
                        "category_id": inst.category_id,
                        "segmentation": mask_to_polygons(inst.mask),
                        "area": float(inst.area),
                        "bbox": [float(v) for v in inst.bbox],
                        "iscrowd": 0,
                    }
                )
            for expression in world.referring_expressions(index):
                sent_id = len(refs)
                refs.append(
                    {
                        "ref_id": len(refs),
                        "ann_id": ann_ids[expression.instance_index],
                        "image_id": scene.image_id,
                        "split": refer_split,
                        "category_id": scene.instances[expression.instance_index].category_id,
                        "file_name": name,
                        "sent_ids": [sent_id],
                        "sentences": [
                            {
                                "sent": expression.text,
                                "raw": expression.text,
                                "sent_id": sent_id,
                                "tokens": expression.text.split(),
                            }
                        ],
                    }
                )
    dump_json(
        {"images": images, "annotations": annotations, "categories": coco_categories()},
        out_dir / dataset / "instances.json",
    )
    path = out_dir / dataset / f"refs({split_by}).p"
    with open(path, "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return path


def write_scene_images_as(world: SyntheticWorld, image_dir: Path, index: int, name: str) -> None:
    """Save one scene under an explicit file name (refer's ``COCO_train2014_...`` names)."""
    (_scene, entry), *_ = write_scene_images(world, image_dir, [index])
    (image_dir / entry["file_name"]).replace(image_dir / name)


def _semantic_label(scene: Any, offset: int, background: int) -> np.ndarray:
    """Per pixel the class index (+ ``offset``) of the front-most instance, ``background`` elsewhere."""
    label = np.full(scene.image.shape[:2], background, dtype=np.uint8)
    for inst in sorted(scene.instances, key=lambda i: i.depth):  # bottom to top: visible masks, nearer last
        label[inst.mask] = SHAPES.index(inst.shape) + offset
    return label


def _scenes(world: SyntheticWorld, split: str, indices: Iterable[int] | None) -> list[Any]:
    return [world.scene(index) for index in _resolve_indices(world, split, indices)]


def _save_jpg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=95)


def _save_png(label: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path, format="PNG")


def write_ade20k(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], split: str = "train", indices: Iterable[int] | None = None
) -> Path:
    """ADE20K's training layout (label 0 = unlabelled, k + 1 = class k); returns ``out_dir/ade20k``."""
    root = Path(out_dir) / "ade20k"
    for scene in _scenes(world, split, indices):
        name = f"ADE_train_{scene.image_id:08d}"
        _save_jpg(scene.image, root / "images" / "training" / f"{name}.jpg")
        _save_png(_semantic_label(scene, 1, 0), root / "annotations" / "training" / f"{name}.png")
    dump_json(list(SHAPES), root / "ade20k_classes.json")
    return root


def write_cocostuff(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], split: str = "train", indices: Iterable[int] | None = None
) -> Path:
    """COCO-Stuff's label PNGs (class index, 255 unlabelled) beside COCO's images; returns ``out_dir/cocostuff``."""
    root = Path(out_dir)
    for scene in _scenes(world, split, indices):
        _save_jpg(scene.image, root / "coco" / "train2017" / f"{scene.image_id:012d}.jpg")
        _save_png(_semantic_label(scene, 0, 255), root / "cocostuff" / "train2017" / f"{scene.image_id:012d}.png")
    lines = ["0: unlabeled"] + [f"{k}: {name}" for k, name in enumerate(SHAPES)]
    (root / "cocostuff" / "cocostuff_classes.txt").write_text("\n".join(lines) + "\n")
    return root / "cocostuff"


def _part_dataset(scenes: list[Any], with_objects: bool, file_prefix: str) -> dict[str, Any]:
    """COCO instances whose categories are ``object:part`` (upper / lower half of each instance) and, with
    ``with_objects``, the plain objects too (PACO-LVIS has both)."""
    parts = ("upper half", "lower half")
    categories = [
        {"id": k + 1, "name": f"{shape}:{part}"}
        for k, (shape, part) in enumerate((s, p) for s in SHAPES for p in parts)
    ]
    if with_objects:
        categories += [{"id": len(categories) + k + 1, "name": shape} for k, shape in enumerate(SHAPES)]
    by_name = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for scene in scenes:
        images.append(
            {
                "id": scene.image_id,
                "file_name": f"{file_prefix}{scene.image_id:012d}.jpg",
                "height": scene.height,
                "width": scene.width,
            }
        )
        for k, inst in enumerate(scene.instances):
            rows = np.nonzero(inst.mask.any(1))[0]
            middle = (rows[0] + rows[-1] + 1) // 2
            halves = [inst.mask.copy(), inst.mask.copy()]
            halves[0][middle:], halves[1][:middle] = False, False
            named = [(f"{inst.shape}:{parts[0]}", halves[0]), (f"{inst.shape}:{parts[1]}", halves[1])]
            if with_objects:
                named.append((inst.shape, inst.mask))
            for j, (name, mask) in enumerate(named):
                if not mask.any():
                    continue
                ys, xs = np.nonzero(mask)
                annotations.append(
                    {
                        "id": scene.image_id * 1000 + k * 10 + j,
                        "image_id": scene.image_id,
                        "category_id": by_name[name],
                        "segmentation": mask_to_polygons(mask),
                        "area": float(mask.sum()),
                        "iscrowd": 0,
                        "bbox": [
                            float(xs.min()),
                            float(ys.min()),
                            float(xs.max() - xs.min() + 1),
                            float(ys.max() - ys.min() + 1),
                        ],
                    }
                )
    return {"images": images, "annotations": annotations, "categories": categories}


def write_paco_lvis(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], split: str = "train", indices: Iterable[int] | None = None
) -> Path:
    """PACO-LVIS: COCO images + ``vlpart/paco/annotations/paco_lvis_v1_train.json``; returns the JSON path."""
    root = Path(out_dir)
    scenes = _scenes(world, split, indices)
    for scene in scenes:
        _save_jpg(scene.image, root / "coco" / "train2017" / f"{scene.image_id:012d}.jpg")
    dataset = _part_dataset(scenes, with_objects=True, file_prefix="train2017/")
    return dump_json(dataset, root / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json")


def write_pascal_part(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], split: str = "train", indices: Iterable[int] | None = None
) -> Path:
    """PASCAL-Part: VOC2010 JPEGImages + ``vlpart/pascal_part/train.json``; returns the JSON path."""
    root = Path(out_dir) / "vlpart" / "pascal_part"
    scenes = _scenes(world, split, indices)
    for scene in scenes:
        _save_jpg(scene.image, root / "VOCdevkit" / "VOC2010" / "JPEGImages" / f"{scene.image_id:012d}.jpg")
    return dump_json(_part_dataset(scenes, with_objects=False, file_prefix=""), root / "train.json")
