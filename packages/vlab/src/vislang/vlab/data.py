"""Video-text data for VLAB: MSRVTT, MSVD, TGIF-FrameQA and WebVid in their real on-disk layouts.

Every dataset is read from the files the benchmark ships (or the files the community's loaders use,
CLIP4Clip's and VALOR's, where the benchmark ships none); the synthetic world writes the same
layouts, so the demo and the tests run this very code. Expected layouts are in the package README
and in each `read_*` function's docstring; a missing file stops `setup` at once with its name.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vislang.shared.data.loaders import eval_loader, train_loader
from vislang.shared.data.robust import RobustDataset, SampleLoadError
from vislang.shared.data.shards import VIDEO_EXTENSIONS, ShardDataset, ShardLoader, bytes_as_file, expand_shards
from vislang.shared.data.video import VideoReader, tsn_indices
from vislang.shared.preflight import Missing, PreflightContext

Task = Literal["retrieval", "caption", "qa"]
"""`retrieval`: contrastive video-text; `caption`: the decoder describes the video; `qa`: it answers a question."""
TASKS: tuple[Task, ...] = get_args(Task)
Split = Literal["train", "val", "test"]
DatasetName = Literal["msrvtt", "msvd", "tgif", "webvid"]

# CLIP's normalisation (OpenAI CLIP, open_clip `OPENAI_DATASET_MEAN/STD`)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = [
    "DATA_SOURCES",
    "TASKS",
    "MissingDataFiles",
    "Split",
    "Task",
    "VLABDataModule",
    "VideoTextData",
    "VideoTextDataset",
    "VideoTextItem",
    "load_clip",
    "read_msrvtt",
    "read_msvd",
    "read_tgif_frameqa",
    "read_webvid",
]


@dataclass
class VideoTextItem:
    """One sample: a video file and the texts that go with it for one task."""

    video: Path
    captions: list[str] = field(default_factory=list)
    question: str | None = None
    answer: str | None = None


@runtime_checkable
class VideoTextData(Protocol):
    """What `VLABModule` reads from its data module (`VLABDataModule` is one).

    Attributes:
        tasks: the tasks trained together; a training batch holds one sub-batch per task.
        eval_tasks: one evaluation loader per task, in this order: loader `i` evaluates `eval_tasks[i]`.
    """

    tasks: list[Task]
    eval_tasks: list[Task]

    def dataset_items(self, task: Task, split: Split) -> list[VideoTextItem]:
        """The items (video path, captions, question, answer) of a task's split, by dataset index."""
        ...


