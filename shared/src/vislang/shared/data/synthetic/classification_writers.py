"""Write the synthetic world in classification datasets' on-disk formats (images and videos).

Image classes are ``CLASS_NAMES`` (the shape of a scene's largest instance); video classes are
``VIDEO_CLASS_NAMES`` (the direction the main shape moves). Layouts, all under ``out_dir``:

* ``write_imagenet_folder`` -- torchvision ``ImageFolder`` / MAE::

      train/<class>/<class>_<index>.png      one directory per class (every class, even if empty)
      val/<class>/<class>_<index>.png        class index = position in the sorted directory names

* ``write_cmae_json`` -- the folder layout plus CMAE's lists ``ImageNet_{train,val}.json``::

      [{"filename": "circle_00000012.png", "prefix": "train/circle", "label": 0}, ...]

* ``write_kinetics400`` -- VideoMAE's Kinetics lists: ``{train,val,test}.csv`` with ``path label`` lines
  (space separated, no header) and ``videos/<split>/<class_with_underscores>/<video_id>.mp4``; paths are
  written relative to ``out_dir`` (real lists hold absolute paths; both are read).
* ``write_ssv2`` -- Something-Something v2: ``something-something-v2-labels.json`` (template -> index
  string), ``something-something-v2-{train,validation}.json`` (``id``, ``label``, ``template``,
  ``placeholders``), ``something-something-v2-test.json`` (ids only) and ``20bn-something-something-v2/<id>.webm``.

Splits are the world's disjoint index ranges (``writers.split_indices``). Video writers skip writing when
``out_dir`` already holds the same data and refuse to write into other non-empty directories.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from vislang.shared.data.synthetic.world import CLASS_NAMES, VIDEO_CLASS_NAMES, SyntheticWorld
from vislang.shared.data.synthetic.writers import (
    IMAGE_FORMATS,
    _claim_directory,
    _publish,
    _staging,
    _video_splits,
    dump_json,
    split_indices,
)
from vislang.shared.data.video import write_video

__all__ = [
    "SSV2_TEMPLATES",
    "image_class_dirs",
    "video_class_dirs",
    "write_cmae_json",
    "write_imagenet_folder",
    "write_kinetics400",
    "write_ssv2",
]

SSV2_TEMPLATES: tuple[str, ...] = tuple(
    f"Moving [something] {name.removeprefix('moving ')}" for name in VIDEO_CLASS_NAMES
)
"""SSv2-style templates of the world's video classes, in ``VIDEO_CLASS_NAMES`` order."""


def image_class_dirs() -> list[str]:
    """Class directory names of the image layouts, sorted (their position is the class index)."""
    return sorted(CLASS_NAMES)


def video_class_dirs() -> list[str]:
    """Kinetics-style class directory names (spaces replaced: VideoMAE's list parser splits on spaces)."""
    return [name.replace(" ", "_") for name in VIDEO_CLASS_NAMES]


