"""Data of the VQA entry: VQA v2 questions (+ Visual Genome QA as augmentation) over stored visual
features, and COCO-format instances for training the detector.

VQA v2 is read with ``vislang.shared.data.vl.read_vqa_v2`` (official layout); Visual Genome QA
(``question_answers.json``: ``[{"id", "qas": [{"qa_id", "image_id", "question", "answer"}]}]``) with
``read_vg_qa`` below. Features come from one or more named feature sets (``features: {name: [store
dirs]}``; e.g. ``region`` and ``grid``): every batch carries all of them, a single model reads the one it
was trained on, an ensemble reads each member's.

Splits: ``train_subtypes`` (MCAN's test-dev setting trains on ``train2014 + val2014`` + VG) are trained on;
``val_subtype`` is validated on. With ``heldout_fraction > 0`` the last fraction of the validation *images*
(sorted by id) becomes the test split, disjoint from the part used to fit ensemble weights;
otherwise ``test_subtype`` (e.g. ``test2015``, no annotations: predictions only) is the test split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vislang.shared.data.images import load_image
from vislang.shared.data.loaders import eval_loader, train_loader
from vislang.shared.data.robust import RobustDataset
from vislang.shared.data.vl import read_vqa_v2, vqa_v2_paths
from vislang.shared.metrics.vqa import build_answer_vocab, normalize_vocab_answer, vqa_soft_targets
from vislang.shared.text import load_tokenizer
from vislang.vqa_ensemble.features import FeatureStore

__all__ = [
    "COCODetectionDataModule",
    "DetectionBatch",
    "QAItem",
    "Split",
    "VQABatch",
    "VQAData",
    "VQADataModule",
    "VQAFeatureDataset",
    "VisualBatch",
    "image_files",
    "load_rgb",
    "read_coco_instances",
    "read_vg_qa",
]

Split = Literal["train", "val", "test"]
"""The data module's splits: ``test`` is the held-out part of ``val_subtype`` or ``test_subtype``."""
Source = Literal["vqa", "vg"]

VG_QA_LAYOUT = "[{'id': image_id, 'qas': [{'qa_id', 'image_id', 'question', 'answer'}]}]"


@dataclass(frozen=True)
class QAItem:
    """A question over one image: VQA v2 (ten answers) or Visual Genome (one answer, repeated)."""

    question_id: int
    image_id: int
    question: str
    answers: tuple[str, ...]
    question_type: str
    answer_type: str
    source: Source  # VG image ids overlap COCO's, so each source has its own stores


def read_vg_qa(question_answers_json: str | Path) -> list[QAItem]:
    """Visual Genome ``question_answers.json`` as QA items; the single answer counts as ten agreeing
    annotators (soft score 1.0), as MCAN's VG augmentation files do."""
    path = Path(question_answers_json)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected Visual Genome QA: {VG_QA_LAYOUT})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list ({VG_QA_LAYOUT})")
    items = []
    for k, image in enumerate(data):
        for j, qa in enumerate(image.get("qas", [])):
            try:
                # VG answers are free text ("A red car."): normalise them as the vocabulary is.
                answer = normalize_vocab_answer(str(qa["answer"]))
                items.append(
                    QAItem(int(qa["qa_id"]), int(qa["image_id"]), str(qa["question"]), (answer,) * 10, "vg", "vg", "vg")
                )
            except KeyError as missing:
                raise ValueError(f"{path}: [{k}]['qas'][{j}]: missing key {missing.args[0]!r}") from None
    return items