class MissingDataFiles(FileNotFoundError):
    """Annotation files a reader needs and does not find; `paths` lists them."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        super().__init__(
            f"missing {', '.join(map(str, paths))} (see packages/vlab/README.md, 'Data layout', for what goes where)"
        )


def _require(*paths: Path) -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise MissingDataFiles(missing)


# Where each benchmark comes from, for the preflight's fixes (the README's "Data layout" has the details).
DATA_SOURCES: dict[str, str] = {
    "msrvtt": "`python -m vislang.vlab.prepare msrvtt --root {root}` lays out CLIP4Clip's msrvtt_data.zip "
    "(add --videos for Frozen in Time's MSRVTT.zip, 6.3 GB, into {root}/videos/all); MSRVTT-QA's "
    "{{train,val,test}}_qa.json go in {root}/msrvtt_qa by hand (xudejing/video-question-answering)",
    "msvd": "videos: YouTubeClips.tar (UT Austin's MSVD page) into {root}/videos; lists and raw-captions.pkl: "
    "CLIP4Clip's msvd_data.zip; MSVD-QA json and youtube_mapping.txt in {root}/msvd_qa "
    "(`python -m vislang.vlab.prepare msvd --root {root}` prints the addresses)",
    "tgif": "TGIF-QA's {{Train,Test}}_frameqa_question.csv (YunseokJANG/tgif-qa) and the TGIF GIFs in {root}/gifs",
    "webvid": "WebVid's results_2M_{{train,val}}.csv and videos downloaded with video2dataset into "
    "{root}/videos/<page_dir>/<videoid>.mp4",
}


# ---- MSRVTT ------------------------------------------------------------------------------------


def read_msrvtt(root: Path, task: Task, split: Split, videos: str = "videos") -> list[VideoTextItem]:
    """MSRVTT in the CLIP4Clip layout plus MSRVTT-QA.

    root/
        videos/videoN.mp4
        MSRVTT_data.json            {"videos": [...], "sentences": [{"video_id", "caption"}, ...]}
        MSRVTT_train.9k.csv         column video_id: the retrieval training videos
        MSRVTT_JSFUSION_test.csv    key,vid_key,video_id,sentence: the 1k-A test set, one sentence per video
        standardsplit_{train,val,test}_id.json   (caption task; list of "videoN"; VALOR's files)
        msrvtt_qa/{train,val,test}_qa.json       [{"question", "answer", "video_id": N, "id"}]

    Retrieval trains on every caption of the 9k videos and evaluates on 1k-A (validation uses the
    test set, as CLIP4Clip: 1k-A has no validation split). Captioning uses the standard split;
    without the split files, the official one by index (video0-6512 / 6513-7009 / 7010-9999).
    """
    video_dir = root / videos
    if task == "qa":
        path = root / "msrvtt_qa" / f"{split}_qa.json"
        _require(path)
        return [
            VideoTextItem(
                video_dir / f"video{entry['video_id']}.mp4", question=entry["question"], answer=entry["answer"]
            )
            for entry in json.loads(path.read_text())
        ]
    if task == "retrieval" and split != "train":
        path = root / "MSRVTT_JSFUSION_test.csv"
        _require(path)
        with path.open(newline="") as handle:
            return [
                VideoTextItem(video_dir / f"{row['video_id']}.mp4", [row["sentence"]]) for row in csv.DictReader(handle)
            ]
    data_path = root / "MSRVTT_data.json"
    _require(data_path)
    captions: dict[str, list[str]] = {}
    for sentence in json.loads(data_path.read_text())["sentences"]:
        captions.setdefault(sentence["video_id"], []).append(sentence["caption"])
    video_ids = _msrvtt_video_ids(root, task, split)
    missing = [v for v in video_ids if v not in captions]
    if missing:
        raise ValueError(f"{data_path}: no sentences for {len(missing)} listed videos, e.g. {missing[:3]}")
    return [VideoTextItem(video_dir / f"{v}.mp4", captions[v]) for v in video_ids]


def _msrvtt_video_ids(root: Path, task: Task, split: Split) -> list[str]:
    """The videos (`videoN`) of a captioned split: the 9k retrieval training list, or the captioning split."""
    if task == "retrieval":
        path = root / "MSRVTT_train.9k.csv"
        _require(path)
        with path.open(newline="") as handle:
            return [row["video_id"] for row in csv.DictReader(handle)]
    split_file = root / f"standardsplit_{split}_id.json"
    if split_file.exists():
        return json.loads(split_file.read_text())
    bounds = {"train": (0, 6513), "val": (6513, 7010), "test": (7010, 10000)}[split]
    return [f"video{i}" for i in range(*bounds)]


# ---- MSVD --------------------------------------------------------------------------------------


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and strings only: raw-captions.pkl is data, and a pickle can run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is allowed")


def read_msvd(root: Path, task: Task, split: Split, videos: str = "videos") -> list[VideoTextItem]:
    """MSVD in the CLIP4Clip layout plus MSVD-QA.

    root/
        videos/<clip name>.avi
        {train,val,test}_list.txt       one clip name per line
        raw-captions.pkl                {clip name: [[token, ...], ...]}  (read as plain data only)
        msvd_qa/{train,val,test}_qa.json  [{"question", "answer", "video_id": N, "id"}]
        msvd_qa/youtube_mapping.txt     lines "<clip name> vid<N>" (N is 1-based)
    """
    video_dir = root / videos
    if task == "qa":
        path, mapping_path = root / "msvd_qa" / f"{split}_qa.json", root / "msvd_qa" / "youtube_mapping.txt"
        _require(path, mapping_path)
        clip_of = {}
        for line in mapping_path.read_text().split("\n"):
            if line.strip():
                clip, vid = line.split()
                clip_of[int(vid.removeprefix("vid"))] = clip
        return [
            VideoTextItem(
                _find_video(video_dir, clip_of[entry["video_id"]]), question=entry["question"], answer=entry["answer"]
            )
            for entry in json.loads(path.read_text())
        ]
    list_path, captions_path = root / f"{split}_list.txt", root / "raw-captions.pkl"
    _require(list_path, captions_path)
    raw = _PlainDataUnpickler(io.BytesIO(captions_path.read_bytes())).load()
    clips = [line.strip() for line in list_path.read_text().split("\n") if line.strip()]
    return [VideoTextItem(_find_video(video_dir, clip), [" ".join(tokens) for tokens in raw[clip]]) for clip in clips]


def _find_video(video_dir: Path, stem: str) -> Path:
    for suffix in (".avi", ".mp4", ".webm", ".mkv"):
        if (video_dir / f"{stem}{suffix}").exists():
            return video_dir / f"{stem}{suffix}"
    return video_dir / f"{stem}.avi"  # reported as a missing file when loaded


# ---- TGIF-FrameQA ------------------------------------------------------------------------------


def read_tgif_frameqa(root: Path, task: Task, split: Split, videos: str = "gifs") -> list[VideoTextItem]:
    """TGIF-QA FrameQA: tab-separated `{Train,Test}_frameqa_question.csv` and `gifs/<gif_name>.gif`.

    Header: gif_name, question, answer, type, vid_id, key, description. TGIF has no validation
    split; `val` reads the test file, as the QA papers report test accuracy.
    """
    if task != "qa":
        raise ValueError("TGIF-FrameQA provides only the qa task")
    path = root / f"{'Train' if split == 'train' else 'Test'}_frameqa_question.csv"
    _require(path)
    with path.open(newline="") as handle:
        return [
            VideoTextItem(root / videos / f"{row['gif_name']}.gif", question=row["question"], answer=row["answer"])
            for row in csv.DictReader(handle, delimiter="\t")
        ]


# ---- WebVid ------------------------------------------------------------------------------------


def read_webvid(root: Path, task: Task, split: Split, videos: str = "videos") -> list[VideoTextItem]:
    """WebVid-2.5M/10M: `results_2M_{train,val}.csv` (videoid, contentUrl, duration, page_dir, name)
    with videos at `videos/<page_dir>/<videoid>.mp4`, as the download script lays them out."""
    if task == "qa":
        raise ValueError("WebVid provides captions only (retrieval, caption)")
    path = root / f"results_2M_{'train' if split == 'train' else 'val'}.csv"
    _require(path)
    with path.open(newline="") as handle:
        return [
            VideoTextItem(root / videos / row["page_dir"] / f"{row['videoid']}.mp4", [row["name"]])
            for row in csv.DictReader(handle)
        ]


READERS = {"msrvtt": read_msrvtt, "msvd": read_msvd, "tgif": read_tgif_frameqa, "webvid": read_webvid}
_STAGE_SPLITS: dict[str, tuple[Split, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}


def _read(dataset: DatasetName, root: Path, task: Task, split: Split, videos_dir: str | None) -> list[VideoTextItem]:
    """`READERS[dataset]`, with the video folder given in the config or the layout's own."""
    reader = READERS[dataset]
    return reader(root, task, split) if videos_dir is None else reader(root, task, split, videos=videos_dir)


def _examples(paths: Sequence[Path], count: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:count])
    return shown + (f" (+{len(paths) - count} more)" if len(paths) > count else "")


