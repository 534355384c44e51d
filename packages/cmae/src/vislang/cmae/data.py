"""Data for CMAE / CMAE-V: the datasets' real on-disk layouts, the two-view transforms, the data modules.

Layouts (see the package README for trees):

* ``imagenet_folder`` -- ``root/{train,val}/<class>/<image>``; class index = sorted ``train/`` directory names.
* ``cmae_json`` -- ``root/ImageNet_{train,val}.json``, a list of ``{"filename", "prefix", "label"}``;
  image path = ``root/prefix/filename`` (CMAE issue #11).
* ``kinetics400`` -- ``root/{train,val,test}.csv``, lines ``<video path> <label>`` (VideoMAE; space separated,
  no header); a relative path is resolved against ``root``.
* ``ssv2`` -- ``root/something-something-v2-labels.json``, ``something-something-v2-{train,validation}.json``
  and ``20bn-something-something-v2/<id>.webm`` (or ``.mp4``, VideoMAE's re-encoded copy); class =
  ``labels[template without brackets]``.

Two-view pre-training transforms:

* ``PixelShiftViews`` (CMAE Sec. 3.2 "pixel shift", official ``ShiftPixel``): one random-resized base crop of
  side ``size + max_shift + 1`` (256 for 224 / 31), online view = its top-left ``size`` window, target view =
  the window shifted by U{0..max_shift} px in each axis + colour jitter, grayscale and blur.
* ``TemporalShiftViews`` (CMAE-V): the same spatial crop for both clips, the target clip starting
  delta ~ U{0..max_shift} frames later (``vislang.shared.data.video.temporal_shift_indices``), colour
  augmentation on the target clip only.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, TypedDict, runtime_checkable

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from timm.data import create_transform
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from vislang.shared.data.images import load_image
from vislang.shared.data.loaders import eval_loader, train_loader
from vislang.shared.data.robust import RobustDataset, SampleLoadError, collate_with_failures
from vislang.shared.data.shards import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ShardDataset,
    ShardLoader,
    bytes_as_file,
)
from vislang.shared.data.video import VideoReader, dense_indices, temporal_shift_indices, tsn_indices

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CMAEClassificationDataModule",
    "CMAEPretrainDataModule",
    "ClassificationBatch",
    "ClassificationDataset",
    "InputData",
    "Item",
    "PixelShiftViews",
    "PredictionData",
    "PretrainBatch",
    "PretrainDataset",
    "ProbeData",
    "TemporalShiftViews",
    "read_cmae_json",
    "read_imagenet_folder",
    "read_items",
    "read_kinetics400",
    "read_ssv2",
]

DatasetName = Literal["imagenet_folder", "cmae_json", "kinetics400", "ssv2"]
VIDEO_DATASETS = ("kinetics400", "ssv2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}

LAYOUTS = {
    "imagenet_folder": "root/train/<class>/<image>, root/val/<class>/<image>",
    "cmae_json": 'root/ImageNet_{train,val}.json = [{"filename", "prefix", "label"}], images at root/<prefix>/<filename>',
    "kinetics400": "root/{train,val,test}.csv with '<video path> <label>' lines",
    "ssv2": "root/something-something-v2-{labels,train,validation}.json and root/20bn-something-something-v2/<id>.webm",
}


@dataclass(frozen=True)
class Item:
    """One sample: a file and its class index (-1 when unknown, e.g. SSv2 test)."""

    path: Path
    label: int


def _require(path: Path, dataset: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the {dataset} layout is {LAYOUTS[dataset]}")


# ---- readers ----------------------------------------------------------------------------------------


def read_imagenet_folder(root: Path, split: str) -> tuple[list[Item], list[str]]:
    """Images under ``root/split/<class>/``; classes are the sorted directories of ``root/train``
    (so every split shares the training split's class indices)."""
    class_root = root / "train"
    _require(class_root, "imagenet_folder")
    _require(root / split, "imagenet_folder")
    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{class_root} has no class directories: the layout is {LAYOUTS['imagenet_folder']}")
    items = []
    for label, name in enumerate(classes):
        folder = root / split / name
        if folder.is_dir():
            items += [Item(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return items, classes


def read_cmae_json(root: Path, split: str) -> tuple[list[Item], list[str]]:
    """CMAE's ``ImageNet_{split}.json`` list; class names are the label numbers."""
    path = root / f"ImageNet_{split}.json"
    _require(path, "cmae_json")
    items = []
    for k, entry in enumerate(json.loads(path.read_text())):
        try:
            items.append(Item(root / entry["prefix"] / entry["filename"], int(entry.get("label", -1))))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: entry {k} lacks 'prefix'/'filename' or has a bad 'label' ({err})") from None
    num_classes = max((i.label for i in items), default=-1) + 1
    return items, [str(k) for k in range(num_classes)]


def read_kinetics400(root: Path, split: str) -> tuple[list[Item], list[str]]:
    """VideoMAE's ``{split}.csv``: ``<path> <label>`` per line."""
    path = root / f"{split}.csv"
    _require(path, "kinetics400")
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(" ", 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected '<video path> <label>', got {line.strip()!r}")
        video = Path(parts[0])
        items.append(Item(video if video.is_absolute() else root / video, int(parts[1])))
    num_classes = max((i.label for i in items), default=-1) + 1
    return items, [str(k) for k in range(num_classes)]


def read_ssv2(root: Path, split: str) -> tuple[list[Item], list[str]]:
    """Something-Something v2 JSONs; the class of a video is ``labels[template without '[' and ']']``."""
    labels_path = root / "something-something-v2-labels.json"
    name = {"train": "train", "val": "validation", "test": "test"}[split]
    split_path = root / f"something-something-v2-{name}.json"
    _require(labels_path, "ssv2")
    _require(split_path, "ssv2")
    labels = {template: int(index) for template, index in json.loads(labels_path.read_text()).items()}
    video_dir = root / "20bn-something-something-v2"
    items = []
    for entry in json.loads(split_path.read_text()):
        label = -1
        if "template" in entry:
            template = entry["template"].replace("[", "").replace("]", "")
            if template not in labels:
                raise ValueError(f"{split_path}: video {entry['id']}: template {template!r} not in {labels_path.name}")
            label = labels[template]
        video = video_dir / f"{entry['id']}.webm"
        if not video.exists() and (video_dir / f"{entry['id']}.mp4").exists():
            video = video_dir / f"{entry['id']}.mp4"
        items.append(Item(video, label))
    classes = [t for t, _ in sorted(labels.items(), key=lambda kv: kv[1])]
    return items, classes


READERS: dict[str, Callable[[Path, str], tuple[list[Item], list[str]]]] = {
    "imagenet_folder": read_imagenet_folder,
    "cmae_json": read_cmae_json,
    "kinetics400": read_kinetics400,
    "ssv2": read_ssv2,
}


def read_items(dataset: str, root: str | Path, split: str) -> tuple[list[Item], list[str]]:
    """``(items, class names)`` of one split of a dataset layout."""
    if dataset not in READERS:
        raise ValueError(f"dataset must be one of {sorted(READERS)}, got {dataset!r}")
    return READERS[dataset](Path(root), split)


# ---- two-view transforms --------------------------------------------------------------------------


def _blur_kernel(size: int) -> int:
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def _normalize() -> v2.Transform:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _target_colour(size: int) -> v2.Transform:
    """CMAE's target-view augmentation: colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur (p 0.5)."""
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=0.5),
        ]
    )


class PixelShiftViews:
    """CMAE's pixel shift: ``(online, target)`` views of one base crop, offset by 0..``max_shift`` pixels.

    Args:
        size: view side (224; the tiny preset's 32).
        max_shift: largest shift in pixels (31 at 224 ~ 2 patches; scale it with the image).
        scale: RandomResizedCrop area range of the base crop (0.2, 1.0).
        colour: apply the colour augmentation to the target view (the official pipeline does).
    """

    def __init__(
        self, size: int, max_shift: int = 31, scale: tuple[float, float] = (0.2, 1.0), colour: bool = True
    ) -> None:
        self.size, self.max_shift = size, max_shift
        self.base = v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(
                    size + max_shift + 1, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True
                ),
                v2.RandomHorizontalFlip(),
            ]
        )
        self.colour = _target_colour(size) if colour else v2.Identity()
        self.normalize = _normalize()

    def __call__(self, image: Image.Image) -> tuple[Tensor, Tensor]:
        base = self.base(image)
        online = base[:, : self.size, : self.size]  # ShiftPixel(pixel=0): the fixed top-left window
        dh, dw = random.randint(0, self.max_shift), random.randint(0, self.max_shift)
        target = base[:, dh : dh + self.size, dw : dw + self.size]
        return self.normalize(online), self.normalize(self.colour(target))