def image_files(image_dir: str | Path, suffixes: Sequence[str] = (".jpg", ".jpeg", ".png")) -> list[tuple[int, Path]]:
    """``(image_id, path)`` for every image in a directory; the id is the file stem's trailing number
    (``COCO_val2014_000000262148.jpg`` -> 262148, VG ``2345.jpg`` -> 2345), sorted by id."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: no such image directory")
    out = []
    for path in image_dir.iterdir():
        match = re.search(r"(\d+)$", path.stem)
        if path.suffix.lower() in suffixes and match:
            out.append((int(match.group(1)), path))
    ids = [i for i, _ in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{image_dir}: two files map to the same image id")
    return sorted(out)


def _open_stores(paths: Sequence[str], what: str) -> dict[int, FeatureStore]:
    """image id -> the store holding it, over several stores of one feature set (same spec required)."""
    index: dict[int, FeatureStore] = {}
    first: FeatureStore | None = None
    for p in paths:
        store = FeatureStore(p, expected_spec=None if first is None else first.spec)
        first = first or store
        for image_id in store.image_ids:
            if image_id in index:
                raise ValueError(f"{what}: image id {image_id} is in both {index[image_id].root} and {store.root}")
            index[image_id] = store
    return index


class VQAFeatureDataset(Dataset):
    """QA items over stored features: ``{"index", "question_id", "question", "answers", "visual": {name:
    (features, boxes)}, ...}``."""

    def __init__(self, items: Sequence[QAItem], stores: Mapping[str, Mapping[str, Mapping[int, FeatureStore]]]) -> None:
        self.items = list(items)
        self.stores = stores  # source -> feature set -> image id -> store
        for item in self.items:  # fail at set-up, not in the middle of an epoch
            for name, index in stores[item.source].items():
                if item.image_id not in index:
                    raise KeyError(
                        f"feature set {name!r} ({item.source}): no stored features for image {item.image_id}"
                    )

    def __len__(self) -> int:
        return len(self.items)

    def sample_file(self, index: int) -> str:
        """The image whose features an item reads: ``RobustDataset`` counts an image that failed at extraction
        (or whose feature shard is damaged) once, not once per question, and never substitutes another
        question about it."""
        item = self.items[index]
        return f"{item.source} image {item.image_id}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        visual = {}
        for name, stores in self.stores[item.source].items():
            f = stores[item.image_id][item.image_id]
            visual[name] = (f.features, f.boxes)
        return {"index": index, "item": item, "visual": visual}


# ---- what the modules read (VQAModule, VQAEnsemble) ------------------------------------------------------


class VisualBatch(TypedDict):
    """One feature set of a batch, padded to its longest image."""

    features: Tensor  # (B, N, D)
    boxes: Tensor  # (B, N, 4) normalised x1, y1, x2, y2
    mask: Tensor  # (B, N) True where a feature is real


class VQABatch(TypedDict):
    """A batch of `VQADataModule.collate`; a member reads ``visual[its feature_set]``."""

    index: Tensor  # (B,) position in the split's dataset
    question_id: list[int]
    answers: list[tuple[str, ...]]  # the ten human answers; empty on a split without annotations
    answer_type: list[str]
    question_type: list[str]
    input_ids: Tensor  # (B, L)
    attention_mask: Tensor  # (B, L)
    visual: dict[str, VisualBatch]
    targets: Tensor  # (B, A) soft scores over the answer vocabulary (VQA eq. / MCAN eq. 9 targets)


@runtime_checkable
class VQAData(Protocol):
    """What `VQAModule` and `VQAEnsemble` read from their data module (`VQADataModule` is one).

    Attributes:
        answers: the answer vocabulary (label order of the targets).
        splits: the datasets set up so far, by split; their ``items`` give question and image ids.
    """

    answers: list[str]
    splits: dict[Split, VQAFeatureDataset]

    def use_answer_vocab(self, answers: Sequence[str]) -> None:
        """Adopt a model's vocabulary for the targets."""
        ...

    def feature_store(self, name: str) -> FeatureStore:
        """A store of feature set ``name`` (its spec and feature dimension)."""
        ...


