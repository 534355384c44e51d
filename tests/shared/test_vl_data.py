"""Image-text readers on files the synthetic writers produce in the real layouts, and their one-line errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.synthetic.vl_writers import (
    write_karpathy,
    write_nlvr2,
    write_snli_ve,
    write_vg_regions,
    write_vqa_v2,
)
from vislang.shared.data.synthetic.writers import split_indices
from vislang.shared.data.vl import (
    SNLI_VE_LABELS,
    read_karpathy,
    read_nlvr2,
    read_snli_ve,
    read_vg_regions,
    read_vqa_v2,
    vqa_v2_paths,
)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=3, image_size=32, num_images=12)


def test_vqa_v2_round_trip(world: SyntheticWorld, tmp_path: Path) -> None:
    write_vqa_v2(world, tmp_path, "train")
    questions, annotations, images = vqa_v2_paths(tmp_path, "train2014")
    examples = read_vqa_v2(questions, annotations, images)
    expected = [q for i in split_indices("train", 12) for q in world.vqa(i)]
    assert [e.question_id for e in examples] == [q.question_id for q in expected]
    assert [e.answers for e in examples] == [q.answers for q in expected]
    assert [e.multiple_choice_answer for e in examples] == [q.multiple_choice_answer for q in expected]
    assert examples[0].image_path.name == f"COCO_train2014_{expected[0].image_id:012d}.jpg"
    assert all(e.image_path.is_file() for e in examples)
    with Image.open(examples[0].image_path) as image:
        assert image.size == (32, 32)


def test_vqa_v2_test_split_has_no_annotations(world: SyntheticWorld, tmp_path: Path) -> None:
    write_vqa_v2(world, tmp_path, "test", indices=split_indices("test", 3))
    questions, annotations, images = vqa_v2_paths(tmp_path, "test2015")
    assert annotations is None
    examples = read_vqa_v2(questions, None, images)
    assert examples and all(e.answers == () and e.answer_type is None for e in examples)
    assert all(e.image_id >= 2_000_000 for e in examples)


def test_vqa_v2_question_without_annotation_is_named(world: SyntheticWorld, tmp_path: Path) -> None:
    write_vqa_v2(world, tmp_path, "val", indices=split_indices("val", 2))
    questions, annotations, images = vqa_v2_paths(tmp_path, "val2014")
    data = json.loads(annotations.read_text())
    dropped = data["annotations"].pop(0)["question_id"]
    annotations.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"no annotation for question_id {dropped}"):
        read_vqa_v2(questions, annotations, images)


def test_missing_file_names_the_expected_format(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.json: no such file \(expected VQA v2 questions"):
        read_vqa_v2(tmp_path / "nothing.json", None, tmp_path)


@pytest.mark.parametrize("dataset", ["coco", "flickr30k"])
def test_karpathy_round_trip(world: SyntheticWorld, tmp_path: Path, dataset: str) -> None:
    path = write_karpathy(world, tmp_path, dataset, num_train=4, num_val=2, num_test=3)
    root = tmp_path if dataset == "coco" else tmp_path / "flickr30k-images"
    train = read_karpathy(path, root, ["train", "restval"])
    test = read_karpathy(path, root, ["test"])
    assert len(train) == 4 and len(test) == 3
    assert [c.captions for c in train] == [tuple(world.captions(i)) for i in split_indices("train", 4)]
    assert all(c.image_path.is_file() for c in train + test)
    assert {c.image_id for c in train}.isdisjoint({c.image_id for c in test})
    with pytest.raises(ValueError, match="unknown Karpathy split"):
        read_karpathy(path, root, ["testing"])


def test_karpathy_missing_key_names_entry_and_key(tmp_path: Path) -> None:
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [{"split": "train", "filename": "a.jpg", "imgid": 0}]}))
    with pytest.raises(ValueError, match=r"images\[0\]: missing key 'sentences'"):
        read_karpathy(path, tmp_path, ["train"])


def test_vg_regions_round_trip(world: SyntheticWorld, tmp_path: Path) -> None:
    path = write_vg_regions(world, tmp_path, indices=range(5))
    records = read_vg_regions(path, tmp_path / "VG_100K", max_per_image=2)
    expected = {i: tuple(r.text for r in world.referring_expressions(i))[:2] for i in range(5)}
    assert {r.image_id: r.captions for r in records} == {i: p for i, p in expected.items() if p}
    assert all(r.image_path.is_file() for r in records)


def test_nlvr2_round_trip_and_labels_are_true(world: SyntheticWorld, tmp_path: Path) -> None:
    path = write_nlvr2(world, tmp_path, "train", num_examples=41)
    examples = read_nlvr2(path, tmp_path / "images" / "train")
    assert len(examples) == 41
    assert all(e.left_image.is_file() and e.right_image.is_file() for e in examples)
    counts = Counter(e.label for e in examples)
    assert min(counts.values()) >= 10, counts  # the second pair is re-drawn for the opposite truth value
    # every sentence of a set is shared by its two pairs: consistency is defined
    by_sentence_group = Counter(e.identifier.split("-")[1] for e in examples)
    assert max(by_sentence_group.values()) == 2
    # spot-check the truth of counting statements against the images' sources
    left_ids = {
        e.identifier: int(json.loads(line)["left_url"].split("//")[1])
        for e, line in zip(examples, path.read_text().splitlines(), strict=True)
    }
    for e in examples:
        if e.sentence.startswith("the left image contains"):
            color, shape = e.sentence.split()[-2:]
            scene = world.scene(left_ids[e.identifier])
            assert e.label == any(i.color == color and i.shape == shape for i in scene.instances)


def test_nlvr2_bad_label_is_named(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"identifier": "dev-1-0-0", "sentence": "x", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match=r"dev\.json:1: label must be 'True' or 'False'"):
        read_nlvr2(path, tmp_path)


def test_snli_ve_round_trip(world: SyntheticWorld, tmp_path: Path) -> None:
    path = write_snli_ve(world, tmp_path, "dev", num_images=6)
    examples = read_snli_ve(path, tmp_path / "flickr30k_images")
    assert len(examples) == 18
    assert Counter(e.label for e in examples) == {label: 6 for label in SNLI_VE_LABELS}
    assert all(e.image_path.is_file() for e in examples)
    assert len({e.pair_id for e in examples}) == 18
    # the premise caption is never part of the example
    assert all(not hasattr(e, "premise") for e in examples)


def test_snli_ve_unknown_label_and_broken_line_are_named(tmp_path: Path) -> None:
    path = tmp_path / "snli_ve_test.jsonl"
    path.write_text(json.dumps({"Flikr30kID": "1.jpg", "sentence2": "x", "gold_label": "-"}) + "\n")
    with pytest.raises(ValueError, match=r"snli_ve_test\.jsonl:1: gold_label must be one of"):
        read_snli_ve(path, tmp_path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"snli_ve_test\.jsonl:1: not valid JSON"):
        read_snli_ve(path, tmp_path)
