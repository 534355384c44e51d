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
import pickle
import re
import shutil
import string
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
    "TGIF_FRAMEQA_TYPES",
    "coco_categories",
    "dump_json",
    "encode_rle",
    "image_file_name",
    "msvd_tokens",
    "split_indices",
    "write_coco_captions",
    "write_coco_instances",
    "write_msrvtt",
    "write_msvd",
    "write_scene_images",
    "write_tgif_frameqa",
    "write_webvid",
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
    """Write compact JSON, creating parent directories; returns the path.

    Written to a temporary name and renamed: writers that skip their work when their annotation file
    exists (it is written last) never find a half-written one after an interruption.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(partial, path)
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
    """True when `out_dir` already holds exactly this synthetic data; refuses to write over anything else.

    When False, the writer writes into `_staging(out_dir)` and `_publish`es it: the data appears under
    `out_dir` whole or not at all, so an interrupted write never blocks the next run.
    """
    marker = out_dir / MANIFEST
    if marker.exists():
        if json.loads(marker.read_text()) == manifest:
            return True
        raise FileExistsError(
            f"{out_dir} holds synthetic data written with other settings ({marker}); delete it "
            f"(`rm -r {out_dir}`) or write this data elsewhere (data.root)"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} is not empty and holds no synthetic-world manifest ({MANIFEST}): refusing to write into it; "
            f"delete it (`rm -r {out_dir}`) if it is a leftover, or write the synthetic data elsewhere (data.root)"
        )
    return False


def _staging(out_dir: Path) -> Path:
    """A fresh folder beside `out_dir` to write into; the leftover of an interrupted write is removed."""
    staging = out_dir.parent / f".{out_dir.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Mark `staging` complete and rename it to `out_dir` (an empty `out_dir` is replaced)."""
    dump_json(manifest, staging / MANIFEST)
    if out_dir.exists():
        out_dir.rmdir()  # `_claim_directory` allowed only an empty one
    os.replace(staging, out_dir)
    return out_dir


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
    out, final = _staging(out), out
    videos, sentences, qa = [], [], {name: [] for name in splits}
    split_of = {index: name for name, indices in splits.items() for index in indices}
    for index in tqdm(sorted(split_of), desc=f"synthetic MSRVTT -> {out}", unit="video", disable=None):
        sample = world.video_sample(index)
        video_id = sample.video.video_id
        # near-lossless x264 keeps the flat colours recognisable at tiny sizes
        write_video(
            out / "videos" / f"{video_id}.mp4", sample.video.frames, fps=sample.video.fps, options={"crf": "12"}
        )
        videos.append(
            {
                "video_id": video_id,
                "category": sample.video.label,
                "split": split_of[index],
                "start time": 0.0,
                "end time": len(sample.video.frames) / sample.video.fps,
            }
        )
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
    return _publish(out, final, manifest)


_TOKEN = re.compile(r"[a-z0-9]+")
_YOUTUBE_ID_CHARS = string.ascii_letters + string.digits + "-_"
_TUMBLR_CHARS = string.ascii_letters + string.digits
# TGIF-QA FrameQA's `type` column (0 object, 1 number, 2 color, 3 location) per world QA kind; the world's
# yes/no questions have no FrameQA counterpart (FrameQA answers are single open words) and are left out
TGIF_FRAMEQA_TYPES: dict[str, int] = {"shape": 0, "count_all": 1, "count_direction": 1, "color": 2, "direction": 3}
# MPEG-4 Part 2 in .avi like the MSVD release; a low quantiser cap keeps the flat colours at tiny sizes
_AVI_OPTIONS = {"qmin": "1", "qmax": "3"}


def msvd_tokens(caption: str) -> list[str]:
    """A caption as MSVD's ``raw-captions.pkl`` stores it: lower-case word tokens, punctuation dropped."""
    return _TOKEN.findall(caption.lower())


# keys of the file-name generators, apart from the world's own streams (world._STREAMS, 0..7)
_NAME_STREAMS = {"msvd": 101, "tgif": 102}