class VQADataModule(LightningDataModule):
    """VQA v2 (+ VG QA) over stored features, with the answer vocabulary and soft-score targets.

    Args:
        root: VQA v2 directory (``v2_OpenEnded_mscoco_{subtype}_questions.json``, ``v2_mscoco_{subtype}_
            annotations.json``; images are not read: features come from the stores).
        features: Feature set name -> store directories covering every VQA image used.
        tokenizer: Hugging Face tokenizer directory or name (``bert-base-uncased``).
        train_subtypes: Subtypes trained on (MCAN test-dev setting: ``[train2014, val2014]``).
        val_subtype: Subtype validated on.
        test_subtype: Test split when ``heldout_fraction`` is 0 (``test2015``: predictions only).
        heldout_fraction: Fraction of the ``val_subtype`` images held out as the test split.
        vocab_subtypes: Annotations the answer vocabulary is built from (bottom-up: train + val).
        min_answer_count: Vocabulary threshold (9 -> the 3129 answers on VQA v2 train + val).
        vg_qa: Visual Genome ``question_answers.json`` for augmentation, or None.
        vg_features: Feature set name -> VG store directories (same names as ``features``).
        max_question_tokens: Question length incl. [CLS]/[SEP] (MCAN cuts at 14 words).
        drop_unanswerable: Drop training questions with no in-vocabulary answer (ViLT).
        batch_size: Questions per process in a training batch.
        eval_batch_size: Questions per process in an evaluation batch.
        num_workers: Loader worker processes.
        max_failure_fraction: Images whose features cannot be read (failed at extraction, damaged shard) are
            skipped and counted once; more than this fraction of a split's images stops the run.
    """

    def __init__(
        self,
        root: str,
        features: dict[str, list[str]],
        tokenizer: str = "bert-base-uncased",
        train_subtypes: list[str] = ["train2014"],  # noqa: B006 (jsonargparse needs a literal default)
        val_subtype: str = "val2014",
        test_subtype: str = "test2015",
        heldout_fraction: float = 0.0,
        vocab_subtypes: list[str] = ["train2014", "val2014"],  # noqa: B006
        min_answer_count: int = 9,
        vg_qa: str | None = None,
        vg_features: dict[str, list[str]] | None = None,
        max_question_tokens: int = 16,
        drop_unanswerable: bool = True,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 4,
        max_failure_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        if not features:
            raise ValueError("features: give at least one feature set, e.g. {region: [<store dir>, ...]}")
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
        if vg_qa is not None and set(vg_features or {}) != set(features):
            raise ValueError("vg_features must name the same feature sets as features when vg_qa is given")
        self.save_hyperparameters()
        self.root = Path(root)
        self.answers: list[str] = []
        self.answer_to_label: dict[str, int] = {}
        self.splits: dict[Split, VQAFeatureDataset] = {}
        self._tokenizer: Any = None
        self._stores: dict[str, dict[int, FeatureStore]] = {}

    # -- reading ---------------------------------------------------------------------------------------
    def _read(self, subtype: str) -> tuple[list[QAItem], list[dict[str, Any]]]:
        questions, annotations, _ = vqa_v2_paths(self.root, subtype)
        if not questions.is_file():
            raise FileNotFoundError(
                f"{questions}: missing VQA v2 questions (expected {self.root}/v2_OpenEnded_mscoco_{subtype}_questions.json"
                f" and v2_mscoco_{subtype}_annotations.json)"
            )
        examples = read_vqa_v2(questions, annotations, self.root / subtype)
        items = [
            QAItem(e.question_id, e.image_id, e.question, e.answers, e.question_type or "", e.answer_type or "", "vqa")
            for e in examples
        ]
        anns = [{"multiple_choice_answer": e.multiple_choice_answer} for e in examples if e.multiple_choice_answer]
        return items, anns

    def use_answer_vocab(self, answers: Sequence[str]) -> None:
        """Adopt a vocabulary (e.g. a trained checkpoint's) instead of the one built from the data."""
        self.answers = list(answers)
        self.answer_to_label = {a: i for i, a in enumerate(self.answers)}

    def feature_store(self, name: str) -> FeatureStore:
        """A store of feature set ``name`` (for its spec and feature dimension); after ``setup``."""
        if name not in self._stores:
            raise KeyError(f"feature set {name!r} is not in data.features ({sorted(self._stores)})")
        return next(iter(self._stores[name].values()))

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.tokenizer)
        return self._tokenizer

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if not self.answers:
            self.use_answer_vocab(self._vocabulary())
        stores = {"vqa": {n: _open_stores(p, f"features[{n}]") for n, p in h.features.items()}}
        self._stores = stores["vqa"]
        if h.vg_qa is not None:
            stores["vg"] = {n: _open_stores(p, f"vg_features[{n}]") for n, p in (h.vg_features or {}).items()}
        if stage in (None, "fit"):
            self.splits["train"] = VQAFeatureDataset(self._train_items(), stores)
        val, _ = self._read(h.val_subtype)
        if h.heldout_fraction > 0:  # the last images (by id) of the validation subtype are the test split
            images = sorted({i.image_id for i in val})
            heldout = set(images[len(images) - max(1, round(h.heldout_fraction * len(images))) :])
            self.splits["val"] = VQAFeatureDataset([i for i in val if i.image_id not in heldout], stores)
            self.splits["test"] = VQAFeatureDataset([i for i in val if i.image_id in heldout], stores)
        else:
            self.splits["val"] = VQAFeatureDataset(val, stores)
            if stage in ("test", "predict"):
                self.splits["test"] = VQAFeatureDataset(self._read(h.test_subtype)[0], stores)

    def _vocabulary(self) -> list[str]:
        """Answers seen ``min_answer_count`` times in the ``vocab_subtypes`` annotations (bottom-up's rule)."""
        h = self.hparams
        answers = build_answer_vocab([a for s in h.vocab_subtypes for a in self._read(s)[1]], h.min_answer_count)
        if not answers:
            raise ValueError(f"no answer is seen {h.min_answer_count} times in {h.vocab_subtypes}: empty vocabulary")
        return answers

    def _train_items(self) -> list[QAItem]:
        """The training questions: ``train_subtypes`` (+ VG QA), without the unanswerable ones if asked."""
        h = self.hparams
        items = [i for s in h.train_subtypes for i in self._read(s)[0]]
        if h.vg_qa is not None:
            items += read_vg_qa(h.vg_qa)
        if h.drop_unanswerable:
            items = [i for i in items if vqa_soft_targets(i.answers, self.answer_to_label)[0]]
        return items

    # -- batching --------------------------------------------------------------------------------------
    def collate(self, samples: list[dict[str, Any]]) -> VQABatch:
        items: list[QAItem] = [s["item"] for s in samples]
        tokens = self.tokenizer(
            [i.question for i in items],
            padding=True,
            truncation=True,
            max_length=self.hparams.max_question_tokens,
            return_tensors="pt",
        )
        targets = torch.zeros(len(items), max(1, len(self.answers)))
        for k, item in enumerate(items):
            if item.answers:
                labels, scores = vqa_soft_targets(item.answers, self.answer_to_label)
                targets[k, labels] = torch.tensor(scores)
        return {
            "index": torch.tensor([s["index"] for s in samples]),
            "question_id": [i.question_id for i in items],
            "answers": [i.answers for i in items],
            "answer_type": [i.answer_type for i in items],
            "question_type": [i.question_type for i in items],
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "visual": {name: _pad_visual([s["visual"][name] for s in samples]) for name in samples[0]["visual"]},
            "targets": targets,
        }

    def _split(self, split: Split) -> VQAFeatureDataset:
        if split not in self.splits:
            raise RuntimeError(f"split {split!r} not set up (call setup first)")
        return self.splits[split]

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        return train_loader(
            self._split("train"),
            h.batch_size,
            self.trainer,
            collate=self.collate,
            num_workers=h.num_workers,
            drop_last=False,
            max_failure_fraction=h.max_failure_fraction,
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self._split("val"), self.hparams.eval_batch_size, **self._eval_options)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self._split("test"), self.hparams.eval_batch_size, **self._eval_options)

    predict_dataloader = test_dataloader  # predictions are made for the test split

    @property
    def _eval_options(self) -> dict[str, Any]:
        h = self.hparams
        return {
            "collate": self.collate,
            "num_workers": h.num_workers,
            "persistent_workers": True,
            "max_failure_fraction": h.max_failure_fraction,
        }