class TemporalShiftViews:
    """CMAE-V's temporal shift on decoded frames: same crop for both clips, colour on the target clip.

    Args:
        size: frame side after the crop.
        scale: RandomResizedCrop area range (VideoMAE's multi-scale crop keeps >= ~0.44 of the area).
        flip: random horizontal flip (off for SSv2, whose classes name directions).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.4, 1.0), flip: bool = True) -> None:
        self.size = size
        crop = v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        self.spatial = v2.Compose([crop, v2.RandomHorizontalFlip() if flip else v2.Identity()])
        self.colour = _target_colour(size)
        self.normalize = _normalize()

    def __call__(self, online: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(T, H, W, 3)`` uint8 clips -> ``(3, T, S, S)`` float views (one crop drawn for both)."""
        frames = torch.cat([online, target]).permute(0, 3, 1, 2)  # (2T, 3, H, W): one transform call
        frames = self.spatial(frames)
        t = online.shape[0]
        a, b = self.normalize(frames[:t]), self.normalize(self.colour(frames[t:]))
        return a.permute(1, 0, 2, 3), b.permute(1, 0, 2, 3)


# ---- datasets -------------------------------------------------------------------------------------


class PretrainDataset(Dataset):
    """Two views per sample: ``{"online", "target", "label", "index"}`` (images or clips)."""

    def __init__(
        self,
        items: Sequence[Item],
        transform: PixelShiftViews | TemporalShiftViews,
        num_frames: int = 1,
        sampling_rate: int = 4,
        max_temporal_shift: int = 4,
        train: bool = True,
    ) -> None:
        self.items, self.transform = list(items), transform
        self.num_frames, self.sampling_rate, self.max_temporal_shift = num_frames, sampling_rate, max_temporal_shift
        self.train = train

    def __len__(self) -> int:
        return len(self.items)

    def sample_file(self, index: int) -> str:
        """The image or video an item reads (``RobustDataset`` counts and skips per file)."""
        return str(self.items[index].path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        online, target = self.views(item.path)
        return {"online": online, "target": target, "label": item.label, "index": index}

    def views(self, path: Path | BinaryIO, name: str | None = None) -> tuple[Tensor, Tensor]:
        """The (online, target) views of one image or video file (an image may be an open file, ``name`` names
        it in a load error)."""
        if isinstance(self.transform, TemporalShiftViews):
            reader = VideoReader(path)
            clips = temporal_shift_indices(
                len(reader), self.num_frames, self.sampling_rate, self.max_temporal_shift, train=self.train
            )
            frames = torch.from_numpy(reader.get_frames([*clips.online, *clips.target]))
            return self.transform(frames[: self.num_frames], frames[self.num_frames :])
        return self.transform(load_image(path, name))


class ClassificationDataset(Dataset):
    """``{"input", "label", "index"}``; videos in evaluation carry ``num_clips * num_crops`` views
    ``(V, 3, T, S, S)`` (VideoMAE's multi-view testing)."""

    def __init__(
        self,
        items: Sequence[Item],
        transform: Callable[[Any], Tensor],
        video: bool = False,
        num_frames: int = 16,
        sampling_rate: int = 4,
        sampling: Literal["dense", "tsn"] = "dense",
        train: bool = True,
        num_clips: int = 1,
        num_crops: int = 1,
        size: int = 224,
    ) -> None:
        self.items, self.transform, self.video = list(items), transform, video
        self.num_frames, self.sampling_rate, self.sampling = num_frames, sampling_rate, sampling
        self.train, self.num_clips, self.num_crops, self.size = train, num_clips, num_crops, size

    def __len__(self) -> int:
        return len(self.items)

    def sample_file(self, index: int) -> str:
        """The image or video an item reads (``RobustDataset`` counts and skips per file)."""
        return str(self.items[index].path)

    def _clip_indices(self, length: int) -> list[Any]:
        if self.sampling == "tsn":
            return [tsn_indices(length, self.num_frames, train=self.train)] * (1 if self.train else self.num_clips)
        if self.train:
            return [dense_indices(length, self.num_frames, self.sampling_rate, train=True)]
        span = (self.num_frames - 1) * self.sampling_rate + 1
        room = max(length - span, 0)
        starts = [
            round(room * (k + 0.5) / self.num_clips) if self.num_clips > 1 else room // 2 for k in range(self.num_clips)
        ]
        return [[min(s + self.sampling_rate * j, length - 1) for j in range(self.num_frames)] for s in starts]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if not self.video:
            return {"input": self.transform(load_image(item.path)), "label": item.label, "index": index}
        reader = VideoReader(item.path, size=self.size)
        views = []
        for clip in self._clip_indices(len(reader)):
            frames = torch.from_numpy(reader.get_frames(clip)).permute(0, 3, 1, 2)  # (T, 3, H, W)
            if self.train:
                views.append(self.transform(frames).permute(1, 0, 2, 3))
                continue
            h, w = frames.shape[-2:]
            long_side = max(h, w) - self.size
            for k in range(self.num_crops):  # 3 crops along the long side (left/centre/right)
                offset = long_side // 2 if self.num_crops == 1 else round(long_side * k / (self.num_crops - 1))
                crop = (
                    frames[..., offset : offset + self.size, :] if h > w else frames[..., offset : offset + self.size]
                )
                crop = crop[..., : self.size, : self.size]
                views.append(self.transform(crop).permute(1, 0, 2, 3))
        return {"input": views[0] if self.train else torch.stack(views), "label": item.label, "index": index}


# ---- the module <-> data module contract -----------------------------------------------------------


class PretrainBatch(TypedDict):
    """A pre-training batch, what ``CMAEPretrainModule`` reads (``PretrainDataset`` / ``ShardViews`` collated)."""

    online: Tensor  # (B, 3, S, S) images or (B, 3, T, S, S) clips: the view the online branch masks
    target: Tensor  # the same shape: the shifted, colour-augmented view of the momentum branch
    label: Tensor  # (B,) class index, -1 when unknown (read by the probes only)
    index: Tensor  # (B,) position in the split


class ClassificationBatch(TypedDict):
    """A fine-tuning / evaluation batch, what ``CMAEClassificationModule`` reads (``ClassificationDataset``)."""

    input: Tensor  # (B, 3, S, S), (B, 3, T, S, S), or (B, V, 3, T, S, S) for multi-view video evaluation
    label: Tensor  # (B,) class index
    index: Tensor  # (B,) position in the split


@runtime_checkable
class InputData(Protocol):
    """What a data module tells the modules about its inputs (checked against the model's preset in ``setup``)."""

    image_size: int
    num_frames: int

    @property
    def is_video(self) -> bool: ...


@runtime_checkable
class PredictionData(Protocol):
    """What ``CMAEClassificationModule`` reads from its data module to write predictions."""

    classes: list[str]

    def predict_items(self) -> list[Item]: ...


@runtime_checkable
class ProbeData(Protocol):
    """What the evaluation callbacks (``vislang.cmae.evaluation``) read from a pre-training data module."""

    classes: list[str]

    def probe_dataloaders(self) -> tuple[DataLoader, DataLoader]: ...

    def probe_items(self, split: str) -> list[Item]: ...


# ---- data modules ---------------------------------------------------------------------------------


def _synthesise(
    dataset: str,
    root: Path,
    count: int,
    size: int,
    num_frames: int,
    seed: int,
    max_objects: int = 4,
    style: str = "scenes",
) -> None:
    from vislang.shared.data.synthetic import SyntheticWorld
    from vislang.shared.data.synthetic import classification_writers as cw

    if dataset in VIDEO_DATASETS:
        world = SyntheticWorld(seed=seed, image_size=max(size, 24), num_frames=num_frames)
        {"kinetics400": cw.write_kinetics400, "ssv2": cw.write_ssv2}[dataset](world, root, num_videos=count)
        return
    marker = root / ".vislang_synthetic_images"
    wanted = f"{dataset} seed={seed} size={size} count={count} max_objects={max_objects}"
    wanted += f" style={style}" if style != "scenes" else ""
    if marker.exists() and marker.read_text() == wanted:
        return
    if marker.exists():
        raise FileExistsError(
            f"{root} holds synthetic images written with other settings ({marker.read_text()}); use another root"
        )
    world = SyntheticWorld(seed=seed, image_size=max(size, 24), num_images=count, max_objects=max_objects)
    writer = cw.write_cmae_json if dataset == "cmae_json" else cw.write_imagenet_folder
    writer(world, root, num_train=count, num_val=max(count // 5, 1), style=style)
    marker.write_text(wanted)


@dataclass(eq=False, kw_only=True)
class _CMAEDataModule(LightningDataModule):
    """What both data modules take and do: read a split of a dataset layout, write synthetic data, make loaders.

    The data modules are dataclasses so that every argument is declared once: this class's fields are the
    arguments both take, each subclass adds its own fields (LightningCLI reads the generated ``__init__``).

    Args:
        dataset: layout of ``root``: ``imagenet_folder``, ``cmae_json``, ``kinetics400`` or ``ssv2``.
        root: dataset directory (layouts in the package README).
        image_size: side of the model's input (224; tiny presets 32).
        num_frames: frames per clip (VideoMAE: 16); images ignore it.
        sampling_rate: stride between a clip's frames (VideoMAE K400: 4; SSv2: 2).
        flip: horizontal flips for videos (off for SSv2, whose classes name directions).
        batch_size: training samples per device.
        eval_batch_size: evaluation samples per device.
        num_workers: loader worker processes per device.
        synthetic_samples: write this many synthetic-world samples into ``root`` in the ``dataset`` layout
            before reading (0 = real data).
        synthetic_max_objects: shapes per synthetic image (1..this); the class is the largest one's shape.
        synthetic_style: ``scenes`` or ``object_centric`` (one large shape on a flat background, see
            ``vislang.shared.data.synthetic.classification_writers``).
        seed: synthetic world seed.
        max_failure_fraction: stop when more than this fraction of files fails to load.
    """

    dataset: DatasetName = "imagenet_folder"
    root: str = "data/imagenet"
    image_size: int = 224
    num_frames: int = 16
    sampling_rate: int = 4
    flip: bool = True
    batch_size: int = 128
    eval_batch_size: int = 128
    num_workers: int = 8
    synthetic_samples: int = 0
    synthetic_max_objects: int = 4
    synthetic_style: Literal["scenes", "object_centric"] = "scenes"
    seed: int = 0
    max_failure_fraction: float = 0.01

    def __post_init__(self) -> None:
        super().__init__()  # LightningDataModule's own state: a dataclass __init__ does not call it
        self.save_hyperparameters()  # the fields, as checkpoints and loggers record them
        self._datasets: dict[str, Dataset] = {}
        self.classes: list[str] = []

    @property
    def is_video(self) -> bool:
        return self.dataset in VIDEO_DATASETS

    def prepare_data(self) -> None:
        if self.synthetic_samples:
            _synthesise(
                self.dataset,
                Path(self.root),
                self.synthetic_samples,
                self.image_size,
                max(self.num_frames * 2, 8),
                self.seed,
                self.synthetic_max_objects,
                self.synthetic_style,
            )

    def _items(self, split: str) -> list[Item]:
        items, classes = read_items(self.dataset, self.root, split)
        if split == "train" or not self.classes:
            self.classes = classes
        if not items:
            raise FileNotFoundError(f"{self.root}: the {split} split of {self.dataset} is empty")
        return items


@dataclass(eq=False, kw_only=True)
class CMAEPretrainDataModule(_CMAEDataModule):
    """Two-view pre-training data: pixel shift for images, temporal shift for videos.

    Also serves labelled, un-augmented loaders (``probe_dataloaders``) for the evaluation callbacks that run
    after pre-training (``vislang.cmae.evaluation``).

    Its own arguments follow; those every CMAE data module takes are documented on ``_CMAEDataModule``.

    Args:
        eval_batch_size: validation and probe samples per device (256).
        max_shift: pixel shift range 0..max_shift (31 at 224).
        crop_scale: RandomResizedCrop area range of the base crop.
        max_temporal_shift: CMAE-V's Delta_max in frames (not given by the report; a hyper-parameter).
        train_shards: pre-train from WebDataset shards (img2dataset/video2dataset layout: ``{key}.jpg`` or
            ``.mp4``, with the class in ``.cls`` or the ``.json``'s ``label``) instead of ``root``'s training
            split: a folder of ``00000.tar`` ..., a brace pattern, ``http(s)://`` or ``pipe:`` (see
            ``vislang.shared.data.shards``); validation and the probe still read ``root``.
        shard_samples_per_epoch: samples per rank per epoch from the shards; None = the most the shards
            allow without repeating a sample.
        shuffle_buffer: samples in each loader worker's shuffle buffer when reading shards.
    """

    eval_batch_size: int = 256
    max_shift: int = 31
    crop_scale: tuple[float, float] = (0.2, 1.0)
    max_temporal_shift: int = 4
    train_shards: str | None = None
    shard_samples_per_epoch: int | None = None
    shuffle_buffer: int = 1000

    def _views(self, items: Sequence[Item], train: bool) -> PretrainDataset:
        transform: PixelShiftViews | TemporalShiftViews = (
            TemporalShiftViews(self.image_size, flip=self.flip)
            if self.is_video
            else PixelShiftViews(self.image_size, self.max_shift, tuple(self.crop_scale))
        )
        return PretrainDataset(
            items, transform, self.num_frames, self.sampling_rate, self.max_temporal_shift, train=train
        )

    def _pretrain(self, split: str) -> Dataset:
        if split not in self._datasets:
            dataset = self._views(self._items(split), train=split == "train")
            self._datasets[split] = RobustDataset(dataset, self.max_failure_fraction)
        return self._datasets[split]

    def _probe(self, split: str) -> RobustDataset:
        key = f"probe_{split}"
        if key not in self._datasets:
            transform = _eval_transform(self.image_size, 1.0, self.is_video)
            dataset = ClassificationDataset(
                self._items(split),
                transform,
                self.is_video,
                self.num_frames,
                self.sampling_rate,
                train=False,
                size=self.image_size,
            )
            self._datasets[key] = RobustDataset(dataset, self.max_failure_fraction)
        return self._datasets[key]

    def setup(self, stage: str) -> None:
        for split in ("train", "val") if stage == "fit" else ("val",):
            if not (split == "train" and self.train_shards):
                self._pretrain(split)

    def train_dataloader(self) -> DataLoader | ShardLoader:
        if self.train_shards:
            return self._shard_loader()
        return train_loader(self._pretrain("train"), self.batch_size, self.trainer, num_workers=self.num_workers)

    def _shard_loader(self) -> ShardLoader:
        dataset = ShardDataset(
            self.train_shards,
            ShardViews(self._views([], train=True)),
            default_collate,
            self.batch_size,
            self.num_workers,
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            shuffle_buffer=self.shuffle_buffer,
            samples_per_epoch=self.shard_samples_per_epoch,
            max_failure_fraction=self.max_failure_fraction,
        )
        return ShardLoader(dataset, self.trainer)

    def shard_samples(self, split: str = "train") -> tuple[Iterator[dict[str, Any]], int]:
        """The split's files as img2dataset/video2dataset-layout samples (``{key}.jpg``/``.mp4`` as stored,
        ``.cls`` = class index, ``.txt`` = class name, ``.json`` = ``{"path", "label", "class"}``), and how
        many there are; `vislang.shared.data.shards.write_shards` writes them."""
        items = self._items(split)
        root = Path(self.root)

        def samples() -> Iterator[dict[str, Any]]:
            for number, item in enumerate(items):
                if not item.path.is_file():
                    raise FileNotFoundError(f"{item.path}: listed by the {split} split but missing")
                name = str(item.path.relative_to(root)) if item.path.is_relative_to(root) else str(item.path)
                label_name = self.classes[item.label] if 0 <= item.label < len(self.classes) else ""
                yield {
                    "__key__": f"{number:09d}",
                    item.path.suffix.lower().lstrip("."): item.path.read_bytes(),
                    "cls": item.label,
                    "txt": label_name,
                    "json": {"path": name, "label": item.label, "class": label_name},
                }

        return samples(), len(items)

    def val_dataloader(self) -> DataLoader:
        # persistent workers: validation runs every few epochs, and re-forking its workers each time is slow
        return eval_loader(
            self._pretrain("val"), self.eval_batch_size, num_workers=self.num_workers, persistent_workers=True
        )

    def probe_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """Labelled train/val loaders with the evaluation transform (one view, no augmentation).

        Plain loaders over every item, not `eval_loader`'s: the probes run on rank zero alone after ``fit``,
        and `eval_loader` would give it only its share of the items under DDP.
        """
        return tuple(
            DataLoader(
                self._probe(s),
                batch_size=self.eval_batch_size,
                num_workers=self.num_workers,
                collate_fn=collate_with_failures(),
            )
            for s in ("train", "val")
        )

    def probe_items(self, split: str) -> list[Item]:
        """The items of a probe split, in ``probe_dataloaders``' order."""
        return self._probe(split).dataset.items


def _eval_transform(size: int, crop_pct: float, video: bool) -> Callable[[Any], Tensor]:
    if video:  # frames come decoded at `size` short side; crops are taken by the dataset
        return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), _normalize()])
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(int(round(size / crop_pct)), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
            _normalize(),
        ]
    )


