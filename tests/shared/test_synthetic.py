"""vislang.shared.data.synthetic: determinism, mask/pixel/box agreement, answers checked independently of
the generator's bookkeeping, video motion from mask centroids, COCO writers through pycocotools, preview.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from vislang.shared.data.synthetic import (
    CAPTIONS_PER_IMAGE,
    COLORS,
    DIRECTIONS,
    SEG_PLACEHOLDER,
    SHAPES,
    VIDEO_CLASS_NAMES,
    SyntheticWorld,
    vocabulary,
)
from vislang.shared.data.synthetic.__main__ import main as synthetic_cli
from vislang.shared.data.synthetic.preview import sheet_size
from vislang.shared.data.synthetic.texts import PLURALS
from vislang.shared.data.synthetic.writers import split_indices, write_coco_captions, write_coco_instances

N_SCENES = 60


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=0, image_size=64)


@pytest.fixture(scope="module")
def samples(world: SyntheticWorld) -> list:
    return [world.sample(i) for i in range(N_SCENES)]


def _digest(world: SyntheticWorld, index: int) -> str:
    """Hash of every byte and text of one scene and one video."""
    h = hashlib.sha256()
    s = world.sample(index)
    h.update(s.scene.image.tobytes())
    for inst in s.scene.instances:
        h.update(inst.mask.tobytes())
    texts = [*s.captions, *(r.text for r in s.referring), *(q.answer for q in s.reasoning)]
    texts += [f"{q.question}|{q.answers}" for q in s.vqa]
    v = world.video_sample(index)
    h.update(v.video.frames.tobytes())
    texts += [*v.captions, *(f"{q.question}|{q.answers}" for q in v.qa)]
    h.update("\n".join(texts).encode())
    return h.hexdigest()


def _nearest_color(pixels: np.ndarray) -> str:
    """Colour name nearest to the mean of some RGB pixels -- independent of the instance's label."""
    mean = pixels.reshape(-1, 3).astype(np.float64).mean(axis=0)
    return min(COLORS, key=lambda c: float(np.sum((mean - np.asarray(COLORS[c])) ** 2)))


# ---- determinism -------------------------------------------------------------------------------------


def test_same_seed_same_bytes_regardless_of_call_order_and_process() -> None:
    a, b = SyntheticWorld(seed=3), SyntheticWorld(seed=3)
    b.vqa(7), b.video_qa(2), b.captions(5)  # consume other streams first: must not shift anything
    assert _digest(a, 5) == _digest(b, 5)
    assert a.captions(5) == a.sample(5).captions
    assert [q.answers for q in a.vqa(5)] == [q.answers for q in b.sample(5).vqa]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_synthetic import _digest; from vislang.shared.data.synthetic import SyntheticWorld;"
        "print(_digest(SyntheticWorld(seed=3), 5))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == _digest(a, 5)


def test_different_seed_or_index_differs() -> None:
    a, b = SyntheticWorld(seed=0), SyntheticWorld(seed=1)
    assert not np.array_equal(a.scene(0).image, b.scene(0).image)
    assert not np.array_equal(a.video(0).frames, b.video(0).frames)
    assert not np.array_equal(a.scene(0).image, a.scene(1).image)
    assert [a.captions(i)[0] for i in range(10)] != [b.captions(i)[0] for i in range(10)]


# ---- scenes: masks, boxes, pixels, occlusion ---------------------------------------------------------


def test_masks_match_boxes_pixels_and_occlusion(samples: list) -> None:
    overlapping = 0
    for s in samples:
        scene = s.scene
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.instances) <= 4
        covered = np.zeros((64, 64), dtype=np.int64)
        for inst in scene.instances:
            m = inst.mask
            assert m.dtype == bool and m.shape == (64, 64) and m.sum() == inst.area > 10
            ys, xs = np.nonzero(m)
            assert inst.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            # every visible pixel carries the instance's own colour (a later shape would have overwritten it)
            assert np.all(scene.image[m] == np.asarray(inst.rgb))
            assert _nearest_color(scene.image[m]) == inst.color
            assert inst.shape in SHAPES and inst.size in ("small", "large")
            covered += m
        assert covered.max() <= 1, "visible masks must be disjoint"
        # occlusion rule: visible = own full shape minus the full shapes painted later, >= 70% of it left
        for k, inst in enumerate(scene.instances):
            above = np.zeros_like(inst.mask)
            for later in scene.instances[k + 1 :]:
                above |= later.amodal_mask
            assert np.array_equal(inst.mask, inst.amodal_mask & ~above)
            assert inst.area >= 0.7 * inst.amodal_mask.sum()
            overlapping += int((inst.amodal_mask & above).any())
        largest = max(scene.instances, key=lambda i: (i.area, -i.depth))
        assert scene.label_name == largest.shape
    assert overlapping > 0, "the sample should include occluded shapes"