def _pad_visual(feats: list[tuple[np.ndarray, np.ndarray]]) -> VisualBatch:
    """(features (n, D), boxes (n, 4)) per sample -> zero-padded tensors and the mask of real entries."""
    n = max(1, max(len(f) for f, _ in feats))
    x = torch.zeros(len(feats), n, feats[0][0].shape[-1])
    boxes = torch.zeros(len(feats), n, 4)
    mask = torch.zeros(len(feats), n, dtype=torch.bool)
    for k, (f, b) in enumerate(feats):
        x[k, : len(f)] = torch.from_numpy(np.asarray(f, dtype=np.float32))
        boxes[k, : len(b)] = torch.from_numpy(b)
        mask[k, : len(f)] = True
    return {"features": x, "boxes": boxes, "mask": mask}


# ---- detector training data ---------------------------------------------------------------------------


def read_coco_instances(instances_json: str | Path) -> list[dict[str, Any]]:
    """COCO instances JSON -> ``[{"id", "file_name", "boxes" (n, 4) xyxy, "labels" (n,)}]`` (crowd skipped)."""
    path = Path(instances_json)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected COCO instances: images, annotations, categories)")
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    per_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in data["images"]}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            per_image[int(ann["image_id"])].append(ann)
    out = []
    for im in data["images"]:
        anns = per_image[int(im["id"])]
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
        out.append({"id": int(im["id"]), "file_name": im["file_name"], "boxes": boxes, "labels": labels})
    return out