@dataclass(eq=False, kw_only=True)
class CMAEClassificationDataModule(_CMAEDataModule):
    """Fine-tuning / linear-probe data (MAE's and VideoMAE's recipes).

    Training images: timm's ``create_transform`` (RandomResizedCrop bicubic, flip, RandAugment
    ``rand-m9-mstd0.5-inc1``, random erasing 0.25); evaluation: resize to ``size / crop_pct``, centre crop.
    Videos: dense (K400) or TSN (SSv2) sampling, RandomResizedCrop + flip + random erasing in training, and
    ``num_clips x num_crops`` views in evaluation (K400 5 x 3, SSv2 2 x 3).

    Its own arguments follow; those every CMAE data module takes are documented on ``_CMAEDataModule``.

    Args:
        crop_pct: evaluation centre-crop fraction (0.875: 256 -> 224).
        auto_augment: timm RandAugment spec, or None.
        re_prob: random-erasing probability.
        scale: RandomResizedCrop area range (0.08, 1.0).
        sampling: clip sampling (``dense`` K400, ``tsn`` SSv2).
        num_clips: evaluation clips per video, evenly spaced in time.
        num_crops: evaluation crops per clip, along the frame's long side.
    """

    crop_pct: float = 0.875
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    scale: tuple[float, float] = (0.08, 1.0)
    sampling: Literal["dense", "tsn"] = "dense"
    num_clips: int = 5
    num_crops: int = 3

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _transform(self, train: bool) -> Callable[[Any], Tensor]:
        if not train:
            return _eval_transform(self.image_size, 1.0 if self.is_video else self.crop_pct, self.is_video)
        if self.is_video:
            return v2.Compose(
                [
                    v2.RandomResizedCrop(self.image_size, scale=tuple(self.scale), antialias=True),
                    v2.RandomHorizontalFlip() if self.flip else v2.Identity(),
                    _normalize(),
                    v2.RandomErasing(self.re_prob, value=0) if self.re_prob > 0 else v2.Identity(),
                ]
            )
        return create_transform(
            self.image_size,
            is_training=True,
            scale=tuple(self.scale),
            auto_augment=self.auto_augment,
            re_prob=self.re_prob,
            re_mode="pixel",
            interpolation="bicubic",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    def _dataset(self, split: str) -> RobustDataset:
        if split not in self._datasets:
            train = split == "train"
            dataset = ClassificationDataset(
                self._items(split),
                self._transform(train),
                self.is_video,
                self.num_frames,
                self.sampling_rate,
                self.sampling,
                train,
                self.num_clips,
                self.num_crops,
                self.image_size,
            )
            self._datasets[split] = RobustDataset(dataset, self.max_failure_fraction)
        return self._datasets[split]

    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("val",), "predict": ("val",)}[stage]
        for split in splits:
            self._dataset(split)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self._dataset("train"), self.batch_size, self.trainer, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(
            self._dataset("val"), self.eval_batch_size, num_workers=self.num_workers, persistent_workers=True
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_items(self) -> list[Item]:
        """The items `lightning predict` runs on (the validation split), in loader order."""
        return self._dataset("val").items


class ShardViews:
    """Decodes a shard sample (``{key}.jpg`` or ``.mp4``, class in ``.cls`` or the ``.json``'s ``label``) into
    ``{"online", "target", "label", "index"}`` with `PretrainDataset`'s views (run inside
    ``vislang.shared.data.shards.seeded``: the views depend on (seed, epoch, sample key) only)."""

    def __init__(self, dataset: PretrainDataset) -> None:
        self.dataset = dataset
        self.video = isinstance(dataset.transform, TemporalShiftViews)
        self.extensions = VIDEO_EXTENSIONS if self.video else IMAGE_EXTENSIONS

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        name = f"{sample['__url__']}#{sample['__key__']}"
        extension = next((e for e in self.extensions if e in sample), None)
        if extension is None:
            raise SampleLoadError(name, f"no {'/'.join(self.extensions)} file in the sample")
        if "cls" in sample:
            label = int(sample["cls"])
        else:
            label = int(json.loads(sample["json"]).get("label", -1)) if "json" in sample else -1
        try:
            if self.video:  # decord and PyAV open videos by name
                with bytes_as_file(sample[extension], f".{extension}") as path:
                    online, target = self.dataset.views(path)
            else:
                online, target = self.dataset.views(io.BytesIO(sample[extension]), name)
        except SampleLoadError as error:
            raise SampleLoadError(name, error.reason) from None
        return {"online": online, "target": target, "label": label, "index": sample["__index__"]}
