"""Write the synthetic world in real datasets' on-disk formats, so the real loaders run on it unchanged.

Layout written under ``out_dir`` (COCO's own, with the split name in place of ``train2017``)::

    images/{split}/{image_id:012d}.png        one file per scene (PNG keeps mask/pixel agreement exact)
    annotations/captions_{split}.json         COCO captions
    annotations/instances_{split}.json        COCO instances with RLE masks

Every writer has the shape ``write_<format>(world, out_dir, split="train", indices=None, ...) -> Path``
(the main annotation file). Adding a format (VQA v2, MUSE, MSRVTT, Kinetics, ImageNet folders) means one
more such function built from the helpers here (``split_indices``, ``write_scene_images``, ``encode_rle``,
``dump_json``) and the records the world already exposes (``VQAQuestion.annotation_record()``,
``ReasoningQuestion``, ``Video.frames``/``fps``/``video_id``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from vislang.shared.data.synthetic.render import COLORS, SHAPES
from vislang.shared.data.synthetic.world import Scene, SyntheticWorld
from vislang.shared.data.video import write_video

CAPTIONS_PER_VIDEO = 5

__all__ = [
    "SPLIT_OFFSETS",
    "coco_categories",
    "dump_json",
    "encode_rle",
    "image_file_name",
    "split_indices",
    "write_coco_captions",
    "write_coco_instances",
    "write_msrvtt",
    "write_scene_images",
]

SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}
"""First sample index of each split: splits are disjoint index ranges of the same infinite world."""

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}
_INFO = {"description": "vislang synthetic world", "version": "1.0", "contributor": "vislang.shared.data.synthetic"}


def split_indices(split: str, count: int) -> range:
    """The sample indices of the first ``count`` items of ``split`` (disjoint across splits)."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    if not 0 <= count < 1_000_000:
        raise ValueError(f"count must be in [0, 1e6), got {count}")
    return range(SPLIT_OFFSETS[split], SPLIT_OFFSETS[split] + count)


def _resolve_indices(world: SyntheticWorld, split: str, indices: Iterable[int] | None) -> list[int]:
    """Explicit indices, or the split's default size: ``num_images`` for train, a tenth of it otherwise."""
    if indices is not None:
        out = [int(i) for i in indices]
        if len(set(out)) != len(out):
            raise ValueError("indices must not repeat: they become COCO image ids")
        return out
    count = world.num_images if split == "train" else max(world.num_images // 10, 1)
    return list(split_indices(split, count))


def image_file_name(image_id: int, image_format: str = "png") -> str:
    """COCO-style zero-padded file name of a scene image."""
    return f"{image_id:012d}.{image_format}"


def dump_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write compact JSON, creating parent directories; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    return path


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of an H x W bool mask, with ``counts`` decoded to ``str`` for JSON."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def coco_categories() -> list[dict[str, Any]]:
    """COCO ``categories``: one per shape, ids 1..5 in ``SHAPES`` order."""
    return [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]


def write_scene_images(
    world: SyntheticWorld, image_dir: str | os.PathLike[str], indices: Sequence[int], image_format: str = "png"
) -> list[tuple[Scene, dict[str, Any]]]:
    """Render and save the scenes; return each with its COCO ``images`` entry (id, file_name, size).

    JPEG is accepted because some loaders expect ``.jpg``, but it blurs colours across mask borders; use
    PNG when pixels must match masks exactly.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for index in indices:
        scene = world.scene(index)
        name = image_file_name(scene.image_id, image_format)
        Image.fromarray(scene.image).save(image_dir / name, format=IMAGE_FORMATS[image_format])
        out.append((scene, {"id": scene.image_id, "file_name": name, "height": scene.height, "width": scene.width}))
    return out


def write_coco_captions(
    world: SyntheticWorld,
    out_dir: str | os.PathLike[str],
    split: str = "train",
    indices: Iterable[int] | None = None,
    image_format: str = "png",
) -> Path:
    """COCO captions: ``annotations/captions_{split}.json`` with five captions per image, plus the images.

    Returns the JSON path; images are in ``out_dir/images/{split}/``.
    """
    out_dir = Path(out_dir)
    ids = _resolve_indices(world, split, indices)
    scenes = write_scene_images(world, out_dir / "images" / split, ids, image_format)
    annotations = []
    for scene, _entry in scenes:
        for caption in world.captions(scene.index):
            annotations.append({"id": len(annotations) + 1, "image_id": scene.image_id, "caption": caption})
    dataset = {"info": _INFO, "licenses": [], "images": [e for _, e in scenes], "annotations": annotations}
    return dump_json(dataset, out_dir / "annotations" / f"captions_{split}.json")


def write_coco_instances(
    world: SyntheticWorld,
    out_dir: str | os.PathLike[str],
    split: str = "train",
    indices: Iterable[int] | None = None,
    image_format: str = "png",
) -> Path:
    """COCO instances: ``annotations/instances_{split}.json`` with RLE masks of the visible regions.

    Each annotation also carries ``attributes`` (color, size, hpos, vpos) and ``depth`` beyond COCO's
    keys; ``area`` is the mask's pixel count and ``bbox`` its tight box. Returns the JSON path.
    """
    out_dir = Path(out_dir)
    ids = _resolve_indices(world, split, indices)
    scenes = write_scene_images(world, out_dir / "images" / split, ids, image_format)
    annotations = []
    for scene, _entry in scenes:
        for inst in scene.instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": scene.image_id,
                    "category_id": inst.category_id,
                    "segmentation": encode_rle(inst.mask),
                    "area": float(inst.area),
                    "bbox": [float(v) for v in inst.bbox],
                    "iscrowd": 0,
                    "attributes": {"color": inst.color, "size": inst.size, "hpos": inst.hpos, "vpos": inst.vpos},
                    "depth": inst.depth,
                }
            )
    dataset = {
        "info": {**_INFO, "colors": list(COLORS)},
        "licenses": [],
        "images": [e for _, e in scenes],
        "annotations": annotations,
        "categories": coco_categories(),
    }
    return dump_json(dataset, out_dir / "annotations" / f"instances_{split}.json")


# ---- video-language layouts ---------------------------------------------------------------------------

MANIFEST = ".vislang_synthetic.json"


def _video_splits(num_videos: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[int]]:
    """Disjoint train/val/test video indices (each at least one video) from the world's split ranges."""
    if num_videos < 3:
        raise ValueError(f"num_videos must be at least 3 (one per split), got {num_videos}")
    val = max(1, round(num_videos * fractions[1]))
    test = max(1, round(num_videos * fractions[2]))
    train = num_videos - val - test
    return {name: list(split_indices(name, count)) for name, count in (("train", train), ("val", val), ("test", test))}


def _claim_directory(out_dir: Path, manifest: dict[str, Any]) -> bool:
    """True when `out_dir` already holds exactly this synthetic data; refuses to write over anything else."""
    marker = out_dir / MANIFEST
    if marker.exists():
        if json.loads(marker.read_text()) == manifest:
            return True
        raise FileExistsError(
            f"{out_dir} holds synthetic data written with other settings ({marker}); use another directory"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} is not empty and was not written by the synthetic world; refusing to write into it"
        )
    return False


