"""PixelLM's data: MUSE JSON (polygons, RLE, text answers and the template fallback), refer layout, images."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vislang.pixellm.data import (
    LlavaInstructDataset,
    MuseDataset,
    PixelLMDataModule,
    ReferDataset,
    SemSegDataset,
    collate,
    preprocess_image,
)
from vislang.shared.data.robust import RobustDataset
from vislang.shared.data.synthetic import SEG_PLACEHOLDER, SyntheticWorld
from vislang.shared.data.synthetic.segmentation_writers import (
    write_ade20k,
    write_cocostuff,
    write_muse,
    write_paco_lvis,
    write_pascal_part,
    write_refer,
)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=4, image_size=48)


def test_muse_dataset_reads_polygons_and_rle(tmp_path, world) -> None:
    path = write_muse(world, tmp_path, "train", indices=range(8), mask_format="mixed")
    dataset = MuseDataset(path, tmp_path / "images", image_size=64, patch_size=8, image_layout="flat")
    assert len(dataset) == sum(len(r["questions"]) for r in json.loads(path.read_text()))
    for index in range(len(dataset)):
        sample = dataset[index]
        record = dataset.records[dataset.items[index]["record"]]
        scene = world.scene(int(record["file_name"].split("/")[-1].split(".")[0]))
        truth = next(q for q in world.reasoning_questions(scene.index) if q.question in sample["question"])
        assert sample["answer"] == truth.answer
        assert sample["masks"].shape == (truth.num_targets, 48, 48)
        assert all(np.array_equal(m.numpy(), t) for m, t in zip(sample["masks"], truth.masks, strict=True))
        assert sample["pixel_values"].shape == (3, 64, 64) and bool(sample["patch_mask"].all())
    batch = collate([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and len(batch["masks"]) == 2


def test_muse_fallback_template_skip_and_coco_url(tmp_path, caplog) -> None:
    (tmp_path / "train2014").mkdir()  # the released layout: file_name entries under train2014/
    Image.new("RGB", (30, 20), (200, 10, 10)).save(tmp_path / "train2014" / "a.jpg")
    (tmp_path / "val2017").mkdir()
    Image.new("RGB", (30, 20), (10, 200, 10)).save(tmp_path / "val2017" / "000000000042.jpg")
    square = [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]]
    rle = {"size": [20, 30], "counts": [0, 20 * 30]}  # uncompressed RLE, all foreground (column-major)
    targets = [
        {"segmentation": square, "category_name": "cat", "rephrased_name": "the left cat"},
        {"segmentation": rle, "category_name": "dog"},
    ]
    records = [
        {
            "file_name": "a.jpg",
            "height": 20,
            "width": 30,
            "questions": ["where are the pets?", "bad one"],
            "answers": [targets, targets],
            "text_answers": [None, f"only one {SEG_PLACEHOLDER}"],
        },
        {
            "coco_url": "http://images.cocodataset.org/val2017/000000000042.jpg",
            "height": 20,
            "width": 30,
            "questions": ["and here?"],
            "answers": [targets],
        },
        {
            "file_name": "a.jpg",
            "height": 20,
            "width": 30,  # no questions: one category-name question per category
            "ann_list": [
                {**targets[0], "category_id": 1},
                {**targets[1], "category_id": 2},
                {"segmentation": square, "category_name": "cat", "category_id": 1},
            ],
        },
    ]
    path = tmp_path / "muse_val.json"
    path.write_text(json.dumps(records))
    with caplog.at_level(logging.WARNING):
        dataset = MuseDataset(path, tmp_path, image_size=32, patch_size=8)
    assert dataset.skipped == 1 and "skipped 1" in caplog.text  # {seg} count != targets
    assert len(dataset) == 4
    cats, dogs = dataset[2], dataset[3]
    assert cats["question"] == "Can you segment the cat in this image?" and cats["masks"].shape[0] == 2
    assert cats["answer"] == f"the left cat {SEG_PLACEHOLDER} and cat {SEG_PLACEHOLDER}."
    assert dogs["question"] == "Can you segment the dog in this image?" and dogs["masks"].shape[0] == 1
    first = dataset[0]
    assert first["answer"] == f"the left cat {SEG_PLACEHOLDER} and dog {SEG_PLACEHOLDER}."
    assert int(first["masks"][0].sum()) == 100 and bool(first["masks"][1].all())
    assert first["question"] == "where are the pets? Please respond with segmentation mask."
    assert dataset[1]["image_path"].endswith("val2017/000000000042.jpg")
    # 30x20 -> 32x21 (longest side), padded to 32x32: patch rows 0..2 hold content
    assert first["resized_size"].tolist() == [21, 32]
    assert first["patch_mask"][:, 0].tolist() == [True, True, True, False]


def test_missing_image_is_skipped_and_counted(tmp_path, world) -> None:
    path = write_muse(world, tmp_path, "train", indices=range(6))
    dataset = MuseDataset(path, tmp_path / "images", image_size=48, patch_size=8, image_layout="flat")
    first = dataset.records[dataset.items[0]["record"]]
    (tmp_path / "images" / first["file_name"]).unlink()
    robust = RobustDataset(dataset, max_failure_fraction=0.9)
    sample = robust[0]
    assert sample["load_failures"] >= 1 and sample["image_path"] != str(tmp_path / "images" / first["file_name"])


def test_preprocess_longest_side_and_padding() -> None:
    image = np.full((40, 100, 3), 255, dtype=np.uint8)
    pixels, patch_mask, resized = preprocess_image(image, 64, 8, "sam")
    assert resized == (26, 64)
    assert pixels.shape == (3, 64, 64)
    assert torch.all(pixels[:, 26:] == 0) and torch.all(pixels[:, :26] > 0)
    assert patch_mask[:, 0].tolist() == [True, True, True, True, False, False, False, False]


def test_refer_dataset(tmp_path) -> None:
    world = SyntheticWorld(seed=5, image_size=40)
    write_refer(world, tmp_path, counts={"train": 2, "val": 2})
    dataset = ReferDataset(tmp_path, "refcoco", "unc", "val", image_size=40, patch_size=8)
    assert dataset.name == "refcoco_unc_val" and dataset.matching == "ordered"
    sample = dataset[0]
    assert sample["answer"].count(SEG_PLACEHOLDER) == 1 and sample["masks"].shape == (1, 40, 40)
    assert sample["question"].startswith("Can you segment the ")


def test_refer_training_packs_up_to_three_expressions_and_refclef_has_its_folder(tmp_path) -> None:
    world = SyntheticWorld(seed=5, image_size=40)
    write_refer(world, tmp_path, counts={"train": 3, "val": 1})
    single = ReferDataset(tmp_path, "refcoco", "unc", "train", image_size=40, patch_size=8)
    packed = ReferDataset(tmp_path, "refcoco", "unc", "train", image_size=40, patch_size=8, expressions_per_question=3)
    assert sum(len(i["segs"]) for i in packed.items) == len(single) and max(len(i["segs"]) for i in packed.items) == 3
    item = next(i for i in packed.items if len(i["segs"]) == 3)
    sample = packed[packed.items.index(item)]
    assert sample["answer"].count(SEG_PLACEHOLDER) == 3 and sample["masks"].shape[0] == 3
    assert " and " in sample["question"] and sample["answer"].endswith(f"is {SEG_PLACEHOLDER}.")
    # refclef images live in images/saiapr_tc-12 (the released refer_seg_dataset.py), not in mscoco
    (tmp_path / "refclef").mkdir()
    for name in ("refs(unc).p", "instances.json"):
        (tmp_path / "refclef" / name).write_bytes((tmp_path / "refcoco" / name).read_bytes())
    refclef = ReferDataset(tmp_path, "refclef", "unc", "val", image_size=40, patch_size=8)
    assert refclef.image_dir == tmp_path / "images" / "saiapr_tc-12"


def test_missing_dataset_names_the_path(tmp_path) -> None:
    dm = PixelLMDataModule(muse_root=str(tmp_path), image_size=64, patch_size=8, muse_image_layout="flat")
    with pytest.raises(FileNotFoundError, match=r"muse_train\.json"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match=r"refs\(umd\)\.p"):
        ReferDataset(tmp_path, "refcocog", "umd", "val", 64, 8)


def test_llava_instruct_and_the_training_mixture(tmp_path, world) -> None:
    write_muse(world, tmp_path / "muse", "train", indices=range(6))
    Image.new("RGB", (24, 16)).save(tmp_path / "000000000001.jpg")
    conversations = [
        {
            "id": "1",
            "image": "000000000001.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"},
                {"from": "gpt", "value": "A dark picture."},
            ],
        },
        {"id": "2", "image": "000000000001.jpg", "conversations": [{"from": "gpt", "value": "no question"}]},
    ]
    (tmp_path / "llava_instruct_150k.json").write_text(json.dumps(conversations))
    vqa = LlavaInstructDataset(tmp_path / "llava_instruct_150k.json", tmp_path, image_size=32, patch_size=8)
    assert len(vqa) == 1 and vqa.skipped == 1
    sample = vqa[0]
    assert sample["question"] == "What is it?" and sample["answer"] == "A dark picture."
    assert sample["masks"].shape == (0, 16, 24)

    dm = PixelLMDataModule(
        muse_root=str(tmp_path / "muse"),
        vqa_json=str(tmp_path / "llava_instruct_150k.json"),
        vqa_image_dir=str(tmp_path),
        sample_rates={"muse": 4.0, "vqa": 2.0},
        muse_val=[],
        image_size=48,
        patch_size=8,
        num_workers=0,
    )
    dm.setup("fit")
    muse_items = len(dm.train_set) - 1
    # per-source rates split evenly over each source's items: the sources' total weights are 4 : 2
    assert sum(dm.weights[:muse_items]) == pytest.approx(4.0) and dm.weights[-1] == pytest.approx(2.0)


@pytest.mark.parametrize("source", ["ade20k", "cocostuff", "pascal_part", "paco_lvis"])
def test_semantic_segmentation_sources_in_their_layouts(tmp_path, source) -> None:
    """The released mix's sem_seg sources, written by the synthetic writers in the real layouts and read back:
    up to 3 classes (or part instances) per question, one mask each, matching the written labels."""
    world = SyntheticWorld(seed=3, image_size=40)
    writer = {
        "ade20k": write_ade20k,
        "cocostuff": write_cocostuff,
        "pascal_part": write_pascal_part,
        "paco_lvis": write_paco_lvis,
    }[source]
    writer(world, tmp_path, "train", indices=range(4))
    dataset = SemSegDataset(tmp_path, source, image_size=40, patch_size=8, seed=0)
    assert len(dataset) == 4
    sample = dataset[0]
    k = sample["masks"].shape[0]
    assert 1 <= k <= 3 and sample["answer"].count(SEG_PLACEHOLDER) == k
    assert sample["question"].startswith("Can you segment the ") and sample["masks"].shape[1:] == (40, 40)
    assert all(bool(m.any()) for m in sample["masks"])
    scene = world.scene(0)
    union = np.zeros((40, 40), dtype=bool)
    for inst in scene.instances:
        union |= inst.mask
    assert not bool((sample["masks"].any(0).numpy() & ~union).any())  # every mask lies on the scene's shapes
    if source in ("ade20k", "cocostuff"):  # whole classes: a mask is all pixels of its shape
        for m in sample["masks"].numpy():
            shapes = {inst.shape for inst in scene.instances if (inst.mask & m).any()}
            assert len(shapes) == 1
            expected = np.zeros_like(m)
            for inst in scene.instances:
                if inst.shape in shapes:
                    expected |= inst.mask
            assert np.array_equal(m, expected)
    else:  # parts are named "object part"; PACO-LVIS also has whole objects
        assert "half" in sample["question"] or source == "paco_lvis"


def test_sem_seg_joins_the_training_mix_with_the_released_rates(tmp_path) -> None:
    world = SyntheticWorld(seed=3, image_size=40)
    write_ade20k(world, tmp_path, "train", indices=range(3))
    write_muse(world, tmp_path / "muse", "train", indices=range(6))
    dm = PixelLMDataModule(
        muse_root=str(tmp_path / "muse"),
        muse_image_layout="flat",
        sem_seg_root=str(tmp_path),
        sem_seg_sources=["ade20k"],
        muse_val=[],
        image_size=40,
        patch_size=8,
        num_workers=0,
    )
    assert dm.sample_rates == {"sem_seg": 2.0, "refer": 9.0, "vqa": 2.0, "muse": 4.0}
    dm.setup("fit")
    sem_weight = sum(dm.weights[-3:])  # the ade20k items come after MUSE's
    muse_weight = sum(dm.weights[:-3])
    assert sem_weight == pytest.approx(2.0) and muse_weight == pytest.approx(4.0)