def _missing_videos(videos: list[Path], dataset: DatasetName, root: Path) -> list[Missing]:
    """The preflight's line for the listed videos that are not on disk (none when all are)."""
    absent = [video for video in videos if not video.is_file()]
    if not absent:
        return []
    fetch = " (`python -m vislang.vlab.prepare msrvtt --videos` fetches them)" if dataset == "msrvtt" else ""
    return [
        Missing(
            "data.videos_dir",
            f"{len(absent)} of {len(videos)} listed videos are missing, e.g. {_examples(absent)}",
            f"put them in {absent[0].parent}, or set data.videos_dir to the folder inside {root} that holds them"
            + fetch,
        )
    ]


def _missing_shards(train_shards: str) -> list[Missing]:
    """The preflight's line for training shards that cannot be found (none when they are there)."""
    try:
        expand_shards(train_shards)
    except (FileNotFoundError, ValueError) as err:
        fix = "write them with `python -m vislang.shared.data.shards write --from <config> --out <folder>`"
        return [Missing("data.train_shards", str(err), fix)]
    return []


# ---- datasets ----------------------------------------------------------------------------------


class VideoTextDataset(Dataset):
    """Frames of each item's video, sampled TSN-style (random frame per segment in training, the
    segment centre in evaluation), resized, centre-cropped and CLIP-normalised, with its texts.

    Readers open lazily inside the loader worker (decord is not fork-safe); a file that fails to
    decode raises `VideoDecodeError`, which `RobustDataset` turns into a skipped, counted sample.
    """

    def __init__(self, items: Sequence[VideoTextItem], num_frames: int, image_size: int, train: bool) -> None:
        self.items = list(items)
        self.num_frames = num_frames
        self.image_size = image_size
        self.train = train

    def __len__(self) -> int:
        return len(self.items)

    def sample_file(self, index: int) -> str:
        """The video an index reads (a video with several QA pairs or captions is one file)."""
        return str(self.items[index].video)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        sample: dict[str, Any] = {
            "video": load_clip(item.video, self.num_frames, self.image_size, self.train),
            "index": index,
        }
        if item.captions:
            if self.train:
                sample["caption"] = random.choice(item.captions)
            else:
                sample["captions"] = item.captions
        if item.question is not None:
            sample["question"], sample["answer"] = item.question, item.answer
        return sample