def load_rgb(path: str | Path) -> Tensor:
    """An image file as a float RGB tensor in [0, 1], (3, H, W), read by `vislang.shared.data.images.load_image`
    (``convert("RGB")``, as the detectors' official pipelines read); an unreadable file raises ``SampleLoadError``."""
    # name= the whole path: load_image would name a pathlib.Path by its `.name` (the file name) alone
    array = np.asarray(load_image(path, name=str(path)), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class _DetectionDataset(Dataset):
    def __init__(self, records: list[dict[str, Any]], image_dir: Path, hflip: bool) -> None:
        self.records, self.image_dir, self.hflip = records, image_dir, hflip

    def __len__(self) -> int:
        return len(self.records)

    def sample_file(self, index: int) -> str:
        return str(self.image_dir / self.records[index]["file_name"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        image = load_rgb(Path(self.sample_file(index)))
        boxes = torch.from_numpy(r["boxes"]).clone()
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            w = image.shape[-1]
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        return {"image": image, "target": {"boxes": boxes, "labels": torch.from_numpy(r["labels"])}}


class DetectionBatch(TypedDict):
    """A batch of detector training data, what `DetectorModule` reads (torchvision's detection format)."""

    images: list[Tensor]  # (3, H, W) each, in [0, 1]
    targets: list[dict[str, Tensor]]  # "boxes" (n, 4) xyxy pixels, "labels" (n,)


def _detection_collate(samples: list[dict[str, Any]]) -> DetectionBatch:
    return {"images": [s["image"] for s in samples], "targets": [s["target"] for s in samples]}


class COCODetectionDataModule(LightningDataModule):
    """COCO-format instances for training the feature detector (VG objects converted to COCO format, or
    the synthetic world's ``write_coco_instances``).

    Args:
        train_json: The training instances file (COCO format).
        image_dir: The training images' folder.
        val_json: The validation instances file (None: no validation, no box mAP).
        val_image_dir: The validation images' folder.
        batch_size: Images per process in a batch.
        num_workers: Loader worker processes.
        hflip: Random horizontal flips in training.
    """

    def __init__(
        self,
        train_json: str,
        image_dir: str,
        val_json: str | None = None,
        val_image_dir: str | None = None,
        hflip: bool = True,
        batch_size: int = 8,
        num_workers: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        self.train = RobustDataset(_DetectionDataset(read_coco_instances(h.train_json), Path(h.image_dir), h.hflip))
        self.val = None
        if h.val_json is not None:
            self.val = RobustDataset(
                _DetectionDataset(read_coco_instances(h.val_json), Path(h.val_image_dir or h.image_dir), False)
            )

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        return train_loader(
            self.train,
            h.batch_size,
            self.trainer,
            collate=_detection_collate,
            num_workers=h.num_workers,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val is None:
            return []
        return eval_loader(
            self.val, self.hparams.batch_size, collate=_detection_collate, num_workers=self.hparams.num_workers
        )