def test_texts_are_consistent(samples: list) -> None:
    vocab = set(vocabulary())
    canonical = []
    for s in samples:
        scene = s.scene
        assert len(s.captions) == CAPTIONS_PER_IMAGE and len(set(s.captions)) == CAPTIONS_PER_IMAGE
        canonical.append(s.captions[0])
        for inst in scene.instances:  # every shape and colour is mentioned in the canonical caption
            assert inst.color in s.captions[0] and inst.shape in s.captions[0]
        assert scene.background in s.captions[0]
        refs = [r.text for r in s.referring]
        assert len(refs) == len(scene.instances) and len(set(refs)) == len(refs), refs
        for r in s.referring:
            assert r.mask is scene.instances[r.instance_index].mask
        for q in s.reasoning:
            assert q.answer.count(SEG_PLACEHOLDER) == q.num_targets == len(q.masks) >= 1
            assert [q.answer.index(d) for d in q.target_descriptions] == sorted(
                q.answer.index(d) for d in q.target_descriptions
            )
        words = " ".join(
            [*s.captions, *refs, *(q.question + " " + q.answer for q in s.reasoning), *(q.question for q in s.vqa)]
        )
        assert set(re.findall(r"[a-z0-9]+", words.lower())) <= vocab
    assert sum(len(s.reasoning) > 0 and s.reasoning[0].num_targets >= 2 for s in samples) > N_SCENES // 3
    assert len(set(canonical)) >= 0.9 * len(canonical), "retrieval needs distinct captions for distinct scenes"


# ---- VQA answers, checked against the scene independently -------------------------------------------


def test_vqa_answers_are_correct(samples: list) -> None:
    from vislang.shared.metrics.vqa import vqa_accuracy  # imports torch: keep it out of module import

    shape_of_plural = {p: s for s, p in PLURALS.items()}
    checked = Counter()
    agreement = []
    accuracy_truth, accuracy_wrong = [], []
    for s in samples:
        insts = s.scene.instances
        observed = [(_nearest_color(s.scene.image[i.mask]), i.shape) for i in insts]
        for q in s.vqa:
            assert len(q.answers) == len(q.answer_confidences) == 10
            assert q.answer_type in ("yes/no", "number", "other") and q.question.startswith(q.question_type)
            assert q.multiple_choice_answer == Counter(q.answers).most_common(1)[0][0] == q.answer
            agreement.append(sum(a == q.answer for a in q.answers) / 10)
            accuracy_truth.append(vqa_accuracy(q.answer, list(q.answers)))
            accuracy_wrong.append(vqa_accuracy("purple" if q.answer != "purple" else "red", list(q.answers)))
            if m := re.fullmatch(r"how many (?:(\w+) )?(\w+) are there\?", q.question):
                color, noun = m.groups()
                shape = shape_of_plural.get(noun)
                expected = sum((color is None or c == color) and (shape is None or sh == shape) for c, sh in observed)
                assert q.answer == str(expected), q.question
                checked["count"] += 1
            elif q.question.startswith("what color is the"):
                (k,) = q.target_indices
                assert q.answer == observed[k][0]
                checked["color"] += 1
            elif m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q.question):
                assert q.answer == ("yes" if tuple(m.groups()) in observed else "no")
                checked["exists"] += 1
            elif q.question == "what pattern is on the background?":
                assert q.answer == s.scene.background
    assert checked["count"] >= 10 and checked["color"] >= 30 and checked["exists"] >= 5, checked
    assert 0.8 < float(np.mean(agreement)) < 1.0, "answers mostly agree, with some annotator noise"
    assert np.mean(accuracy_truth) > 0.95 and np.mean(accuracy_wrong) < 0.1
    yes = sum(q.answer == "yes" for s in samples for q in s.vqa if q.answer_type == "yes/no")
    no = sum(q.answer == "no" for s in samples for q in s.vqa if q.answer_type == "yes/no")
    assert 0.3 < yes / (yes + no) < 0.7


# ---- videos ------------------------------------------------------------------------------------------


