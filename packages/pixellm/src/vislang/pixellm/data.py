"""PixelLM data: MUSE JSON, refCOCO/+/g in the refer layout, the synthetic world written as MUSE.

Every dataset item is one (image, question) pair: the image resized on its longest side and padded
bottom-right to `image_size` (with the mask of patches that hold content), the question, the answer with
one `{seg}` per target, and the target masks (K, H, W) at the image's original size. Batches carry raw
strings; `vislang.pixellm.module.PixelLMModule` owns the tokenizer and renders `{seg}` as the codebook.

Layouts (`root` = the directory given in the config):

    MUSE:   {muse_root}/muse_train.json, muse_val.json, muse_test_less.json, muse_test_many.json
            {muse_root}/{image_dir}/train2014/<file_name>  (or <train2017|val2017>/<name> for `coco_url` entries)
    refer:  {refer_root}/{dataset}/refs({split_by}).p, {refer_root}/{dataset}/instances.json
            {refer_root}/images/mscoco/images/train2014/<file_name>   (refclef: images/saiapr_tc-12/<file_name>)
"""

from __future__ import annotations

import bisect
import json
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from vislang.shared.data.images import load_image
from vislang.shared.data.loaders import eval_loader, train_loader
from vislang.shared.data.robust import RobustDataset, SampleLoadError
from vislang.shared.data.synthetic import SEG_PLACEHOLDER, SyntheticWorld

log = logging.getLogger(__name__)

__all__ = [
    "EvalSet",
    "EvalStage",
    "LlavaInstructDataset",
    "Matching",
    "MuseDataset",
    "Normalisation",
    "PixelLMBatch",
    "PixelLMDataModule",
    "PixelLMEvalData",
    "PromptBatch",
    "ReferDataset",
    "SemSegDataset",
    "SemSegSource",
    "TrainingSource",
    "collate",
    "decode_segmentation",
    "preprocess_image",
]

Normalisation = Literal["sam", "clip"]
Matching = Literal["hungarian", "ordered"]
"""How predicted masks pair with a question's targets: Hungarian matching (MUSE) or answer order (refCOCO)."""
SemSegSource = Literal["ade20k", "cocostuff", "pascal_part", "paco_lvis"]
TrainingSource = Literal["sem_seg", "refer", "vqa", "muse"]
"""The kinds of data the released training mix draws from, each with its `sample_rates` weight."""
EvalStage = Literal["validate", "test"]

SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)
NORMALISATION: dict[Normalisation, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "sam": (SAM_MEAN, SAM_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}
"""The released code normalises CLIP's input (0..255 scale) with SAM's (ImageNet) statistics; `clip` uses
CLIP's own."""
MUSE_QUESTION = "{question} Please respond with segmentation mask."
CATEGORY_QUESTION = "Can you segment the {class_name} in this image?"


# ------------------------------------------------------------------------------------------------------
# The contract with `PixelLMModule`: what a batch holds and what the module asks of the data module
# ------------------------------------------------------------------------------------------------------


class PromptBatch(TypedDict):
    """What `PixelLMModule` generates an answer from: the padded images and the questions."""

    pixel_values: Tensor  # (B, 3, S, S) resized on the longest side, normalised, padded bottom-right
    patch_mask: Tensor  # (B, G, G) bool, True on patches that hold image content
    resized_size: Tensor  # (B, 2) the image's (h', w') inside the padded square
    original_size: list[tuple[int, int]]  # (h, w) of each image: masks are predicted at this size
    question: list[str]


class PixelLMBatch(PromptBatch):
    """A batch of `collate`: the prompts, the answers (one `{seg}` per target) and the targets' masks."""

    answer: list[str]
    masks: list[Tensor]  # per question (K, h, w) bool, in the answer's `{seg}` order
    index: Tensor  # (B,) the item index within its dataset
    image_id: Tensor  # (B,) groups the questions of one image (per-image gIoU)
    image_path: list[str]


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set as the module scores it: its name (metric keys `val/<name>/gIoU`) and how its
    predicted masks pair with the targets."""

    name: str
    matching: Matching


class PixelLMEvalData(Protocol):
    """What `PixelLMModule` needs of its data module at evaluation: one `EvalSet` per evaluation loader, in
    loader order, and the validation loaders (scored before training with `evaluate_before_training`)."""

    def eval_sets(self, stage: EvalStage) -> list[EvalSet]: ...

    def val_dataloader(self) -> list[DataLoader]: ...


# ------------------------------------------------------------------------------------------------------
# Images and masks
# ------------------------------------------------------------------------------------------------------


def preprocess_image(
    image: np.ndarray, size: int, patch: int, normalisation: Normalisation = "sam"
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Longest side -> `size`, normalise, pad bottom-right; return (3,S,S), the (G,G) content mask, (h', w')."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALISATION[normalisation])
    x = (x - mean) / std
    x = F.pad(x, (0, size - nw, 0, size - nh))
    grid = size // patch
    rows = torch.arange(grid) * patch < nh
    cols = torch.arange(grid) * patch < nw
    return x, rows[:, None] & cols[None, :], (nh, nw)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO polygons (list of lists), uncompressed RLE (`counts` list), compressed RLE or a ready (H, W) array
    (label-map classes) -> (H, W) bool."""
    if isinstance(segmentation, np.ndarray):
        return segmentation.astype(bool)
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle["counts"], str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    else:
        raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


class _SegmentationDataset(Dataset):
    """Shared item assembly: image preprocessing and masks."""

    name: str = "dataset"
    matching: Matching = "hungarian"

    def __init__(self, image_size: int, patch_size: int, normalisation: Normalisation) -> None:
        self.image_size, self.patch_size, self.normalisation = image_size, patch_size, normalisation
        self.items: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.items)

    def sample_file(self, index: int) -> str:
        """The image an item reads, without reading it: `RobustDataset` counts a bad image once (not once per
        question about it) and never substitutes another question about the same image."""
        return str(self._image_path(index))

    def _image_path(self, index: int) -> Path:
        raise NotImplementedError

    def _sample(
        self, index: int, path: Path, question: str, answer: str, segs: Sequence[Any], image_id: int | None = None
    ) -> dict[str, Any]:
        """One (image, question) item; `image_id` groups the questions of one image (default: the item index)."""
        image = np.array(load_image(path))  # a writable copy: torch.from_numpy refuses read-only arrays
        h, w = image.shape[:2]
        try:
            masks = np.stack([decode_segmentation(s, h, w) for s in segs]) if segs else np.zeros((0, h, w), bool)
        except (ValueError, TypeError, KeyError) as error:
            raise SampleLoadError(path, f"bad segmentation: {error}") from None
        pixels, patch_mask, resized = preprocess_image(image, self.image_size, self.patch_size, self.normalisation)
        return {
            "pixel_values": pixels,
            "patch_mask": patch_mask,
            "resized_size": torch.tensor(resized),
            "original_size": (h, w),
            "question": question,
            "answer": answer,
            "masks": torch.from_numpy(masks),
            "index": index,
            "image_path": str(path),
            "image_id": index if image_id is None else image_id,
        }


