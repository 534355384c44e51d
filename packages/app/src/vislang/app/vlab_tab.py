"""VLAB tab: rank a folder of videos for a sentence (thumbnails and scores), then caption or question one.

Every model call is the package's own: `VLABModule.rank_captions(video, [sentence])` gives the cosine of
the sentence and the video in the contrastive space (so one call per video ranks the folder by it),
`caption(video)` and `answer(video, question)` generate with the decoder. Frames are sampled as the
checkpoint's data module sampled them for evaluation (`eval_num_frames`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vislang.app.checkpoints import checkpoint_hparams, resolve_relative
from vislang.app.inputs import InputError, check_question, check_video, list_videos
from vislang.shared.data.robust import SampleLoadError
from vislang.shared.data.video import VideoReader
from vislang.vlab.module import VLABModule

__all__ = ["RankedVideo", "VLABModel", "describe_video", "load_vlab", "rank_videos"]

THUMBNAIL_SIDE = 128


@dataclass
class VLABModel:
    """The module, the frames per clip its evaluation used, and the tasks it was trained on."""

    module: VLABModule
    num_frames: int
    tasks: tuple[str, ...]


@dataclass
class RankedVideo:
    path: Path
    score: float
    thumbnail: Path


@dataclass
class Ranking:
    videos: list[RankedVideo]
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_vlab(path: str | Path) -> VLABModel:
    """A VLAB checkpoint for inference on the CPU (the checkpoint holds CLIP's weights: none re-read)."""
    hparams = checkpoint_hparams(path)
    if "decoder_tokenizer" not in hparams or "max_answer_tokens" not in hparams:
        raise ValueError(f"{path}: not a VLAB checkpoint (VLABModule); pass one to --vlab-ckpt")
    data = checkpoint_hparams(path, "datamodule_hyper_parameters")
    tokenizer = resolve_relative(hparams.get("decoder_tokenizer"), path)
    module = VLABModule.load_from_checkpoint(
        path,
        map_location="cpu",
        decoder_tokenizer=tokenizer,
        clip_weights=None,
        init_weights=None,
        results_dir=None,
        compile=False,
    )
    tasks = tuple(data.get("tasks") or ("retrieval", "caption", "qa"))
    return VLABModel(module.eval(), int(data.get("eval_num_frames") or 8), tasks)


def thumbnail(video: Path, out_dir: Path) -> Path:
    """The middle frame, upscaled (nearest) to `THUMBNAIL_SIDE` px on the long side, as a PNG."""
    reader = VideoReader(video)
    frame = reader.get_frames([len(reader) // 2])[0]
    image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    scale = THUMBNAIL_SIDE / max(image.size)
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST)
    path = out_dir / f"thumb_{uuid.uuid4().hex[:12]}.png"
    image.save(path)
    return path


def rank_videos(
    model: VLABModel, folder: str, sentence: str, out_dir: Path, progress: Callable[[float, str], None] | None = None
) -> Ranking:
    """Every decodable video of `folder`, best match for `sentence` first; undecodable ones are listed."""
    sentence = check_question(sentence, "sentence")
    videos, notes = list_videos(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked, skipped = [], []
    for k, video in enumerate(videos):
        if progress is not None:
            progress(k / len(videos), f"video {k + 1} of {len(videos)}: {video.name}")
        try:
            ((_, score),) = model.module.rank_captions(video, [sentence], num_frames=model.num_frames)
            ranked.append(RankedVideo(video, float(score), thumbnail(video, out_dir)))
        except (SampleLoadError, OSError, RuntimeError, ValueError) as error:
            skipped.append(f"{video.name} ({str(error).splitlines()[0][:120] if str(error) else type(error).__name__})")
    if not ranked:
        raise InputError(f"{folder}: none of the {len(videos)} videos could be decoded: {'; '.join(skipped[:3])}")
    ranked.sort(key=lambda r: -r.score)
    return Ranking(ranked, skipped, notes)


def describe_video(model: VLABModel, video: str | Path | None, task: str, question: str | None = None) -> str:
    """`caption` or `answer` one video (a file path); the question is checked for `answer`."""
    path = check_video(video)
    if task == "answer":
        question = check_question(question)
        return model.module.answer(path, question, num_frames=model.num_frames)
    if task != "caption":
        raise InputError(f"unknown task {task!r}: choose caption or answer")
    return model.module.caption(path, num_frames=model.num_frames)