def _name_rng(world: SyntheticWorld, index: int, dataset: str) -> np.random.Generator:
    """The generator of one video's file name: a pure function of (seed, index, dataset)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([world.seed, index, _NAME_STREAMS[dataset]])))


def _random_name(rng: np.random.Generator, alphabet: str, length: int) -> str:
    return "".join(alphabet[k] for k in rng.integers(len(alphabet), size=length))


def _gif_fps(fps: float) -> int:
    """The frame rate a GIF can store nearest to ``fps`` (GIF delays are 1/100 s: a divisor of 100)."""
    return min((d for d in range(1, 101) if 100 % d == 0), key=lambda d: (abs(d - fps), -d))


def _seconds(world: SyntheticWorld) -> int:
    """A clip's whole-second duration (at least 1), as the datasets' metadata round it."""
    return max(1, round(world.num_frames / world.fps))


def write_msvd(world: SyntheticWorld, out_dir: str | os.PathLike[str], num_videos: int | None = None) -> Path:
    """The world's videos as MSVD in the CLIP4Clip layout, plus MSVD-QA (what `vislang.vlab` reads).

    Layout::

        videos/<clip>.avi                   MPEG-4 clips named like YouTube clips, "<youtube id>_<start>_<end>"
        {train,val,test}_list.txt           one clip name per line (80 / 10 / 10 %)
        raw-captions.pkl                    {clip: [[token, ...], ...]}: plain dict/list/str, 5 captions each
        msvd_qa/{train,val,test}_qa.json    [{"question", "answer", "video_id": N, "id"}]
        msvd_qa/youtube_mapping.txt         "<clip> vid<N>" lines, N 1-based over train, val, test in order

    Captions are tokenised with `msvd_tokens` (lower case, punctuation dropped), so the reader's
    space-joined tokens are the world's captions without their commas and colons. Clip names are
    pseudo-random but a pure function of (seed, index). Writing is skipped when `out_dir` already
    holds the same data.

    Returns:
        `out_dir`.
    """
    out = Path(out_dir)
    count = world.num_videos if num_videos is None else num_videos
    splits = _video_splits(count)
    manifest = {"format": "msvd", "world": repr(world), "num_videos": count}
    if _claim_directory(out, manifest):
        return out
    out, final = _staging(out), out
    split_of = {index: name for name, indices in splits.items() for index in indices}
    clips: dict[str, list[str]] = {name: [] for name in splits}
    raw_captions: dict[str, list[list[str]]] = {}
    qa: dict[str, list[dict[str, Any]]] = {name: [] for name in splits}
    mapping = []
    for number, index in enumerate(
        tqdm(sorted(split_of), desc=f"synthetic MSVD -> {out}", unit="video", disable=None), start=1
    ):
        sample = world.video_sample(index)
        rng = _name_rng(world, index, "msvd")
        start = int(rng.integers(0, 300))
        clip = f"{_random_name(rng, _YOUTUBE_ID_CHARS, 11)}_{start}_{start + _seconds(world)}"
        write_video(out / "videos" / f"{clip}.avi", sample.video.frames, fps=sample.video.fps, options=_AVI_OPTIONS)
        clips[split_of[index]].append(clip)
        raw_captions[clip] = [msvd_tokens(caption) for caption in sample.captions]
        mapping.append(f"{clip} vid{number}")
        qa[split_of[index]].extend(
            {"question": q.question, "answer": q.answer, "video_id": number, "id": q.question_id} for q in sample.qa
        )
    for name in splits:
        (out / f"{name}_list.txt").write_text("".join(f"{clip}\n" for clip in clips[name]), encoding="utf-8")
        dump_json(qa[name], out / "msvd_qa" / f"{name}_qa.json")
    (out / "msvd_qa" / "youtube_mapping.txt").write_text("".join(f"{line}\n" for line in mapping), encoding="utf-8")
    with open(out / "raw-captions.pkl", "wb") as handle:
        pickle.dump(raw_captions, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return _publish(out, final, manifest)


def write_tgif_frameqa(world: SyntheticWorld, out_dir: str | os.PathLike[str], num_videos: int | None = None) -> Path:
    """The world's videos and QA as TGIF-QA FrameQA (what `vislang.vlab` reads for ``tgif``).

    Layout::

        gifs/<gif_name>.gif                 animated GIFs named like Tumblr files ("tumblr_<id>o1_<width>")
        Train_frameqa_question.csv          tab-separated: gif_name, question, answer, type, vid_id, key,
        Test_frameqa_question.csv           description (type 0/1/2/3 = object/number/color/location)

    TGIF has no validation split: the training file holds 80 % of the videos, the test file the other
    20 % (the `_video_splits` val and test videos). Each video contributes its shape (object), count
    (number), colour and direction (location) questions, mapped by `TGIF_FRAMEQA_TYPES`; its yes/no
    question is left out, as FrameQA has none. ``vid_id`` is ``FRAMEQA<n>`` per question, ``key`` the
    GIF's number and ``description`` the video's first caption. GIF frame delays are in 1/100 s, so
    the GIFs play at the divisor of 100 nearest the world's fps (10 for its default 8); the frames are
    the world's, quantised to GIF's 8-bit palette. Writing is skipped when `out_dir` already holds the
    same data.

    Returns:
        `out_dir`.
    """
    out = Path(out_dir)
    count = world.num_videos if num_videos is None else num_videos
    splits = _video_splits(count)
    manifest = {"format": "tgif_frameqa", "world": repr(world), "num_videos": count}
    if _claim_directory(out, manifest):
        return out
    out, final = _staging(out), out
    files = {"Train": splits["train"], "Test": splits["val"] + splits["test"]}
    file_of = {index: name for name, indices in files.items() for index in indices}
    rows: dict[str, list[list[Any]]] = {name: [] for name in files}
    fps = _gif_fps(world.fps)
    question_number = 0
    for key, index in enumerate(
        tqdm(sorted(file_of), desc=f"synthetic TGIF-FrameQA -> {out}", unit="video", disable=None), start=1
    ):
        sample = world.video_sample(index)
        rng = _name_rng(world, index, "tgif")
        gif_name = f"tumblr_{_random_name(rng, _TUMBLR_CHARS, 17)}o1_{sample.video.frames.shape[2]}"
        write_video(out / "gifs" / f"{gif_name}.gif", sample.video.frames, fps=fps)
        for q in sample.qa:
            if q.kind in TGIF_FRAMEQA_TYPES:
                question_number += 1
                rows[file_of[index]].append(
                    [
                        gif_name,
                        q.question,
                        q.answer,
                        TGIF_FRAMEQA_TYPES[q.kind],
                        f"FRAMEQA{question_number}",
                        key,
                        sample.captions[0],
                    ]
                )
    for name, table in rows.items():
        with open(out / f"{name}_frameqa_question.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["gif_name", "question", "answer", "type", "vid_id", "key", "description"])
            writer.writerows(table)
    return _publish(out, final, manifest)


def write_webvid(world: SyntheticWorld, out_dir: str | os.PathLike[str], num_videos: int | None = None) -> Path:
    """The world's videos as WebVid-2M (what `vislang.vlab` reads for ``webvid``).

    Layout::

        videos/<page_dir>/<videoid>.mp4     H.264 clips; page_dir like "000001_000050" (50 rows a page)
        results_2M_train.csv                videoid, contentUrl, duration, page_dir, name (80 % of the videos)
        results_2M_val.csv                  the same for the other 20 % (WebVid has no test split)

    WebVid has one alt-text caption per video (``name``); here it is one of the world's five captions,
    ``index % 5``, so all paraphrase styles occur. ``videoid`` is the world index, ``duration`` ISO 8601
    (``PT00H00M02S``) and ``contentUrl`` a reserved ``.invalid`` address. Writing is skipped when
    `out_dir` already holds the same data.

    Returns:
        `out_dir`.
    """
    out = Path(out_dir)
    count = world.num_videos if num_videos is None else num_videos
    splits = _video_splits(count)
    manifest = {"format": "webvid", "world": repr(world), "num_videos": count}
    if _claim_directory(out, manifest):
        return out
    out, final = _staging(out), out
    files = {"train": splits["train"], "val": splits["val"] + splits["test"]}
    seconds = _seconds(world)
    duration = f"PT{seconds // 3600:02d}H{seconds // 60 % 60:02d}M{seconds % 60:02d}S"
    progress = tqdm(total=count, desc=f"synthetic WebVid -> {out}", unit="video", disable=None)
    for name, indices in files.items():
        rows = []
        for row, index in enumerate(indices):
            sample = world.video_sample(index)
            first = row // 50 * 50 + 1
            page_dir = f"{first:06d}_{first + 49:06d}"
            write_video(
                out / "videos" / page_dir / f"{index}.mp4",
                sample.video.frames,
                fps=sample.video.fps,
                options={"crf": "12"},
            )
            url = f"https://synthetic.invalid/vislang/{world.seed}/{index}.mp4"
            rows.append([index, url, duration, page_dir, sample.captions[index % CAPTIONS_PER_VIDEO]])
            progress.update()
        with open(out / f"results_2M_{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
            writer.writerows(rows)
    progress.close()
    return _publish(out, final, manifest)