class MuseDataset(_SegmentationDataset):
    """MUSE: one item per question of every image of a MUSE JSON (PixelLM `multi_reason_seg_dataset.py`).

    The answer is `text_answers[q]` (one `{seg}` per target, in the order of `answers[q]`); without it,
    it is composed from each target's `rephrased_name` (else `category_name`). A question whose `{seg}`
    count differs from its target count is skipped and counted (`skipped`), as the released loader does.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        image_size: int,
        patch_size: int,
        normalisation: Normalisation = "sam",
        name: str | None = None,
        question_template: str = MUSE_QUESTION,
        image_layout: Literal["official", "flat"] = "official",
    ) -> None:
        super().__init__(image_size, patch_size, normalisation)
        json_path, self.image_root, self.image_layout = Path(json_path), Path(image_root), image_layout
        self.name = name or json_path.stem
        if not json_path.is_file():
            raise FileNotFoundError(f"MUSE file not found: {json_path} (expected a MUSE JSON list of images)")
        records = json.loads(json_path.read_text())
        if not isinstance(records, list):
            raise ValueError(f"{json_path}: expected a JSON list of per-image dicts")
        self.skipped = 0
        for number, record in enumerate(records):
            if "file_name" not in record and "coco_url" not in record:
                raise ValueError(f"{json_path}: image entry {number} has neither 'file_name' nor 'coco_url'")
            if "questions" not in record:  # the released loader asks category-name questions for these
                self._category_questions(number, record, json_path)
                continue
            if "answers" not in record:
                raise ValueError(f"{json_path}: image entry {number} has 'questions' but no 'answers'")
            texts = record.get("text_answers")
            for q, (question, targets) in enumerate(zip(record["questions"], record["answers"], strict=True)):
                answer = texts[q] if texts and q < len(texts) and texts[q] else _composed_answer(targets)
                if answer.count(SEG_PLACEHOLDER) != len(targets) or not targets:
                    self.skipped += 1
                    continue
                self.items.append(
                    {
                        "record": number,
                        "question": question_template.format(question=question),
                        "answer": answer,
                        "segs": [t["segmentation"] for t in targets],
                    }
                )
        self.records = records
        if self.skipped:
            log.warning(
                "%s: skipped %d questions whose {seg} count differs from their targets", json_path, self.skipped
            )

    def _category_questions(self, number: int, record: dict[str, Any], json_path: Path) -> None:
        """An image without `questions`: one question per category of its `ann_list` ("Can you segment the
        {category} in this image?"), its targets every instance of that category (released loader)."""
        anns = record.get("ann_list")
        if not anns:
            raise ValueError(f"{json_path}: image entry {number} has neither 'questions' nor a non-empty 'ann_list'")
        by_category: dict[Any, list[dict[str, Any]]] = {}
        for ann in anns:
            by_category.setdefault(ann.get("category_id", ann.get("category_name")), []).append(ann)
        for targets in by_category.values():
            name = targets[0].get("category_name", "object")
            answer = _composed_answer([{"category_name": t.get("rephrased_name") or name} for t in targets])
            self.items.append(
                {
                    "record": number,
                    "question": CATEGORY_QUESTION.format(class_name=name),
                    "answer": answer,
                    "segs": [t["segmentation"] for t in targets],
                }
            )

    def image_path(self, record: dict[str, Any]) -> Path:
        """`file_name` under `<image root>/train2014` (official layout) or the image root (`flat`), or a
        `coco_url`'s train2017/val2017 folder and name."""
        if "file_name" in record:
            folder = self.image_root / "train2014" if self.image_layout == "official" else self.image_root
            return folder / record["file_name"]
        url = record["coco_url"]
        folder = "train2017" if "train2017" in url else "val2017"
        return self.image_root / folder / url.rsplit("/", 1)[-1]

    def _image_path(self, index: int) -> Path:
        return self.image_path(self.records[self.items[index]["record"]])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return self._sample(
            index, self._image_path(index), item["question"], item["answer"], item["segs"], image_id=item["record"]
        )


def _composed_answer(targets: Sequence[dict[str, Any]]) -> str:
    """The released template fallback for answers without `text_answers`: "name {seg}, name {seg} and ..."."""
    names = [t.get("rephrased_name") or t.get("category_name", "object") for t in targets]
    parts = [f"{name} {SEG_PLACEHOLDER}" for name in names]
    return parts[0] + "." if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1] + "."


