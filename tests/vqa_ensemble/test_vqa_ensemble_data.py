"""VQA v2 + VG QA over feature stores: batches, soft targets, splits, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR
from vislang.vqa_ensemble.data import VQADataModule, image_files, read_vg_qa


def _dm(world, **kw) -> VQADataModule:
    args = dict(
        root=str(world["root"]),
        features=world["features"],
        tokenizer=str(SYNTHETIC_TOKENIZER_DIR),
        vocab_subtypes=["train2014"],
        min_answer_count=2,
        batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    return VQADataModule(**{**args, **kw})


def test_batches_carry_every_feature_set_and_soft_targets(vqa_world) -> None:
    dm = _dm(vqa_world, heldout_fraction=0.5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["visual"]) == {"region", "grid"}
    region = batch["visual"]["region"]
    assert region["features"].shape[0] == 4 and region["features"].shape[-1] == 12
    assert region["boxes"].shape[:2] == region["mask"].shape and region["mask"].any(1).all()
    assert (region["features"][~region["mask"]] == 0).all()  # padding is zeros and masked
    assert batch["targets"].shape == (4, len(dm.answers))
    # soft scores: 1.0 for an answer given by >= 4 annotators, 0.3 / 0.6 / 0.9 for 1 / 2 / 3
    allowed = torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0])
    assert torch.isclose(batch["targets"].unsqueeze(-1), allowed).any(-1).all()
    # an answer given by >= 4 of the 10 annotators scores 1.0 whenever it is in the vocabulary (the batch is a
    # random draw: which questions it holds depends on the RNG state, so the expectation is computed per question)
    for answers, target in zip(batch["answers"], batch["targets"], strict=True):
        top = max(set(answers), key=answers.count)
        assert (target.max() == 1.0) == (answers.count(top) >= 4 and top in dm.answer_to_label)
    # the held-out half of val2014 is disjoint (by image) from the half that fits ensemble weights
    val_images = {i.image_id for i in dm.splits["val"].items}
    test_images = {i.image_id for i in dm.splits["test"].items}
    assert val_images and test_images and not val_images & test_images


def test_test2015_split_has_no_answers(vqa_world) -> None:
    dm = _dm(vqa_world)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["answers"][0] == () and batch["targets"].sum() == 0


def test_missing_dataset_and_missing_features_fail_with_one_line(vqa_world, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"v2_OpenEnded_mscoco_train2014_questions\.json"):
        _dm(vqa_world, root=str(tmp_path)).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"store\.json: no feature store here"):
        _dm(vqa_world, features={"region": [str(tmp_path)]}).setup("fit")
    only_train = {"region": vqa_world["features"]["region"][:1]}
    with pytest.raises(KeyError, match="no stored features for image 1000000"):
        _dm(vqa_world, features=only_train).setup("validate")


def test_visual_genome_qa_reader(tmp_path: Path) -> None:
    path = tmp_path / "question_answers.json"
    qas = [
        {"qa_id": 7, "image_id": 1, "question": "What color is the car?", "answer": "A red car."},
        {"qa_id": 8, "image_id": 1, "question": "How many dogs?", "answer": "Two"},
    ]
    path.write_text(json.dumps([{"id": 1, "qas": qas}, {"id": 2, "qas": []}]))
    items = read_vg_qa(path)
    assert [i.question_id for i in items] == [7, 8] and items[0].source == "vg"
    assert items[0].answers == ("red car",) * 10 and items[1].answers == ("2",) * 10  # vocabulary normalisation
    path.write_text(json.dumps([{"id": 1, "qas": [{"qa_id": 7, "image_id": 1, "question": "q"}]}]))
    with pytest.raises(ValueError, match=r"\[0\]\['qas'\]\[0\]: missing key 'answer'"):
        read_vg_qa(path)


def test_image_files_take_the_id_from_the_name(tmp_path: Path) -> None:
    for name in ("COCO_val2014_000000262148.jpg", "2345.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [i for i, _ in image_files(tmp_path)] == [2345, 262148]


def test_the_data_module_is_what_the_modules_read_and_another_is_refused(vqa_world) -> None:
    from types import SimpleNamespace

    from vislang.vqa_ensemble.data import COCODetectionDataModule, VQAData
    from vislang.vqa_ensemble.module import vqa_data

    dm = _dm(vqa_world)
    assert isinstance(dm, VQAData) and vqa_data(SimpleNamespace(datamodule=dm)) is dm
    assert vqa_data(None) is None and vqa_data(SimpleNamespace(datamodule=None)) is None
    detection = COCODetectionDataModule(train_json="instances.json", image_dir="images")
    with pytest.raises(TypeError, match="not a VQA data module"):
        vqa_data(SimpleNamespace(datamodule=detection))