def test_video_motion_matches_mask_centroids(world: SyntheticWorld) -> None:
    unit = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    directions = Counter()
    for index in range(12):
        vs = world.video_sample(index)
        video = vs.video
        assert video.frames.shape == (16, 64, 64, 3) and video.frames.dtype == np.uint8
        for inst in video.instances:
            assert inst.masks.shape == (16, 64, 64) and inst.masks.any(axis=(1, 2)).all()
            assert np.all(video.frames[inst.masks] == np.asarray(inst.rgb))
            cy, cx = zip(*[np.argwhere(m).mean(axis=0) for m in inst.masks], strict=True)
            dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
            ux, uy = unit[inst.direction]
            assert dx * ux + dy * uy > 8, (inst.direction, dx, dy)  # moved > 8 px the right way
            assert abs(dx * uy) + abs(dy * ux) < 3  # and hardly at all across
            directions[inst.direction] += 1
        main = video.instances[video.main]
        assert video.label_name == VIDEO_CLASS_NAMES[DIRECTIONS.index(main.direction)]
        for q in vs.qa:
            if q.question == "how many shapes are there?":
                assert q.answer == str(len(video.instances))
            if re.fullmatch(r"which direction does the (.+) move\?", q.question):
                assert q.answer == video.instances[q.target_indices[0]].direction
        assert any(f"{main.color} {main.shape} moves {main.direction}" in c for c in vs.captions[:1])
    assert len(directions) == 4


# ---- writers -----------------------------------------------------------------------------------------


def test_coco_instances_round_trip(world: SyntheticWorld, tmp_path) -> None:
    indices = list(split_indices("val", 6))
    path = write_coco_instances(world, tmp_path, split="val", indices=indices)
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == indices
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
    for index in indices:
        scene = world.scene(index)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[index]))
        assert len(anns) == len(scene.instances)
        info = coco.loadImgs([index])[0]
        on_disk = np.asarray(Image.open(tmp_path / "images" / "val" / info["file_name"]).convert("RGB"))
        assert np.array_equal(on_disk, scene.image)
        for ann, inst in zip(sorted(anns, key=lambda a: a["depth"]), scene.instances, strict=True):
            assert np.array_equal(coco.annToMask(ann).astype(bool), inst.mask)
            assert ann["bbox"] == list(inst.bbox) and ann["area"] == inst.area and ann["iscrowd"] == 0
            assert coco.loadCats([ann["category_id"]])[0]["name"] == inst.shape
    json.loads(path.read_text())  # plain JSON (RLE counts are str)


def test_coco_captions_round_trip(world: SyntheticWorld, tmp_path) -> None:
    path = write_coco_captions(world, tmp_path, split="train", indices=range(4))
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [0, 1, 2, 3]
    for i in range(4):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[i]))
        assert [a["caption"] for a in anns] == world.captions(i)
        assert (tmp_path / "images" / "train" / coco.loadImgs([i])[0]["file_name"]).is_file()
    assert len(coco.getAnnIds()) == 4 * CAPTIONS_PER_IMAGE


# ---- preview, corpus, arguments ----------------------------------------------------------------------


def test_preview_cli_renders_png(tmp_path) -> None:
    out = tmp_path / "sheet.png"
    assert synthetic_cli(["preview", "--out", str(out), "--seed", "1", "--n", "5"]) == 0
    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.size == sheet_size(5)
        pixels = np.asarray(sheet.convert("RGB"))
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn, not blank


def test_corpus_covers_every_text_and_ends_with_vocabulary(world: SyntheticWorld) -> None:
    lines = list(world.corpus(num_images=5, num_videos=3))
    assert lines[-1].split() == vocabulary()
    assert world.captions(0)[0] in lines and world.video_captions(2)[0] in lines
    assert {"circle", "crosses", "warm", "left", "moves", "yes", "3", "seg"} <= set(vocabulary())


@pytest.mark.parametrize(
    "kwargs",
    [{"seed": -1}, {"image_size": 8}, {"min_objects": 3, "max_objects": 2}, {"num_frames": 1}, {"answer_noise": 0.6}],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticWorld(**kwargs)


def test_bad_indices_and_splits_raise(world: SyntheticWorld, tmp_path) -> None:
    with pytest.raises(ValueError):
        world.scene(-1)
    with pytest.raises(IndexError):
        world[len(world)]
    with pytest.raises(ValueError):
        split_indices("holdout", 3)
    with pytest.raises(ValueError):
        write_coco_captions(world, tmp_path, indices=[1, 1])