class _RefsUnpickler(pickle.Unpickler):
    """refs(*).p holds plain lists/dicts/strings: refuse any class (never run code from a data file)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refs pickle references {module}.{name}; only plain data is allowed")


REFER_QUESTION = "Can you segment the {sent} in this image?"
REFER_ANSWER = f"It is {SEG_PLACEHOLDER}."
REFER_IMAGE_DIRS = {"refclef": "images/saiapr_tc-12"}
"""Image folder per refer dataset under the refer root (released `refer_seg_dataset.py`); others: mscoco train2014."""


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class ReferDataset(_SegmentationDataset):
    """refCOCO/+/g and refclef in the refer layout.

    One item per question. With `expressions_per_question: 1` (evaluation, LISA's protocol) a question is one
    referring sentence with one target; with up to 3 (training, released `num_classes_per_question=3`) an
    image's sentences are packed in order into questions of up to that many, "Can you segment the A, B and C
    in this image?" -> "A is {seg}, B is {seg} and C is {seg}.".
    """

    matching: Matching = "ordered"

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split_by: str,
        split: str,
        image_size: int,
        patch_size: int,
        normalisation: Normalisation = "sam",
        expressions_per_question: int = 1,
    ) -> None:
        super().__init__(image_size, patch_size, normalisation)
        root = Path(root)
        self.name = f"{dataset}_{split_by}_{split}"
        refs_path, inst_path = root / dataset / f"refs({split_by}).p", root / dataset / "instances.json"
        for path in (refs_path, inst_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"refer file not found: {path} (expected {root}/<dataset>/refs(<split_by>).p and instances.json)"
                )
        with open(refs_path, "rb") as handle:
            refs = _RefsUnpickler(handle, encoding="latin1").load()
        instances = json.loads(inst_path.read_text())
        anns = {a["id"]: a for a in instances["annotations"]}
        images = {i["id"]: i for i in instances["images"]}
        self.image_dir = root / REFER_IMAGE_DIRS.get(dataset, "images/mscoco/images/train2014")
        per_image: dict[int, list[tuple[str, Any]]] = {}
        for ref in refs:
            if ref["split"] != split:
                continue
            for sentence in ref["sentences"]:
                per_image.setdefault(ref["image_id"], []).append(
                    (sentence["sent"], anns[ref["ann_id"]]["segmentation"])
                )
        for image_id, pairs in per_image.items():
            for start in range(0, len(pairs), expressions_per_question):
                chunk = pairs[start : start + expressions_per_question]
                question, answer = _multi_target_qa([sent for sent, _ in chunk])
                self.items.append(
                    {
                        "file_name": images[image_id]["file_name"],
                        "image_id": image_id,
                        "question": question,
                        "answer": answer,
                        "segs": [seg for _, seg in chunk],
                    }
                )
        if not self.items:
            raise ValueError(f"{refs_path}: no refs in split {split!r}")

    def _image_path(self, index: int) -> Path:
        return self.image_dir / self.items[index]["file_name"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return self._sample(
            index, self._image_path(index), item["question"], item["answer"], item["segs"], image_id=item["image_id"]
        )


def _multi_target_qa(names: Sequence[str]) -> tuple[str, str]:
    """The released short multi-target templates (first of each list): question and answer for 1-3 names."""
    question = REFER_QUESTION.format(sent=_join(list(names)))
    answer = REFER_ANSWER if len(names) == 1 else _join([f"{n} is {SEG_PLACEHOLDER}" for n in names]) + "."
    return question, answer


SEM_SEG_SOURCES: tuple[SemSegSource, ...] = ("ade20k", "cocostuff", "pascal_part", "paco_lvis")


class SemSegDataset(_SegmentationDataset):
    """The semantic- and part-segmentation sources of the released training mix (`sem_seg_dataset.py`).

    One item per image; each draw picks up to `classes_per_question` of the classes present (label maps) or
    instances (part datasets) at random, as the released loader does, and asks for them in one question
    ("Can you segment the A, B and C in this image?"), one mask per class / instance.

    Layouts under `root` (the released `dataset_dir`):
      ade20k:      ade20k/images/training/*.jpg, ade20k/annotations/training/*.png (0 unlabelled, k + 1 = class
                   k), class names in ade20k/ade20k_classes.json (the official repository's
                   `utils/ade20k_classes.json`)
      cocostuff:   cocostuff/train2017/*.png (class index, 255 unlabelled; classes whose name holds "-" are
                   ignored as released), images coco/train2017/*.jpg, names cocostuff/cocostuff_classes.txt
                   (the official `utils/cocostuff_classes.txt`: a header line, then "k: name")
      paco_lvis:   vlpart/paco/annotations/paco_lvis_v1_train.json (COCO; "object:part" or "object"
                   categories, "_(...)" suffixes dropped), images coco/<file_name>
      pascal_part: vlpart/pascal_part/train.json (COCO; "object:part"), images
                   vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/<file_name>
    A part is named "object part" (the released code draws that or "the part of the object").
    """

    def __init__(
        self,
        root: str | Path,
        source: SemSegSource,
        image_size: int,
        patch_size: int,
        normalisation: Normalisation = "sam",
        classes_per_question: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__(image_size, patch_size, normalisation)
        if source not in SEM_SEG_SOURCES:
            raise ValueError(f"sem_seg source {source!r}: choose from {list(SEM_SEG_SOURCES)}")
        self.root, self.source, self.name = Path(root), source, source
        self.classes_per_question = classes_per_question
        self.seed = seed
        getattr(self, f"_init_{source}")()
        if not self.items:
            raise ValueError(f"{self.root}: no {source} images found (see SemSegDataset for the layout)")

    @staticmethod
    def _need(path: Path, what: str) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"{what} not found: {path}")
        return path

    def _init_ade20k(self) -> None:
        base = self.root / "ade20k"
        self.classes = json.loads(self._need(base / "ade20k_classes.json", "ADE20K class names").read_text())
        images = sorted(self._need(base / "images" / "training", "ADE20K images").glob("*.jpg"))
        labels = base / "annotations" / "training"
        self.items = [{"image": p, "label": labels / (p.stem + ".png")} for p in images]

    def _init_cocostuff(self) -> None:
        names = self._need(self.root / "cocostuff" / "cocostuff_classes.txt", "COCO-Stuff class names")
        self.classes = [line.strip().split(": ")[-1] for line in names.read_text().splitlines()[1:]]
        labels = sorted(self._need(self.root / "cocostuff" / "train2017", "COCO-Stuff labels").glob("*.png"))
        self.items = [{"image": self.root / "coco" / "train2017" / (p.stem + ".jpg"), "label": p} for p in labels]

    def _init_parts(self, json_path: Path, image_dir: Path) -> None:
        data = json.loads(self._need(json_path, f"{self.source} annotations").read_text())
        names = {}
        for cat in data["categories"]:
            pieces = [piece.split("_(")[0] for piece in cat["name"].strip().split(":")]
            names[cat["id"]] = " ".join(pieces)  # "object part" or "object"
        anns: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            anns.setdefault(ann["image_id"], []).append(ann)
        self.items = [
            {
                "image": image_dir / image["file_name"],
                "size": (image["height"], image["width"]),
                "anns": [(names[a["category_id"]], a["segmentation"]) for a in anns[image["id"]]],
            }
            for image in data["images"]
            if anns.get(image["id"])
        ]

    def _init_paco_lvis(self) -> None:
        self._init_parts(self.root / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json", self.root / "coco")

    def _init_pascal_part(self) -> None:
        base = self.root / "vlpart" / "pascal_part"
        self._init_parts(base / "train.json", base / "VOCdevkit" / "VOC2010" / "JPEGImages")

    def _image_path(self, index: int) -> Path:
        return Path(self.items[index]["image"])  # its label map belongs to it: one file per item either way

    def _pick(self, count: int) -> list[int]:
        # drawn from NumPy's global generator, which `RobustDataset` seeds per (seed, epoch, index) in training:
        # a resumed run draws the same classes whichever worker loads the item
        rng = np.random.default_rng([self.seed, int(np.random.randint(2**31))])
        return sorted(rng.choice(count, size=min(count, self.classes_per_question), replace=False).tolist())

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if "anns" in item:
            chosen = [item["anns"][k] for k in self._pick(len(item["anns"]))]
            question, answer = _multi_target_qa([name for name, _ in chosen])
            return self._sample(index, item["image"], question, answer, [seg for _, seg in chosen])
        try:
            with Image.open(item["label"]) as label_image:
                label = np.array(label_image).astype(np.int64)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
            raise SampleLoadError(item["label"], str(error) or type(error).__name__) from None
        if self.source == "ade20k":  # 0 = unlabelled; k + 1 = class k
            label = np.where(label == 0, 255, label - 1)
        present = [int(c) for c in np.unique(label) if c != 255 and c < len(self.classes)]
        if self.source == "cocostuff":  # the released loader ignores the "-" classes (e.g. "wall-brick")
            present = [c for c in present if "-" not in self.classes[c]]
        if not present:
            raise SampleLoadError(item["label"], "no labelled class")
        chosen = [present[k] for k in self._pick(len(present))]
        question, answer = _multi_target_qa([self.classes[c] for c in chosen])
        return self._sample(index, item["image"], question, answer, [label == c for c in chosen])


class LlavaInstructDataset(_SegmentationDataset):
    """LLaVA-Instruct-150K (`llava_instruct_150k.json`): the first human/gpt turn of each conversation, no masks.

    The paper mixes it in (rate 2 of 17) to keep the LMM's chat ability; its answers have no `{seg}`, so only
    the text loss applies. Entries without a human turn followed by a gpt turn are skipped and counted.
    """

    name = "llava_instruct"

    def __init__(
        self,
        json_path: str | Path,
        image_dir: str | Path,
        image_size: int,
        patch_size: int,
        normalisation: Normalisation = "sam",
    ) -> None:
        super().__init__(image_size, patch_size, normalisation)
        json_path, self.image_dir = Path(json_path), Path(image_dir)
        if not json_path.is_file():
            raise FileNotFoundError(f"LLaVA-Instruct file not found: {json_path} (expected llava_instruct_150k.json)")
        self.skipped = 0
        for record in json.loads(json_path.read_text()):
            turns = record.get("conversations") or []
            if (
                "image" not in record
                or len(turns) < 2
                or turns[0].get("from") != "human"
                or turns[1].get("from") != "gpt"
            ):
                self.skipped += 1
                continue
            question = turns[0]["value"].replace("<image>", "").strip()
            answer = turns[1]["value"].replace(SEG_PLACEHOLDER, "")
            self.items.append({"image": record["image"], "question": question, "answer": answer})

    def _image_path(self, index: int) -> Path:
        return self.image_dir / self.items[index]["image"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return self._sample(index, self._image_path(index), item["question"], item["answer"], [])


def collate(samples: list[dict[str, Any]]) -> PixelLMBatch:
    """Stack the padded images; keep masks, sizes and strings as lists."""
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "patch_mask": torch.stack([s["patch_mask"] for s in samples]),
        "resized_size": torch.stack([s["resized_size"] for s in samples]),
        "original_size": [s["original_size"] for s in samples],
        "question": [s["question"] for s in samples],
        "answer": [s["answer"] for s in samples],
        "masks": [s["masks"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples]),
        "image_id": torch.tensor([s.get("image_id", s["index"]) for s in samples]),
        "image_path": [s["image_path"] for s in samples],
    }


class PixelLMDataModule(LightningDataModule):
    """MUSE and refCOCO/+/g for training (mixed by `sample_rates`) and evaluation.

    Args:
        muse_root: directory with the MUSE JSONs and images (None: no MUSE).
        muse_image_dir: image folder, relative to `muse_root` (or absolute): the released layout keeps COCO
            under `refer_seg/images/mscoco/images` with `train2014/`, `train2017/`, `val2017/` in it.
        muse_image_layout: `official`: `file_name` entries under `<muse_image_dir>/train2014/`; `flat`: directly
            under `muse_image_dir` (the synthetic writer's). `coco_url` entries: `<muse_image_dir>/<train2017|val2017>/`.
        muse_train: the training JSON's file name under `muse_root` (None: no MUSE training).
        muse_val: the validation JSON's file name under `muse_root` (None: no MUSE validation).
        muse_test: the test JSONs' file names under `muse_root` (the few- and the many-target split).
        refer_root: refer layout root (None: no refCOCO).
        refer_train: `dataset|split_by` sets to train on, e.g. `refcoco|unc`, `refcocog|umd`.
        refer_val: `dataset|split_by|split` sets to validate on (one expression per question).
        refer_test: `dataset|split_by|split` sets to test on (one expression per question).
        refer_expressions_per_question: training questions pack up to this many referring expressions of one
            image (released 3).
        sem_seg_root: the released `dataset_dir` holding the semantic-segmentation sources (None: none).
        sem_seg_sources: which of `ade20k`, `cocostuff`, `pascal_part`, `paco_lvis` (default all four; the
            released default also lists mapillary, not read here); each is drawn equally often.
        vqa_json: the LLaVA-Instruct-150K JSON (None: no VQA in the mixture).
        vqa_image_dir: its COCO train2017 image folder.
        sample_rates: training mixture weights per source (`sem_seg`, `refer`, `vqa`, `muse`); the released
            recipe mixes sem_seg 2 : refer_seg 9 : vqa 2 : MUSE 4.
        samples_per_epoch: training items each process (GPU) draws per epoch, the released meaning (its
            `samples_per_epoch` is the global count, bs x accumulation x steps x world size, split by the
            distributed sampler): the sampler draws this many times the world size, and Lightning's sampler
            wrapper gives each rank its share. None: the sum of the sources' sizes, per process.
        synthetic_images: if > 0 and `muse_root` has no `muse_train`, write the synthetic world there as
            MUSE first (train: this many scenes; val: a tenth).
        synthetic_image_size: side of the synthetic scenes.
        synthetic_seed: seed of the synthetic world, and of the sem_seg sources' class draws.
        image_size: the CLIP input side (the model's `vision` config).
        patch_size: the CLIP patch side (the model's `vision` config).
        normalisation: `sam` (released code) or `clip`.
        batch_size: questions per process in a training batch.
        eval_batch_size: questions per process in an evaluation batch.
        num_workers: loader worker processes.
        val_limit: evaluate on at most this many questions per validation set (None: all).
        max_failure_fraction: unreadable images are skipped and counted once each; more than this fraction of
            a split's images stops the run naming them.
    """

    def __init__(
        self,
        muse_root: str | None = None,
        muse_image_dir: str = "images",
        muse_image_layout: Literal["official", "flat"] = "official",
        muse_train: str | None = "muse_train.json",
        muse_val: list[str] | None = None,
        muse_test: list[str] | None = None,
        refer_root: str | None = None,
        refer_train: list[str] | None = None,
        refer_val: list[str] | None = None,
        refer_test: list[str] | None = None,
        refer_expressions_per_question: int = 3,
        sem_seg_root: str | None = None,
        sem_seg_sources: list[SemSegSource] | None = None,
        vqa_json: str | None = None,
        vqa_image_dir: str | None = None,
        sample_rates: dict[TrainingSource, float] | None = None,
        samples_per_epoch: int | None = None,
        synthetic_images: int = 0,
        synthetic_image_size: int = 64,
        synthetic_seed: int = 0,
        image_size: int = 448,
        patch_size: int = 14,
        normalisation: Normalisation = "sam",
        batch_size: int = 2,
        eval_batch_size: int = 8,
        num_workers: int = 2,
        val_limit: int | None = None,
        max_failure_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.muse_val = ["muse_val.json"] if muse_val is None else muse_val
        self.muse_test = ["muse_test_less.json", "muse_test_many.json"] if muse_test is None else muse_test
        self.sample_rates = {"sem_seg": 2.0, "refer": 9.0, "vqa": 2.0, "muse": 4.0, **(sample_rates or {})}
        self.sem_seg_sources = list(SEM_SEG_SOURCES) if sem_seg_sources is None else sem_seg_sources
        self.train_set: Dataset | None = None
        self.weights: list[float] = []
        self.val_sets: list[Dataset] = []
        self.test_sets: list[Dataset] = []

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.synthetic_images > 0 and hp.muse_root and not (Path(hp.muse_root) / hp.muse_train).exists():
            from vislang.shared.data.synthetic.segmentation_writers import write_muse

            world = SyntheticWorld(
                seed=hp.synthetic_seed, image_size=hp.synthetic_image_size, num_images=hp.synthetic_images
            )
            image_root = Path(hp.muse_root)
            write_muse(world, image_root, "val", json_name=self.muse_val[0] if self.muse_val else "muse_val.json")
            # MUSE's test split is cut into few-target (<= 3) and many-target (> 3) questions
            write_muse(world, image_root, "test", max_targets=3, json_name="muse_test_less.json")
            write_muse(world, image_root, "test", min_targets=4, json_name="muse_test_many.json")
            write_muse(world, image_root, "train", json_name=hp.muse_train)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit" and self.train_set is None:
            self.train_set, self.weights = self._training_mixture()
        if stage in ("fit", "validate") and not self.val_sets:
            self.val_sets = [_limited(s, hp.val_limit) for s in self._evaluation_sets(self.muse_val, hp.refer_val)]
        if stage in ("test", "predict") and not self.test_sets:
            self.test_sets = self._evaluation_sets(self.muse_test, hp.refer_test)

    # ---- the training mixture ------------------------------------------------------------------------

    def _training_mixture(self) -> tuple[RobustDataset, list[float]]:
        """The released training mix (`train_ds.py --sample_rates`): each kind of source is drawn with its
        rate, split equally among that kind's datasets and uniformly over each dataset's items."""
        kinds: list[tuple[TrainingSource, list[_SegmentationDataset]]] = [
            ("muse", self._muse_training()),
            ("refer", self._refer_training()),
            ("sem_seg", self._sem_seg_training()),
            ("vqa", self._vqa_training()),
        ]
        sources, weights = [], []
        for kind, datasets in kinds:
            for dataset in datasets:
                sources.append(dataset)
                weights += [self.sample_rates[kind] / len(datasets) / max(len(dataset), 1)] * len(dataset)
        if not sources:
            raise ValueError(
                "no training data: set muse_root (with muse_train), refer_root with refer_train, sem_seg_root or vqa_json"
            )
        return RobustDataset(_Sources(sources), self.hparams.max_failure_fraction), weights

    def _muse_training(self) -> list[_SegmentationDataset]:
        hp = self.hparams
        return [self._muse(hp.muse_train)] if hp.muse_root and hp.muse_train else []

    def _refer_training(self) -> list[_SegmentationDataset]:
        """refCOCO/+/g and refclef training splits, up to `refer_expressions_per_question` sentences a question."""
        hp = self.hparams
        if not hp.refer_root:
            return []
        datasets: list[_SegmentationDataset] = []
        for spec in hp.refer_train or []:
            dataset, split_by = spec.split("|")
            per_question = hp.refer_expressions_per_question
            datasets.append(
                ReferDataset(
                    hp.refer_root, dataset, split_by, "train", expressions_per_question=per_question, **self._sizes
                )
            )
        return datasets

    def _sem_seg_training(self) -> list[_SegmentationDataset]:
        hp = self.hparams
        if not hp.sem_seg_root:
            return []
        return [
            SemSegDataset(hp.sem_seg_root, source, seed=hp.synthetic_seed, **self._sizes)
            for source in self.sem_seg_sources
        ]

    def _vqa_training(self) -> list[_SegmentationDataset]:
        hp = self.hparams
        return [LlavaInstructDataset(hp.vqa_json, hp.vqa_image_dir or ".", **self._sizes)] if hp.vqa_json else []

    # ---- evaluation sets -----------------------------------------------------------------------------

    def _evaluation_sets(self, muse_files: list[str], refer_specs: list[str] | None) -> list[_SegmentationDataset]:
        """MUSE files (Hungarian-matched), then refer sets (`dataset|split_by|split`, answer order)."""
        hp = self.hparams
        sets = [self._muse(name) for name in muse_files] if hp.muse_root else []
        return sets + ([self._refer(spec) for spec in (refer_specs or [])] if hp.refer_root else [])

    @property
    def _sizes(self) -> dict[str, Any]:
        """The image arguments every dataset takes: the CLIP input size, its patch and the normalisation."""
        hp = self.hparams
        return {"image_size": hp.image_size, "patch_size": hp.patch_size, "normalisation": hp.normalisation}

    def _muse(self, name: str) -> MuseDataset:
        root = Path(self.hparams.muse_root)
        image_dir, layout = root / self.hparams.muse_image_dir, self.hparams.muse_image_layout
        return MuseDataset(root / name, image_dir, image_layout=layout, **self._sizes)

    def _refer(self, spec: str) -> ReferDataset:
        parts = spec.split("|")
        if len(parts) != 3:
            raise ValueError(f"refer set {spec!r}: expected 'dataset|split_by|split', e.g. 'refcocog|umd|val'")
        return ReferDataset(self.hparams.refer_root, *parts, **self._sizes)

    def eval_sets(self, stage: EvalStage) -> list[EvalSet]:
        """The `PixelLMEvalData` contract: name and matching of each evaluation loader of `stage`."""
        sets = self.val_sets if stage == "validate" else self.test_sets
        return [EvalSet(s.name, s.matching) for s in sets]

    # ---- loaders -------------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        """`samples_per_epoch` draws per process, weighted by the sources' sample rates."""
        hp = self.hparams
        return train_loader(
            self.train_set,
            hp.batch_size,
            self.trainer,
            collate=collate,
            num_workers=hp.num_workers,
            drop_last=False,
            weights=self.weights,
            num_samples=hp.samples_per_epoch or len(self.train_set),
        )

    def val_dataloader(self) -> list[DataLoader]:
        return self._evaluation_loaders(self.val_sets)

    def test_dataloader(self) -> list[DataLoader]:
        return self._evaluation_loaders(self.test_sets)

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()

    def _evaluation_loaders(self, sets: list[Dataset]) -> list[DataLoader]:
        """One loader per evaluation set (scored separately), each question on exactly one rank."""
        hp = self.hparams
        return [
            eval_loader(
                s,
                hp.eval_batch_size,
                collate=collate,
                num_workers=hp.num_workers,
                max_failure_fraction=hp.max_failure_fraction,
            )
            for s in sets
        ]


class _Sources(ConcatDataset):
    """The training mixture: the sources one after another, each index naming its image (`sample_file`)."""

    def sample_file(self, index: int) -> str:
        source = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[source - 1] if source else 0
        return self.datasets[source].sample_file(index - start)


class _Limited(Dataset):
    def __init__(self, dataset: _SegmentationDataset, limit: int) -> None:
        self.dataset, self.limit, self.name, self.matching = dataset, limit, dataset.name, dataset.matching

    def __len__(self) -> int:
        return min(self.limit, len(self.dataset))

    def sample_file(self, index: int) -> str:
        return self.dataset.sample_file(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]


def _limited(dataset: _SegmentationDataset, limit: int | None) -> Dataset:
    return dataset if limit is None else _Limited(dataset, limit)
