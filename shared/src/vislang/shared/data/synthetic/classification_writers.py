"""Write the synthetic world in classification datasets' on-disk formats (images and videos).

Image classes are ``CLASS_NAMES`` (the shape of a scene's largest instance); video classes are
``VIDEO_CLASS_NAMES`` (the direction the main shape moves). Images are the world's scenes (``style="scenes"``:
one to a few shapes on a textured background), or ``style="object_centric"``: one large shape near the
centre of a flat background (``object_centric_image``), where the outline is the only thing that tells the
classes apart -- what self-supervised pre-training must learn for a classifier to profit from it.
Layouts, all under ``out_dir``:

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vislang.shared.data.synthetic import render
from vislang.shared.data.synthetic.world import CLASS_NAMES, VIDEO_CLASS_NAMES, SyntheticWorld, rng_for
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
    "IMAGE_STYLES",
    "SSV2_TEMPLATES",
    "ObjectImage",
    "image_class_dirs",
    "object_centric_image",
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


ImageStyle = Literal["scenes", "object_centric"]
IMAGE_STYLES: tuple[str, ...] = ("scenes", "object_centric")

_OBJECT_RADIUS = (0.30, 0.40)
"""Half-extent of an object-centric shape as a fraction of the side: it covers about a third of the image
(a scene's shapes cover ~6 %)."""
_OBJECT_CENTRE_JITTER = 0.1
"""The shape's centre is within this fraction of the side of the image centre (ImageNet-like framing)."""
_OBJECT_BACKGROUND_GREY = (70.0, 190.0)
_OBJECT_BACKGROUND_TINT = 6.0


@dataclass(eq=False)
class ObjectImage:
    """An object-centric image: ``image`` H x W x 3 uint8, the shape's ``mask``, its ``label`` (index into
    ``CLASS_NAMES``) and colour name."""

    index: int
    image: np.ndarray
    mask: np.ndarray
    label: int
    color: str

    @property
    def label_name(self) -> str:
        return CLASS_NAMES[self.label]


def object_centric_image(world: SyntheticWorld, index: int) -> ObjectImage:
    """Image ``index`` of ``world`` in the object-centric style: one upright shape of the world's vocabulary,
    30-40 % of the side in half-extent, centred to within 10 % of the side, in a jittered world colour on a
    flat, faintly tinted grey background. A pure function of ``(world.seed, index)``.

    Upright on purpose: with random rotations (tried), a few minutes of pre-training of the tiny demo model
    gave fine-tuning no gain over random initialisation.
    """
    rng = rng_for(world.seed, int(index), "scene")
    size = world.image_size
    label = int(rng.integers(len(CLASS_NAMES)))
    color = list(render.COLORS)[rng.integers(len(render.COLORS))]
    jitter = rng.integers(-render.COLOR_JITTER, render.COLOR_JITTER + 1, size=3)
    rgb = np.clip(np.asarray(render.COLORS[color]) + jitter, 0, 255)
    grey = rng.uniform(*_OBJECT_BACKGROUND_GREY) + rng.normal(0, _OBJECT_BACKGROUND_TINT, size=3)
    background = np.clip(np.rint(grey), 0, 255)
    r = rng.uniform(*_OBJECT_RADIUS) * size
    cx, cy = size / 2 + rng.uniform(-_OBJECT_CENTRE_JITTER, _OBJECT_CENTRE_JITTER, size=2) * size
    image, mask = render.object_centric_image(
        CLASS_NAMES[label],
        tuple(int(v) for v in rgb),
        tuple(int(v) for v in background),
        size,
        float(cx),
        float(cy),
        float(r),
    )
    return ObjectImage(int(index), image, mask, label, color)


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
    style: ImageStyle = "scenes",
) -> Path:
    """Scenes as an ImageNet-style class-folder tree (``train/`` and ``val/``); returns ``out_dir``.

    Args:
        world: the synthetic world (its ``image_size`` is the image side).
        out_dir: root of the tree.
        num_train / num_val: images per split (default ``world.num_images`` and a tenth of it).
        image_format: ``png`` (exact pixels) or ``jpg`` (like ImageNet's JPEGs).
        style: ``scenes`` (the world's scenes) or ``object_centric`` (``object_centric_image``).
    """
    splits = _split_sizes(world, num_train, num_val)
    return _write_folder(world, Path(out_dir), splits, image_format, style)[0]


def _write_folder(
    world: SyntheticWorld, out: Path, splits: dict[str, range], image_format: str, style: ImageStyle = "scenes"
) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    if style not in IMAGE_STYLES:
        raise ValueError(f"style must be one of {IMAGE_STYLES}, got {style!r}")
    draw = world.scene if style == "scenes" else lambda index: object_centric_image(world, index)
    classes = image_class_dirs()
    records: dict[str, list[dict[str, Any]]] = {}
    for split, indices in splits.items():
        for name in classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        records[split] = []
        for index in tqdm(indices, desc=f"synthetic ImageNet {split} -> {out}", unit="image", disable=None):
            scene = draw(index)
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
    style: ImageStyle = "scenes",
) -> Path:
    """The folder tree plus CMAE's ``ImageNet_{train,val}.json`` lists (path = ``out_dir/prefix/filename``).

    Returns the path of ``ImageNet_train.json``.
    """
    splits = _split_sizes(world, num_train, num_val)
    out, records = _write_folder(world, Path(out_dir), splits, image_format, style)
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
            entries.append(
                {
                    "id": video_id,
                    "label": f"moving {thing} {main.direction}",
                    "template": SSV2_TEMPLATES[video.label],
                    "placeholders": [thing],
                }
            )
        dump_json(entries, out / f"something-something-v2-{names[split]}.json")
    return _publish(out, final, manifest)
