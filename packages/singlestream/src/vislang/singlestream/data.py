"""Datasets and the data module of the single-stream papers (SOHO, Pixel-BERT) on the released formats.

Everything reads the real layouts through ``vislang.shared.data.vl`` (the synthetic world writes the same
files), and images through PIL; unreadable images are skipped and counted (``vislang.shared.data.robust``).
Samples carry raw strings: the LightningModule owns the tokenizer.

Layout under ``root`` (each part needed only by the tasks that use it)::

    coco/dataset_coco.json, coco/{train2014,val2014}/...        Karpathy COCO (pre-training, retrieval)
    vg/region_descriptions.json, vg/VG_100K/{image_id}.jpg      Visual Genome regions (pre-training)
    vqa/v2_OpenEnded_mscoco_{sub}_questions.json,
    vqa/v2_mscoco_{sub}_annotations.json, vqa/{sub}/COCO_{sub}_{id:012d}.jpg       VQA v2
    flickr30k/dataset_flickr30k.json, flickr30k/flickr30k-images/                 Flickr30k retrieval
    nlvr2/{train,dev,test1}.json, nlvr2/images/{train,dev,test1}/                NLVR2
    snli_ve/snli_ve_{train,dev,test}.jsonl, snli_ve/flickr30k_images/            SNLI-VE
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from vislang.shared.data.images import load_image
from vislang.shared.data.loaders import eval_loader, train_loader
from vislang.shared.data.vl import (
    SNLI_VE_LABELS,
    CaptionedImage,
    EntailmentExample,
    NLVR2Example,
    VQAExample,
    read_karpathy,
    read_nlvr2,
    read_snli_ve,
    read_vg_regions,
    read_vqa_v2,
    vqa_v2_paths,
)
from vislang.shared.metrics import build_answer_vocab, vqa_soft_targets

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "CaptionPairDataset",
    "EntailmentDataset",
    "HeldOut",
    "ImageTransform",
    "NLVR2Dataset",
    "Phase",
    "RetrievalImageDataset",
    "RetrievalRankDataset",
    "SingleStreamData",
    "SingleStreamDataModule",
    "Task",
    "VQADataset",
    "collate",
    "pad_images",
]

IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)
"""SOHO's (mmdet's) RGB normalisation, on 0-255 pixel values."""

Task = Literal["vqa", "retrieval", "nlvr2", "snli_ve"]
"""A downstream task; every batch names its own (``batch["task"]``)."""
TASKS: tuple[Task, ...] = get_args(Task)
Phase = Literal["pretrain", "vqa", "retrieval", "nlvr2", "snli_ve"]
"""What an epoch trains: pre-training (MLM + ITM [+ the paper's extras]) or one task."""
PretrainSource = Literal["coco", "vg", "flickr30k"]


class ImageTransform:
    """mmdet-style ``Resize(keep_ratio)``: short side to ``size`` (one of ``sizes`` drawn per image when
    given, SOHO's multi-scale VQA training), long side at most ``max_size``; then normalise.

    Padding to a multiple of 32 happens in :func:`collate`, which also returns the pixel mask.
    """

    def __init__(self, size: int, max_size: int, sizes: Sequence[int] | None = None) -> None:
        self.size, self.max_size, self.sizes = size, max_size, list(sizes) if sizes else None

    def __call__(self, image: Image.Image) -> Tensor:
        short = random.choice(self.sizes) if self.sizes else self.size
        w, h = image.size
        scale = min(short / min(w, h), self.max_size / max(w, h))
        new = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = TF.pil_to_tensor(image).float()
        if new != (h, w):
            x = TF.resize(x, list(new), antialias=True)
        return TF.normalize(x, list(IMAGE_MEAN), list(IMAGE_STD))


def pad_images(images: list[Tensor], divisor: int = 32) -> tuple[Tensor, Tensor]:
    """Pad to a common size divisible by ``divisor`` (bottom/right); returns (images, pixel mask)."""
    h = math.ceil(max(x.shape[1] for x in images) / divisor) * divisor
    w = math.ceil(max(x.shape[2] for x in images) / divisor) * divisor
    out = images[0].new_zeros(len(images), 3, h, w)
    mask = torch.zeros(len(images), h, w, dtype=torch.bool)
    for i, x in enumerate(images):
        out[i, :, : x.shape[1], : x.shape[2]] = x
        mask[i, : x.shape[1], : x.shape[2]] = True
    return out, mask


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Images (keys starting with ``image``) padded with their pixel masks; numbers stacked; rest listed."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key.startswith("image") and isinstance(values[0], Tensor):
            batch[key], batch[key.replace("image", "pixel_mask", 1)] = pad_images(values)
        elif isinstance(values[0], Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (bool, int, float)) and not isinstance(values[0], str):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


# --------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------


class CaptionPairDataset(Dataset):
    """Image-caption pairs for MLM + ITM pre-training (one item per caption).

    ITM negatives (SOHO, Pixel-BERT): with probability ``negative_prob`` the caption is replaced by a
    caption of a uniformly drawn entry with a *different* image id (no hard negatives); ``matched`` says
    which. Each item also carries ``task = "pretrain"``.
    """

    def __init__(self, images: Sequence[CaptionedImage], transform: ImageTransform, negative_prob: float = 0.5) -> None:
        if not images:
            raise ValueError("CaptionPairDataset got no images")
        if len({im.image_id for im in images}) < 2 and negative_prob > 0:
            raise ValueError("ITM negatives need at least two distinct image ids")
        self.images, self.transform, self.negative_prob = list(images), transform, negative_prob
        self.pairs = [(i, c) for i, im in enumerate(self.images) for c in range(len(im.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def sample_file(self, index: int) -> str:
        """The image an item reads: ``RobustDataset`` counts a bad image once, not once per caption."""
        return str(self.images[self.pairs[index][0]].image_path)

    def negative_caption(self, image_id: int) -> str:
        """A caption of a random entry whose image id differs from ``image_id``."""
        while True:
            other = self.images[random.randrange(len(self.images))]
            if other.image_id != image_id:
                return other.captions[random.randrange(len(other.captions))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, c = self.pairs[index]
        record = self.images[i]
        matched = random.random() >= self.negative_prob
        text = record.captions[c] if matched else self.negative_caption(record.image_id)
        image = self.transform(load_image(record.image_path))
        return {"task": "pretrain", "image": image, "text": text, "matched": matched, "index": index}


class VQADataset(Dataset):
    """VQA v2 questions with soft-score targets over ``answers`` (the vocabulary, label = position)."""

    def __init__(self, examples: Sequence[VQAExample], transform: ImageTransform, answers: Sequence[str]) -> None:
        self.examples, self.transform = list(examples), transform
        self.answers = list(answers)
        self.answer_to_label = {a: i for i, a in enumerate(self.answers)}

    def __len__(self) -> int:
        return len(self.examples)

    def sample_file(self, index: int) -> str:
        """The image an item reads (several questions share one image: a bad image is counted once)."""
        return str(self.examples[index].image_path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        target = torch.zeros(len(self.answers))
        labels, scores = vqa_soft_targets(ex.answers, self.answer_to_label)
        target[labels] = torch.tensor(scores)
        return {
            "task": "vqa",
            "image": self.transform(load_image(ex.image_path)),
            "text": ex.question,
            "target": target,
            "answers": list(ex.answers),
            "question_id": ex.question_id,
            "answer_type": ex.answer_type or "",
            "question_type": ex.question_type or "",
            "index": index,
        }


class RetrievalImageDataset(Dataset):
    """The images of a retrieval split; the texts (every caption, with its image's position) are attributes.

    The cross-encoder scores every (image, text) pair, so evaluation iterates images and the module
    pairs each with ``texts``; ``text_image`` gives each text's correct image (its position here).
    """

    def __init__(self, images: Sequence[CaptionedImage], transform: ImageTransform) -> None:
        self.images, self.transform = list(images), transform
        self.texts = [c for im in self.images for c in im.captions]
        self.text_image = [i for i, im in enumerate(self.images) for _ in im.captions]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"task": "retrieval", "image": self.transform(load_image(self.images[index].image_path)), "index": index}


class RetrievalRankDataset(CaptionPairDataset):
    """Retrieval fine-tuning: an image with one of its captions first, then ``num_negatives`` captions of
    other images (``texts``); the module trains the ITM score with softmax cross-entropy over these
    candidates (Pixel-BERT Sec. 2.5 samples negatives per positive; ViLT's ``irtr`` uses 15).

    One item per caption, as in pre-training; negatives are drawn afresh every time (no hard negatives).
    """

    def __init__(self, images: Sequence[CaptionedImage], transform: ImageTransform, num_negatives: int = 15) -> None:
        if num_negatives < 1:
            raise ValueError(f"retrieval fine-tuning needs at least one negative, got num_negatives={num_negatives}")
        super().__init__(images, transform, negative_prob=1.0)
        self.num_negatives = num_negatives

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, c = self.pairs[index]
        record = self.images[i]
        texts = [record.captions[c]] + [self.negative_caption(record.image_id) for _ in range(self.num_negatives)]
        return {
            "task": "retrieval",
            "image": self.transform(load_image(record.image_path)),
            "texts": texts,
            "index": index,
        }


class NLVR2Dataset(Dataset):
    """NLVR2: a sentence with its left and right images; label True/False."""

    def __init__(self, examples: Sequence[NLVR2Example], transform: ImageTransform) -> None:
        self.examples, self.transform = list(examples), transform

    def __len__(self) -> int:
        return len(self.examples)

    def sample_file(self, index: int) -> tuple[str, str]:
        """The two images an item reads: `RobustDataset` counts a bad one once, whichever side it is on."""
        ex = self.examples[index]
        return str(ex.left_image), str(ex.right_image)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        return {
            "task": "nlvr2",
            "image_left": self.transform(load_image(ex.left_image)),
            "image_right": self.transform(load_image(ex.right_image)),
            "text": ex.sentence,
            "label": int(ex.label),
            "identifier": ex.identifier,
            "index": index,
        }


class EntailmentDataset(Dataset):
    """SNLI-VE: image premise, text hypothesis, label index into ``SNLI_VE_LABELS``."""

    def __init__(self, examples: Sequence[EntailmentExample], transform: ImageTransform) -> None:
        self.examples, self.transform = list(examples), transform

    def __len__(self) -> int:
        return len(self.examples)

    def sample_file(self, index: int) -> str:
        """The image an item reads (several questions share one image: a bad image is counted once)."""
        return str(self.examples[index].image_path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        return {
            "task": "snli_ve",
            "image": self.transform(load_image(ex.image_path)),
            "text": ex.hypothesis,
            "label": SNLI_VE_LABELS.index(ex.label),
            "index": index,
        }


# --------------------------------------------------------------------------------------------------------
# Data module
# --------------------------------------------------------------------------------------------------------

_LAYOUT = {
    "coco": "coco/dataset_coco.json + coco/{train2014,val2014}/ (Karpathy COCO)",
    "flickr30k": "flickr30k/dataset_flickr30k.json + flickr30k/flickr30k-images/",
    "vg": "vg/region_descriptions.json + vg/VG_100K/{image_id}.jpg",
    "vqa": "vqa/v2_OpenEnded_mscoco_{sub}_questions.json + vqa/v2_mscoco_{sub}_annotations.json + vqa/{sub}/",
    "nlvr2": "nlvr2/{train,dev,test1}.json + nlvr2/images/{train,dev,test1}/",
    "snli_ve": "snli_ve/snli_ve_{train,dev,test}.jsonl + snli_ve/flickr30k_images/",
}


@dataclass
class HeldOut:
    """The evaluation split of each task, as ``SingleStreamDataModule.setup`` built them (None: not evaluated).

    Attributes:
        vqa: VQA v2 questions scored with the official metric.
        nlvr2: NLVR2 dev statements.
        snli_ve: SNLI-VE dev pairs.
        retrieval: The retrieval split's images; its ``texts`` are scored against each image.
        vqa_train: The VQA training questions the majority and question-type priors are counted on.
    """

    vqa: VQADataset | None = None
    nlvr2: NLVR2Dataset | None = None
    snli_ve: EntailmentDataset | None = None
    retrieval: RetrievalImageDataset | None = None
    vqa_train: list[VQAExample] = field(default_factory=list)

    def splits(self) -> dict[Task, Dataset]:
        """The splits present, in validation-loader order."""
        ordered = (("vqa", self.vqa), ("nlvr2", self.nlvr2), ("snli_ve", self.snli_ve), ("retrieval", self.retrieval))
        return {task: dataset for task, dataset in ordered if dataset is not None}

    def item_images(self, task: Task, index: int) -> dict[str, str]:
        """The image file(s) of evaluation item ``index`` of ``task`` (for the prediction rows)."""
        if task == "retrieval" and self.retrieval is not None:
            return {"image": str(self.retrieval.images[index].image_path)}
        if task == "nlvr2" and self.nlvr2 is not None:
            example = self.nlvr2.examples[index]
            return {"image_left": str(example.left_image), "image_right": str(example.right_image)}
        dataset = self.vqa if task == "vqa" else self.snli_ve if task == "snli_ve" else None
        return {"image": str(dataset.examples[index].image_path)} if dataset is not None else {}


@runtime_checkable
class SingleStreamData(Protocol):
    """What ``SingleStreamModule`` reads from its data module, after ``setup``; nothing else.

    Attributes:
        tasks: The downstream tasks, in training order.
        answers: The VQA answer vocabulary (label -> answer); empty without VQA.
        held_out: The evaluation splits.
    """

    tasks: list[Task]
    answers: list[str]
    held_out: HeldOut

    def phase(self, epoch: int) -> Phase:
        """What epoch ``epoch`` trains."""
        ...


class SingleStreamDataModule(LightningDataModule):
    """Pre-training (MLM + ITM on captions) followed by downstream tasks, for SOHO and Pixel-BERT.

    The first ``pretrain_epochs`` epochs train on image-caption pairs, then each task of ``task`` in turn:
    ``task_epochs[i]`` epochs of ``task[i]``, the last task until the end of training (set the trainer's
    ``reload_dataloaders_every_n_epochs: 1`` when there is more than one phase, so the loader switches).
    Every batch carries its ``task`` so the module knows which losses to apply. Validation loaders: each
    task's held-out split (scored in that task's epochs) and, when ``eval_retrieval`` is set, ITM
    retrieval on a Karpathy split (scored in the pre-training epochs, unless retrieval is itself a task).

    Args:
        root: Directory with the layout in the module docstring.
        pretrain_sources: Caption sources for pre-training: ``coco`` (Karpathy train + restval), ``vg``.
        pretrain_epochs: Epochs of pre-training before the downstream task (0 = fine-tune only).
        task: The downstream task (``vqa``, ``retrieval``, ``nlvr2``, ``snli_ve``), a list of them trained one
            after another, or None for pre-training only.
        task_epochs: With several tasks, the epochs of each but the last (which runs to ``max_epochs``).
        retrieval_dataset: ``coco`` or ``flickr30k``: the Karpathy file of retrieval fine-tuning/evaluation.
        eval_retrieval: Evaluate ITM retrieval (both directions) on ``retrieval_dataset``'s ``retrieval_split``.
        retrieval_split: Karpathy split evaluated (``test``, or ``val`` for model selection).
        retrieval_max_images: Evaluate on the first N images of that split (COCO "1K" = 1000); None = all.
        vqa_train: VQA v2 subtypes to train on (``train2014``; papers add ``val2014`` for test-dev).
        vqa_eval: Subtype evaluated with the official metric (``val2014``).
        vqa_min_answer_count: Answer vocabulary = normalised answers seen >= this often (9 -> 3129).
        image_size: Short side at pre-training / evaluation (SOHO 600, Pixel-BERT 800).
        max_size: Long side limit (SOHO 1000, Pixel-BERT 1333).
        train_sizes: Short sides drawn per image when fine-tuning (SOHO VQA: 400..800); None = image_size.
        itm_negative_prob: Probability that a pre-training caption is swapped for another image's.
        retrieval_negatives: Captions of other images scored beside each positive in retrieval fine-tuning.
        batch_size: Training batch size per process.
        eval_batch_size: Evaluation batch size per process.
        num_workers: DataLoader workers.
        max_failure_fraction: Tolerated fraction of unreadable images (skipped and counted).
        synthetic_images: Write a synthetic world of this many training images into ``root`` in every
            layout the configuration needs (0 = use real data).
        synthetic_image_size: Side of the synthetic images.
        seed: Seed of the synthetic world.
    """

    def __init__(
        self,
        root: str,
        pretrain_sources: list[PretrainSource] | None = None,
        pretrain_epochs: int = 0,
        task: Task | list[Task] | None = "vqa",
        task_epochs: list[int] | None = None,
        retrieval_dataset: Literal["coco", "flickr30k"] = "coco",
        eval_retrieval: bool = False,
        retrieval_split: Literal["val", "test"] = "test",
        retrieval_max_images: int | None = None,
        vqa_train: list[str] | None = None,
        vqa_eval: str = "val2014",
        vqa_min_answer_count: int = 9,
        image_size: int = 600,
        max_size: int = 1000,
        train_sizes: list[int] | None = None,
        itm_negative_prob: float = 0.5,
        retrieval_negatives: int = 15,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 4,
        max_failure_fraction: float = 0.01,
        synthetic_images: int = 0,
        synthetic_image_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self.pretrain_sources = list(pretrain_sources) if pretrain_sources is not None else ["coco", "vg"]
        unknown = set(self.pretrain_sources) - {"coco", "vg", "flickr30k"}
        if unknown:
            raise ValueError(f"pretrain_sources: unknown {sorted(unknown)}; choose from coco, vg, flickr30k")
        if pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {pretrain_epochs}")
        self.tasks: list[Task] = [] if task is None else [task] if isinstance(task, str) else list(task)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task: {self.tasks} must name distinct tasks from {list(TASKS)}")
        self.task_epochs = list(task_epochs or [])
        if len(self.task_epochs) != max(len(self.tasks) - 1, 0) or any(n < 1 for n in self.task_epochs):
            raise ValueError(
                f"task_epochs: need one positive epoch count for each task but the last ({self.tasks}), "
                f"got {self.task_epochs}"
            )
        if not self.tasks and pretrain_epochs == 0:
            raise ValueError("nothing to train: task is None and pretrain_epochs is 0")
        self.pretrain_epochs = pretrain_epochs
        self.vqa_train = list(vqa_train) if vqa_train is not None else ["train2014"]
        self.answers: list[str] = []
        self.train_sets: dict[Phase, Dataset] = {}
        self.held_out = HeldOut()

    # -- phases ------------------------------------------------------------------------------------------
    def phase(self, epoch: int) -> Phase:
        """What epoch ``epoch`` trains: ``pretrain`` (always, without a task), then each task in turn."""
        if epoch < self.pretrain_epochs or not self.tasks:
            return "pretrain"
        epoch -= self.pretrain_epochs
        for task, epochs in zip(self.tasks, self.task_epochs, strict=False):
            if epoch < epochs:
                return task
            epoch -= epochs
        return self.tasks[-1]

    # -- preparation -------------------------------------------------------------------------------------
    def _needed(self) -> set[str]:
        needed = set(self.pretrain_sources) if self.pretrain_epochs else set()
        needed |= {t for t in self.tasks if t != "retrieval"}
        if "retrieval" in self.tasks or self.hparams.eval_retrieval:
            needed.add(self.hparams.retrieval_dataset)
        return needed

    def _main_file(self, part: str) -> Path:
        return {
            "coco": self.root / "coco" / "dataset_coco.json",
            "flickr30k": self.root / "flickr30k" / "dataset_flickr30k.json",
            "vg": self.root / "vg" / "region_descriptions.json",
            "vqa": vqa_v2_paths(self.root / "vqa", self.hparams.vqa_eval)[0],
            "nlvr2": self.root / "nlvr2" / "dev.json",
            "snli_ve": self.root / "snli_ve" / "snli_ve_dev.jsonl",
        }[part]

    def prepare_data(self) -> None:
        if self.hparams.synthetic_images:
            self._write_synthetic()
        for part in sorted(self._needed()):
            path = self._main_file(part)
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found; expected under {self.root}: {_LAYOUT[part]}")

    def _write_synthetic(self) -> None:
        from vislang.shared.data.synthetic import SyntheticWorld
        from vislang.shared.data.synthetic import vl_writers as w

        n = self.hparams.synthetic_images
        world = SyntheticWorld(seed=self.hparams.seed, image_size=self.hparams.synthetic_image_size, num_images=n)
        n_eval = max(n // 10, 10)
        for part in sorted(self._needed()):
            if self._main_file(part).is_file():
                continue
            if part in ("coco", "flickr30k"):
                w.write_karpathy(world, self.root / part, part, num_train=n, num_val=n_eval, num_test=n_eval)
            elif part == "vg":  # other training scenes than COCO's, as VG and COCO overlap only partly
                w.write_vg_regions(world, self.root / "vg", indices=range(n, n + n // 2))
            elif part == "vqa":
                w.write_vqa_v2(world, self.root / "vqa", "train", indices=range(n))
                w.write_vqa_v2(world, self.root / "vqa", "val", indices=range(1_000_000, 1_000_000 + n_eval))
            elif part == "nlvr2":
                for split in ("train", "dev"):
                    w.write_nlvr2(world, self.root / "nlvr2", split, num_examples=n if split == "train" else n_eval)
            elif part == "snli_ve":
                for split in ("train", "dev"):
                    w.write_snli_ve(world, self.root / "snli_ve", split, num_images=n if split == "train" else n_eval)

    # -- datasets ----------------------------------------------------------------------------------------
    def _transform(self, train: bool) -> ImageTransform:
        h = self.hparams
        return ImageTransform(h.image_size, h.max_size, h.train_sizes if train else None)

    def _karpathy(self, dataset: str, splits: Sequence[str]) -> list[CaptionedImage]:
        folder = self.root / dataset
        image_root = folder if dataset == "coco" else folder / "flickr30k-images"
        return read_karpathy(folder / f"dataset_{dataset}.json", image_root, splits)

    def _vqa(self, subtype: str) -> list[VQAExample]:
        questions, annotations, images = vqa_v2_paths(self.root / "vqa", subtype)
        if annotations is None:
            raise FileNotFoundError(f"{self.root / 'vqa'}: no annotations for {subtype} ({_LAYOUT['vqa']})")
        return read_vqa_v2(questions, annotations, images)

    def setup(self, stage: str) -> None:
        """Build the training set of every phase (``train_sets``) and the evaluation splits (``held_out``)."""
        h = self.hparams
        if self.pretrain_epochs:
            self.train_sets["pretrain"] = self._pretrain_set()
        if "vqa" in self.tasks:
            self._setup_vqa()
        if "retrieval" in self.tasks:
            images = self._karpathy(h.retrieval_dataset, ["train", "restval"])
            self.train_sets["retrieval"] = RetrievalRankDataset(images, self._transform(True), h.retrieval_negatives)
        if "nlvr2" in self.tasks:
            nlvr = self.root / "nlvr2"
            read = {s: read_nlvr2(nlvr / f"{s}.json", nlvr / "images" / s) for s in ("train", "dev")}
            self.train_sets["nlvr2"] = NLVR2Dataset(read["train"], self._transform(True))
            self.held_out.nlvr2 = NLVR2Dataset(read["dev"], self._transform(False))
        if "snli_ve" in self.tasks:
            ve = self.root / "snli_ve"
            read = {s: read_snli_ve(ve / f"snli_ve_{s}.jsonl", ve / "flickr30k_images") for s in ("train", "dev")}
            self.train_sets["snli_ve"] = EntailmentDataset(read["train"], self._transform(True))
            self.held_out.snli_ve = EntailmentDataset(read["dev"], self._transform(False))
        if "retrieval" in self.tasks or h.eval_retrieval:
            images = self._karpathy(h.retrieval_dataset, [h.retrieval_split])[: h.retrieval_max_images]
            self.held_out.retrieval = RetrievalImageDataset(images, self._transform(False))

    def _pretrain_set(self) -> CaptionPairDataset:
        """Image-caption pairs of every pre-training source (Karpathy train + restval; VG regions)."""
        captioned: list[CaptionedImage] = []
        for source in self.pretrain_sources:
            if source == "vg":
                captioned += read_vg_regions(
                    self.root / "vg" / "region_descriptions.json", self.root / "vg" / "VG_100K"
                )
            else:
                captioned += self._karpathy(source, ["train", "restval"])
        return CaptionPairDataset(captioned, self._transform(False), self.hparams.itm_negative_prob)

    def _setup_vqa(self) -> None:
        """The answer vocabulary from the training questions, then the training and evaluation sets."""
        h = self.hparams
        train = [ex for sub in self.vqa_train for ex in self._vqa(sub)]
        annotations = [{"multiple_choice_answer": ex.multiple_choice_answer or ""} for ex in train]
        self.answers = build_answer_vocab(annotations, h.vqa_min_answer_count)
        if not self.answers:
            raise ValueError(f"no answer is seen >= {h.vqa_min_answer_count} times in {self.vqa_train}")
        vocab = set(self.answers)
        # ViLT/bottom-up: training questions without any in-vocabulary answer are dropped.
        train = [ex for ex in train if any(a in vocab for a in ex.answers)]
        self.train_sets["vqa"] = VQADataset(train, self._transform(True), self.answers)
        self.held_out.vqa = VQADataset(self._vqa(h.vqa_eval), self._transform(False), self.answers)
        self.held_out.vqa_train = train

    # -- loaders -----------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        h, trainer = self.hparams, self.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        phases = int(self.pretrain_epochs > 0) + len(self.tasks)
        if phases > 1 and trainer is not None and trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "more than one training phase (pre-training, tasks) in one run needs "
                "trainer.reload_dataloaders_every_n_epochs=1"
            )
        return train_loader(
            self.train_sets[self.phase(epoch)],
            h.batch_size,
            trainer,
            collate=collate,
            num_workers=h.num_workers,
            max_failure_fraction=h.max_failure_fraction,
            persistent_workers=False,
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per evaluation split (``held_out.splits()`` order)."""
        h = self.hparams
        return [
            eval_loader(
                dataset,
                h.eval_batch_size,
                collate=collate,
                num_workers=h.num_workers,
                max_failure_fraction=h.max_failure_fraction,
            )
            for dataset in self.held_out.splits().values()
        ]

    def predict_dataloader(self) -> list[DataLoader]:
        """``lightning predict`` runs on the evaluation splits, every item once."""
        return self.val_dataloader()