def write_msrvtt(world: SyntheticWorld, out_dir: str | os.PathLike[str], num_videos: int | None = None) -> Path:
    """The world's videos as MSRVTT in the CLIP4Clip layout, plus MSRVTT-QA (what `vislang.vlab` reads).

    Layout::

        videos/video{N}.mp4                      H.264 clips
        MSRVTT_data.json                         {"videos": [...], "sentences": [{"video_id", "caption", "sen_id"}]}
        MSRVTT_train.9k.csv                      video_id of the training videos (80 %)
        MSRVTT_JSFUSION_test.csv                 key,vid_key,video_id,sentence: one sentence per test video (10 %)
        standardsplit_{train,val,test}_id.json   the captioning split (VALOR's files)
        msrvtt_qa/{train,val,test}_qa.json       [{"question", "answer", "video_id": N, "id"}]

    The real files have 10,000 videos of 20 captions; here every video has the world's 5 captions and
    its QA pairs (one answer each: MSRVTT-QA is open-ended with a single ground truth). Writing is
    skipped when `out_dir` already holds the same data (same seed, sizes and count).

    Returns:
        `out_dir`.
    """
    out = Path(out_dir)
    count = world.num_videos if num_videos is None else num_videos
    splits = _video_splits(count)
    manifest = {"format": "msrvtt", "world": repr(world), "num_videos": count}
    if _claim_directory(out, manifest):
        return out
    videos, sentences, qa = [], [], {name: [] for name in splits}
    split_of = {index: name for name, indices in splits.items() for index in indices}
    for index in tqdm(sorted(split_of), desc=f"synthetic MSRVTT -> {out}", unit="video", disable=None):
        sample = world.video_sample(index)
        video_id = sample.video.video_id
        # near-lossless x264 keeps the flat colours recognisable at tiny sizes
        write_video(
            out / "videos" / f"{video_id}.mp4", sample.video.frames, fps=sample.video.fps, options={"crf": "12"}
        )
        videos.append({"video_id": video_id, "category": sample.video.label, "split": split_of[index],
                       "start time": 0.0, "end time": len(sample.video.frames) / sample.video.fps})  # fmt: skip
        sentences.extend({"video_id": video_id, "caption": caption} for caption in sample.captions)
        qa[split_of[index]].extend(
            {"question": q.question, "answer": q.answer, "video_id": index, "id": q.question_id} for q in sample.qa
        )
    for number, sentence in enumerate(sentences):
        sentence["sen_id"] = number
    dump_json({"info": _INFO, "videos": videos, "sentences": sentences}, out / "MSRVTT_data.json")
    captions_of = {}
    for sentence in sentences:
        captions_of.setdefault(sentence["video_id"], []).append(sentence["caption"])
    with open(out / "MSRVTT_train.9k.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id"])
        writer.writerows([f"video{i}"] for i in splits["train"])
    with open(out / "MSRVTT_JSFUSION_test.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        for key, index in enumerate(splits["test"]):
            # like JSFusion's pick: one of the video's captions, not always the first
            caption = captions_of[f"video{index}"][index % CAPTIONS_PER_VIDEO]
            writer.writerow([f"ret{key}", f"msr{index}", f"video{index}", caption])
    for name, indices in splits.items():
        dump_json([f"video{i}" for i in indices], out / f"standardsplit_{name}_id.json")
        dump_json(qa[name], out / "msrvtt_qa" / f"{name}_qa.json")
    dump_json(manifest, out / MANIFEST)
    return out
