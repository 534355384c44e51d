"""The synthetic world as reasoning / referring segmentation datasets: MUSE JSON and the refCOCO refer layout.

==================  ==========================================================================================
writer              layout under ``out_dir``
==================  ==========================================================================================
``write_muse``      ``images/{split}/{image_id:012d}.png``; ``{json_name}`` (default ``muse_{split}.json``);
                    ``file_name`` is ``{split}/{image_id:012d}.png``, relative to ``images/``
``write_refer``     ``images/mscoco/images/train2014/COCO_train2014_{image_id:012d}.png``;
                    ``{dataset}/instances.json`` (COCO instances, polygons); ``{dataset}/refs({split_by}).p``
==================  ==========================================================================================

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

from vislang.shared.data.synthetic.world import SyntheticWorld
from vislang.shared.data.synthetic.writers import (
    SPLIT_OFFSETS,
    _resolve_indices,
    coco_categories,
    dump_json,
    encode_rle,
    write_scene_images,
)

__all__ = ["mask_to_polygons", "write_muse", "write_refer"]

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
            q for q in world.reasoning_questions(index)
            if q.num_targets >= min_targets and (max_targets is None or q.num_targets <= max_targets)
        ]  # fmt: skip
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
            {"id": scene.image_id * 100 + k, "category_id": inst.category_id, "category_name": inst.shape,
             "bbox": [float(v) for v in inst.bbox], "area": float(inst.area), "segmentation": segmentation[k]}
            for k, inst in enumerate(scene.instances)
        ]  # fmt: skip
        answers = []
        for q in questions:
            answers.append([{**ann_list[k], "rephrased_name": description}
                            for k, description in zip(q.target_indices, q.target_descriptions, strict=True)])  # fmt: skip
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
                annotations.append({"id": ann_id, "image_id": scene.image_id, "category_id": inst.category_id,
                                    "segmentation": mask_to_polygons(inst.mask), "area": float(inst.area),
                                    "bbox": [float(v) for v in inst.bbox], "iscrowd": 0})  # fmt: skip
            for expression in world.referring_expressions(index):
                sent_id = len(refs)
                refs.append({
                    "ref_id": len(refs), "ann_id": ann_ids[expression.instance_index], "image_id": scene.image_id,
                    "split": refer_split, "category_id": scene.instances[expression.instance_index].category_id,
                    "file_name": name, "sent_ids": [sent_id],
                    "sentences": [{"sent": expression.text, "raw": expression.text, "sent_id": sent_id,
                                   "tokens": expression.text.split()}],
                })  # fmt: skip
    dump_json({"images": images, "annotations": annotations, "categories": coco_categories()},
              out_dir / dataset / "instances.json")  # fmt: skip
    path = out_dir / dataset / f"refs({split_by}).p"
    with open(path, "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return path


def write_scene_images_as(world: SyntheticWorld, image_dir: Path, index: int, name: str) -> None:
    """Save one scene under an explicit file name (refer's ``COCO_train2014_...`` names)."""
    (_scene, entry), *_ = write_scene_images(world, image_dir, [index])
    (image_dir / entry["file_name"]).replace(image_dir / name)
