"""The synthetic world written as ImageNet folders, CMAE JSON lists, Kinetics-400 and SSv2 layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislang.shared.data.synthetic import CLASS_NAMES, VIDEO_CLASS_NAMES, SyntheticWorld
from vislang.shared.data.synthetic.classification_writers import (
    SSV2_TEMPLATES,
    image_class_dirs,
    object_centric_image,
    video_class_dirs,
    write_cmae_json,
    write_imagenet_folder,
    write_kinetics400,
    write_ssv2,
)
from vislang.shared.data.video import VideoReader

WORLD = SyntheticWorld(seed=3, image_size=32, num_frames=8)


def test_imagenet_folder_holds_every_class_and_each_image_in_its_class(tmp_path: Path) -> None:
    root = write_imagenet_folder(WORLD, tmp_path, num_train=12, num_val=4)
    assert sorted(p.name for p in (root / "train").iterdir()) == image_class_dirs() == sorted(CLASS_NAMES)
    assert sorted(p.name for p in (root / "val").iterdir()) == image_class_dirs()
    files = sorted((root / "train").glob("*/*.png"))
    assert len(files) == 12 and len(list((root / "val").glob("*/*.png"))) == 4
    for path in files:
        index = int(path.stem.rsplit("_", 1)[1])
        scene = WORLD.scene(index)
        assert path.parent.name == scene.label_name
        assert np.array_equal(np.asarray(Image.open(path)), scene.image)  # PNG keeps the pixels exact


def test_cmae_json_entries_point_to_images_with_sorted_class_labels(tmp_path: Path) -> None:
    path = write_cmae_json(WORLD, tmp_path, num_train=10, num_val=3)
    assert path.name == "ImageNet_train.json"
    for split, count in (("train", 10), ("val", 3)):
        entries = json.loads((tmp_path / f"ImageNet_{split}.json").read_text())
        assert len(entries) == count
        for entry in entries:
            assert set(entry) == {"filename", "prefix", "label"}
            assert (tmp_path / entry["prefix"] / entry["filename"]).is_file()
            assert entry["prefix"].startswith(f"{split}/")
            assert image_class_dirs()[entry["label"]] == entry["prefix"].split("/")[1]


def test_kinetics400_lists_are_path_label_lines_of_decodable_videos(tmp_path: Path) -> None:
    root = write_kinetics400(WORLD, tmp_path, num_videos=10)
    lines = {split: (root / f"{split}.csv").read_text().splitlines() for split in ("train", "val", "test")}
    assert [len(v) for v in lines.values()] == [8, 1, 1]
    for line in lines["train"] + lines["val"]:
        path, label = line.split(" ")  # VideoMAE splits on single spaces: no spaces in paths
        video_index = int(Path(path).stem.removeprefix("video"))
        assert int(label) == WORLD.video(video_index).label
        assert Path(path).parent.name == video_class_dirs()[int(label)]
        assert len(VideoReader(root / path)) == WORLD.num_frames
    # the same call again is a no-op; another world refuses to overwrite
    assert write_kinetics400(WORLD, tmp_path, num_videos=10) == root
    with pytest.raises(FileExistsError, match="other settings"):
        write_kinetics400(SyntheticWorld(seed=4, image_size=32, num_frames=8), tmp_path, num_videos=10)


def test_ssv2_layout_maps_templates_to_the_video_class(tmp_path: Path) -> None:
    root = write_ssv2(WORLD, tmp_path, num_videos=5, video_format="mp4")
    labels = json.loads((root / "something-something-v2-labels.json").read_text())
    assert labels == {t.replace("[", "").replace("]", ""): str(k) for k, t in enumerate(SSV2_TEMPLATES)}
    assert len(labels) == len(VIDEO_CLASS_NAMES) and all(isinstance(v, str) for v in labels.values())
    train = json.loads((root / "something-something-v2-train.json").read_text())
    assert len(train) == 3
    for entry in train:
        video = WORLD.video(int(entry["id"]))
        assert int(labels[entry["template"].replace("[", "").replace("]", "")]) == video.label
        assert entry["placeholders"][0] in entry["label"]
        assert len(VideoReader(root / "20bn-something-something-v2" / f"{entry['id']}.mp4")) == WORLD.num_frames
    test = json.loads((root / "something-something-v2-test.json").read_text())
    assert [set(e) for e in test] == [{"id"}]


def test_refuses_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_ssv2(WORLD, tmp_path, num_videos=3)


def test_object_centric_images_show_one_shape_on_a_flat_background(tmp_path: Path) -> None:
    world = SyntheticWorld(seed=5, image_size=32)
    root = write_imagenet_folder(world, tmp_path, num_train=40, num_val=5, style="object_centric")
    files = sorted((root / "train").glob("*/*.png"))
    assert len(files) == 40 and len(list((root / "val").glob("*/*.png"))) == 5
    assert len({p.parent.name for p in files}) == len(CLASS_NAMES)  # every class occurs in 40 draws
    for path in files:
        item = object_centric_image(world, int(path.stem.rsplit("_", 1)[1]))
        assert path.parent.name == item.label_name
        pixels = np.asarray(Image.open(path))
        assert np.array_equal(pixels, item.image)
        # the background is one flat colour and the shape one other colour: only the outline tells classes apart
        assert len(np.unique(pixels[~item.mask], axis=0)) == 1 and len(np.unique(pixels[item.mask], axis=0)) == 1
        assert 0.08 < item.mask.mean() < 0.6  # a large object (a scene's shapes cover ~6 % of the image)
    again = object_centric_image(world, 3)
    assert np.array_equal(again.image, object_centric_image(world, 3).image)  # a pure function of (seed, index)
    with pytest.raises(ValueError, match="style must be one of"):
        write_imagenet_folder(world, tmp_path / "other", num_train=2, num_val=1, style="photos")
