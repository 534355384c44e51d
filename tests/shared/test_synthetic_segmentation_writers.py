"""The synthetic world as MUSE JSON and in the refer layout: masks survive the round trip exactly."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vislang.shared.data.synthetic import SEG_PLACEHOLDER, SyntheticWorld
from vislang.shared.data.synthetic.segmentation_writers import mask_to_polygons, write_muse, write_refer


def _decode(segmentation, h: int, w: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))).astype(bool)
    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()}).astype(bool)


def test_polygons_rasterise_to_the_same_pixels() -> None:
    world = SyntheticWorld(seed=3, image_size=48)
    for index in range(5):
        for inst in world.scene(index).instances:
            assert np.array_equal(_decode(mask_to_polygons(inst.mask), 48, 48), inst.mask)


@pytest.mark.parametrize("mask_format", ["polygon", "rle", "mixed"])
def test_write_muse(tmp_path, mask_format: str) -> None:
    world = SyntheticWorld(seed=1, image_size=40)
    path = write_muse(world, tmp_path, "val", indices=range(1_000_000, 1_000_012), mask_format=mask_format)
    assert path == tmp_path / "muse_val.json"
    records = json.loads(path.read_text())
    assert records
    kinds = set()
    for record in records:
        scene = world.scene(int(record["file_name"].split("/")[-1].split(".")[0]))
        assert (tmp_path / "images" / record["file_name"]).is_file()
        assert len(record["ann_list"]) == len(scene.instances)
        assert len(record["questions"]) == len(record["answers"]) == len(record["text_answers"])
        questions = {q.question: q for q in world.reasoning_questions(scene.index)}
        for question, targets, text in zip(record["questions"], record["answers"], record["text_answers"], strict=True):
            truth = questions[question]
            assert len(targets) >= 2 and text.count(SEG_PLACEHOLDER) == len(targets)
            for target, mask, name in zip(targets, truth.masks, truth.target_descriptions, strict=True):
                kinds.add(type(target["segmentation"]).__name__)
                assert np.array_equal(_decode(target["segmentation"], record["height"], record["width"]), mask)
                assert target["rephrased_name"] == name
    assert kinds == {"polygon": {"list"}, "rle": {"dict"}, "mixed": {"list", "dict"}}[mask_format]


def test_write_muse_target_range_and_no_text_answers(tmp_path) -> None:
    world = SyntheticWorld(seed=1, image_size=40, max_objects=6)
    path = write_muse(
        world,
        tmp_path,
        "test",
        indices=range(2_000_000, 2_000_020),
        min_targets=4,
        text_answers=False,
        json_name="muse_test_many.json",
    )
    records = json.loads(path.read_text())
    assert path.name == "muse_test_many.json" and records
    assert all(len(t) >= 4 for r in records for t in r["answers"])
    assert all("text_answers" not in r for r in records)


def test_write_refer(tmp_path) -> None:
    world = SyntheticWorld(seed=2, image_size=40)
    path = write_refer(world, tmp_path, counts={"train": 3, "val": 2, "test": 2})
    assert path == tmp_path / "refcoco" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    instances = json.loads((tmp_path / "refcoco" / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    assert {r["split"] for r in refs} == {"train", "val", "testA", "testB"}
    for ref in refs:
        image = next(i for i in instances["images"] if i["id"] == ref["image_id"])
        assert (tmp_path / "images" / "mscoco" / "images" / "train2014" / image["file_name"]).is_file()
        expression = next(
            e for e in world.referring_expressions(ref["image_id"]) if e.text == ref["sentences"][0]["sent"]
        )
        assert np.array_equal(_decode(anns[ref["ann_id"]]["segmentation"], 40, 40), expression.mask)