class _CaptionPairs(Dataset):
    """Every (video, caption) pair as its own sample (CLIP4Clip's `expand_msrvtt_sentences`)."""

    def __init__(self, items: Sequence[VideoTextItem], **kwargs: Any) -> None:
        pairs = [VideoTextItem(item.video, [caption]) for item in items for caption in item.captions]
        self.inner = VideoTextDataset(pairs, **kwargs)

    def __len__(self) -> int:
        return len(self.inner)

    def sample_file(self, index: int) -> str:
        return self.inner.sample_file(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.inner[index]


def load_clip(path: str | Path, num_frames: int, image_size: int, train: bool = False) -> Tensor:
    """A clip as the model takes it: (T, 3, S, S) float, CLIP-normalised, TSN-sampled frames.

    The reader is opened here, in the calling (loader worker) process, and resizes the short side to
    `image_size` while decoding; the long side is centre-cropped. Training randomness comes from
    `random`, which PyTorch re-seeds per worker and epoch (reproducible under `seed_everything`).
    """
    reader = VideoReader(path, size=image_size)
    frames = reader.get_frames(tsn_indices(len(reader), num_frames, train=train))  # (T, H, W, 3) uint8
    video = _centre_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), image_size)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (video.float() / 255.0 - mean) / std


def _centre_crop(video: Tensor, size: int) -> Tensor:
    height, width = video.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return video[..., top : top + size, left : left + size]


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack videos and indices; keep texts as lists of strings (the module tokenizes them)."""
    batch: dict[str, Any] = {
        "video": torch.stack([s["video"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
    }
    for key in ("caption", "captions", "question", "answer"):
        if key in samples[0]:
            batch[key] = [s[key] for s in samples]
    return batch


# ---- data module -------------------------------------------------------------------------------


class VLABDataModule(LightningDataModule):
    """Video-text data of one benchmark, for the tasks VLAB trains and evaluates on it.

    Args:
        dataset: which benchmark layout `root` holds: `msrvtt`, `msvd`, `tgif` (FrameQA) or `webvid`.
        root: the dataset directory (layouts in the package README).
        tasks: `retrieval`, `caption` and/or `qa`; training batches hold one sub-batch per task.
        num_frames: frames per clip in training (VALOR/COSA: 4 for MSRVTT).
        eval_num_frames: frames per clip in evaluation (VALOR/COSA: 8).
        image_size: frame side after resize and centre crop (CLIP's 224; the tiny preset's 32).
        batch_size: clips per task per device in training.
        eval_batch_size: clips per device in evaluation.
        num_workers: loader processes per device.
        expand_captions: train retrieval/captioning on every (video, caption) pair rather than one
            random caption per video per epoch.
        max_failure_fraction: stop when more than this fraction of a split's videos fail to decode.
        videos_dir: the video folder inside `root`; None = the layout's own (`videos`, TGIF's `gifs`).
            The common MSRVTT download (Frozen in Time's MSRVTT.zip) unpacks to `videos/all`.
        synthetic_videos: write this many synthetic-world videos into `root` in the `dataset`'s
            layout before reading it (when `root` holds no such data yet); 0 for real data.
        seed: seed of the synthetic world (frame sampling follows `seed_everything`).
        train_shards: train from WebDataset shards in the video2dataset layout instead of `root`'s training
            split: a folder of ``00000.tar`` ..., a brace pattern, an ``http(s)://`` or ``pipe:`` pattern
            (see `vislang.shared.data.shards`); evaluation still reads `root`. One item per video per
            task and epoch (a random caption of its ``.json`` ``captions`` or its ``.txt``; a random QA
            pair of its ``.json`` ``qa``). `shard_samples` writes such shards from `root`.
        shard_samples_per_epoch: samples per rank per epoch from the shards; None = the most the
            shards allow without repeating a sample (see the shards module's epoch policy).
        shuffle_buffer: samples in each loader worker's shuffle buffer when reading shards.
    """

    def __init__(
        self,
        dataset: DatasetName,
        root: str,
        tasks: list[Task] | None = None,
        num_frames: int = 4,
        eval_num_frames: int = 8,
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 4,
        expand_captions: bool = True,
        max_failure_fraction: float = 0.01,
        videos_dir: str | None = None,
        synthetic_videos: int = 0,
        seed: int = 0,
        train_shards: str | None = None,
        shard_samples_per_epoch: int | None = None,
        shuffle_buffer: int = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tasks: list[Task] = list(tasks or ["retrieval"])
        bad = set(self.tasks) - set(TASKS)
        if bad:
            raise ValueError(f"tasks: unknown {sorted(bad)}; choose from {', '.join(TASKS)}")
        self.eval_tasks: list[Task] = list(self.tasks)
        self.root = Path(root)
        self._splits: dict[tuple[Task, Split], RobustDataset] = {}

    def prepare_data(self) -> None:
        if self.hparams.synthetic_videos:
            from vislang.shared.data.synthetic import SyntheticWorld, writers

            # the writer is named after the format it writes; `tgif` here means its FrameQA part
            name = {"tgif": "tgif_frameqa"}.get(self.hparams.dataset, self.hparams.dataset)
            writer = getattr(writers, f"write_{name}", None)
            if writer is None:
                raise ValueError(f"the synthetic world has no {self.hparams.dataset} writer")
            world = SyntheticWorld(seed=self.hparams.seed, image_size=self.hparams.image_size)
            writer(world, self.root, num_videos=self.hparams.synthetic_videos)

    def _dataset(self, task: Task, split: Split) -> RobustDataset:
        key = (task, split)
        if key not in self._splits:
            items = _read(self.hparams.dataset, self.root, task, split, self.hparams.videos_dir)
            train = split == "train"
            common = dict(
                num_frames=self.hparams.num_frames if train else self.hparams.eval_num_frames,
                image_size=self.hparams.image_size,
                train=train,
            )
            if train and task != "qa" and self.hparams.expand_captions:
                dataset: Dataset = _CaptionPairs(items, **common)
            else:
                dataset = VideoTextDataset(items, **common)
            self._splits[key] = RobustDataset(dataset, max_failure_fraction=self.hparams.max_failure_fraction)
        return self._splits[key]

    @classmethod
    def preflight(cls, init_args: dict[str, Any], context: PreflightContext) -> list[Missing]:
        """The annotation files the stage's tasks read, and a stat of every video they list.

        Synthetic runs (`synthetic_videos > 0`) are skipped: `prepare_data` writes their files.
        """
        if init_args.get("synthetic_videos"):
            return []
        dataset, root = init_args["dataset"], Path(init_args["root"])
        fix = DATA_SOURCES[dataset].format(root=root)
        if not root.is_dir():
            return [Missing("data.root", f"{root} does not exist", fix)]
        files: list[Path] = []
        videos: dict[Path, None] = {}  # ordered set: every listed video once
        for task in init_args.get("tasks") or ["retrieval"]:
            for split in _STAGE_SPLITS[context.stage]:
                if split == "train" and init_args.get("train_shards"):
                    continue  # read from the shards (checked below)
                try:
                    items = _read(dataset, root, task, split, init_args.get("videos_dir"))
                except MissingDataFiles as err:
                    files += [p for p in err.paths if p not in files]
                    continue
                except ValueError as err:  # a task the dataset does not have, or inconsistent files
                    return [Missing("data.tasks", str(err), f"choose tasks that {dataset} provides")]
                videos.update(dict.fromkeys(item.video for item in items))
        found = (
            [Missing("data.root", f"{len(files)} annotation file(s) missing: {_examples(files)}", fix)] if files else []
        )
        found += _missing_videos(list(videos), dataset, root)
        if init_args.get("train_shards") and context.stage == "fit":
            found += _missing_shards(init_args["train_shards"])
        return found

    def setup(self, stage: str) -> None:
        # read every annotation file the stage needs now, so a missing one fails before training
        for task in self.tasks:
            for split in _STAGE_SPLITS[stage]:
                if not (split == "train" and self.hparams.train_shards):
                    self._dataset(task, split)

    def train_dataloader(self) -> CombinedLoader:
        """One loader per task, cycled to the longest (Lightning's `max_size_cycle`)."""
        hp = self.hparams
        if hp.train_shards:
            return CombinedLoader({task: self._shard_loader(task) for task in self.tasks}, mode="max_size_cycle")
        loaders = {
            task: train_loader(
                self._dataset(task, "train"), hp.batch_size, self.trainer, collate=collate, num_workers=hp.num_workers
            )
            for task in self.tasks
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")  # predictions are made on the test split

    def _eval_loaders(self, split: Split) -> list[DataLoader]:
        """One loader per evaluation task, in `eval_tasks` order: loader `i` is the module's `dataloader_idx` i."""
        hp = self.hparams
        return [
            eval_loader(
                self._dataset(task, split),
                hp.eval_batch_size,
                collate=collate,
                num_workers=hp.num_workers,
                persistent_workers=True,
            )
            for task in self.eval_tasks
        ]

    def dataset_items(self, task: Task, split: Split) -> list[VideoTextItem]:
        """The items (video path, captions, question, answer) of a task's split, by dataset index."""
        return self._dataset(task, split).items

    # ---- shards --------------------------------------------------------------------------------

    def _shard_loader(self, task: Task) -> ShardLoader:
        hp = self.hparams
        dataset = ShardDataset(
            hp.train_shards,
            ShardVideoText(task, hp.num_frames, hp.image_size),
            collate,
            hp.batch_size,
            hp.num_workers,
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            shuffle_buffer=hp.shuffle_buffer,
            samples_per_epoch=hp.shard_samples_per_epoch,
            max_failure_fraction=hp.max_failure_fraction,
        )
        return ShardLoader(dataset, self.trainer)

    def shard_samples(self, split: Split = "train") -> tuple[Iterator[dict[str, Any]], int]:
        """The split's videos as video2dataset-layout samples (``{key}.mp4``, ``.txt`` = first caption,
        ``.json`` = ``{"video", "captions", "qa"}`` over this module's tasks), and how many there are;
        `vislang.shared.data.shards.write_shards` writes them."""
        texts: dict[Path, dict[str, list[Any]]] = {}
        for task in self.tasks:
            for item in _read(self.hparams.dataset, self.root, task, split, self.hparams.videos_dir):
                entry = texts.setdefault(item.video, {"captions": [], "qa": []})
                entry["captions"] += [c for c in item.captions if c not in entry["captions"]]
                if item.question is not None:
                    entry["qa"].append({"question": item.question, "answer": item.answer})

        def samples() -> Iterator[dict[str, Any]]:
            for number, (video, entry) in enumerate(texts.items()):
                if not video.is_file():
                    raise FileNotFoundError(
                        f"{video}: listed by the {split} split but missing; fetch it or "
                        "remove it from the annotation file"
                    )
                name = str(video.relative_to(self.root)) if video.is_relative_to(self.root) else str(video)
                yield {
                    "__key__": f"{number:09d}",
                    video.suffix.lower().lstrip("."): video.read_bytes(),
                    "txt": entry["captions"][0] if entry["captions"] else "",
                    "json": {"video": name, **entry},
                }

        return samples(), len(texts)


class ShardVideoText:
    """Decodes a shard sample (``{key}.mp4`` + ``.txt`` + ``.json``) into a training item for one task,
    as `VideoTextDataset` does for a file: TSN-sampled, CLIP-normalised frames and one random text.

    Runs inside `vislang.shared.data.shards.seeded`, so the frames and the text drawn depend on
    (seed, epoch, sample key) only.
    """

    def __init__(self, task: Task, num_frames: int, image_size: int) -> None:
        self.task, self.num_frames, self.image_size = task, num_frames, image_size

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        name = f"{sample['__url__']}#{sample['__key__']}"
        extension = next((e for e in VIDEO_EXTENSIONS if e in sample), None)
        if extension is None:
            raise SampleLoadError(name, f"no video ({', '.join(VIDEO_EXTENSIONS)}) in the sample")
        meta = json.loads(sample["json"]) if "json" in sample else {}
        item: dict[str, Any] = {"index": sample["__index__"]}
        if self.task == "qa":
            if not meta.get("qa"):
                raise SampleLoadError(name, "no 'qa' list in its .json: write shards from a config with qa")
            pair = random.choice(meta["qa"])
            item["question"], item["answer"] = pair["question"], pair["answer"]
        else:
            captions = meta.get("captions") or ([sample["txt"].decode()] if sample.get("txt") else [])
            if not captions:
                raise SampleLoadError(name, "no caption: the sample has no .txt and no 'captions' in its .json")
            item["caption"] = random.choice(captions)
        try:
            with bytes_as_file(sample[extension], f".{extension}") as path:
                item["video"] = load_clip(path, self.num_frames, self.image_size, train=True)
        except SampleLoadError as error:
            raise SampleLoadError(name, error.reason) from None
        return item