def _split_sizes(world: SyntheticWorld, num_train: int | None, num_val: int | None) -> dict[str, range]:
    train = world.num_images if num_train is None else num_train
    val = max(train // 10, 1) if num_val is None else num_val
    return {"train": split_indices("train", train), "val": split_indices("val", val)}


def write_imagenet_folder(
    world: SyntheticWorld,
    out_dir: str | os.PathLike[str],
    num_train: int | None = None,
    num_val: int | None = None,
    image_format: str = "png",
) -> Path:
    """Scenes as an ImageNet-style class-folder tree (``train/`` and ``val/``); returns ``out_dir``.

    Args:
        world: the synthetic world (its ``image_size`` is the image side).
        out_dir: root of the tree.
        num_train / num_val: images per split (default ``world.num_images`` and a tenth of it).
        image_format: ``png`` (exact pixels) or ``jpg`` (like ImageNet's JPEGs).
    """
    return _write_folder(world, Path(out_dir), _split_sizes(world, num_train, num_val), image_format)[0]


def _write_folder(
    world: SyntheticWorld, out: Path, splits: dict[str, range], image_format: str
) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    classes = image_class_dirs()
    records: dict[str, list[dict[str, Any]]] = {}
    for split, indices in splits.items():
        for name in classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        records[split] = []
        for index in tqdm(indices, desc=f"synthetic ImageNet {split} -> {out}", unit="image", disable=None):
            scene = world.scene(index)
            filename = f"{scene.label_name}_{index:08d}.{image_format}"
            Image.fromarray(scene.image).save(
                out / split / scene.label_name / filename, format=IMAGE_FORMATS[image_format]
            )
            records[split].append(
                {
                    "filename": filename,
                    "prefix": f"{split}/{scene.label_name}",
                    "label": classes.index(scene.label_name),
                }
            )
    return out, records


def write_cmae_json(
    world: SyntheticWorld,
    out_dir: str | os.PathLike[str],
    num_train: int | None = None,
    num_val: int | None = None,
    image_format: str = "png",
) -> Path:
    """The folder tree plus CMAE's ``ImageNet_{train,val}.json`` lists (path = ``out_dir/prefix/filename``).

    Returns the path of ``ImageNet_train.json``.
    """
    out, records = _write_folder(world, Path(out_dir), _split_sizes(world, num_train, num_val), image_format)
    for split, entries in records.items():
        dump_json(entries, out / f"ImageNet_{split}.json")
    return out / "ImageNet_train.json"


def write_kinetics400(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], num_videos: int | None = None, video_format: str = "mp4"
) -> Path:
    """The world's videos in VideoMAE's Kinetics-400 layout (``path label`` lists); returns ``out_dir``.

    80 / 10 / 10 % of ``num_videos`` (default ``world.num_videos``) go to train / val / test.
    """
    out = Path(out_dir)
    count = world.num_videos if num_videos is None else num_videos
    manifest = {"format": "kinetics400", "world": repr(world), "num_videos": count, "video_format": video_format}
    if _claim_directory(out, manifest):
        return out
    out, final = _staging(out), out
    dirs = video_class_dirs()
    for split, indices in _video_splits(count).items():
        lines = []
        for index in tqdm(indices, desc=f"synthetic Kinetics-400 {split} -> {out}", unit="video", disable=None):
            video = world.video(index)
            relative = Path("videos") / split / dirs[video.label] / f"{video.video_id}.{video_format}"
            write_video(
                out / relative, video.frames, fps=video.fps, options={"crf": "12"} if video_format == "mp4" else None
            )
            lines.append(f"{relative.as_posix()} {video.label}\n")
        (out / f"{split}.csv").write_text("".join(lines), encoding="utf-8")
    return _publish(out, final, manifest)


def write_ssv2(
    world: SyntheticWorld, out_dir: str | os.PathLike[str], num_videos: int | None = None, video_format: str = "webm"
) -> Path:
    """The world's videos in the Something-Something v2 layout; returns ``out_dir``.

    The label of a video is ``labels[template without brackets]``, e.g. "Moving something left";
    ``placeholders`` name the main shape ("red circle"). The test JSON lists ids only, like the real one.
    """
    out = Path(out_dir)
    count = world.num_videos if num_videos is None else num_videos
    manifest = {"format": "ssv2", "world": repr(world), "num_videos": count, "video_format": video_format}
    if _claim_directory(out, manifest):
        return out
    out, final = _staging(out), out
    labels = {template.replace("[", "").replace("]", ""): str(k) for k, template in enumerate(SSV2_TEMPLATES)}
    dump_json(labels, out / "something-something-v2-labels.json")
    names = {"train": "train", "val": "validation", "test": "test"}
    for split, indices in _video_splits(count).items():
        entries = []
        for index in tqdm(indices, desc=f"synthetic SSv2 {split} -> {out}", unit="video", disable=None):
            video = world.video(index)
            main = video.instances[video.main]
            video_id = str(index)
            write_video(out / "20bn-something-something-v2" / f"{video_id}.{video_format}", video.frames, fps=video.fps)
            if split == "test":
                entries.append({"id": video_id})
                continue
            thing = f"{main.color} {main.shape}"
            entries.append({"id": video_id, "label": f"moving {thing} {main.direction}",
                            "template": SSV2_TEMPLATES[video.label], "placeholders": [thing]})  # fmt: skip
        dump_json(entries, out / f"something-something-v2-{names[split]}.json")
    return _publish(out, final, manifest)
