"""Readers for the image-text datasets of the single-stream papers and the VQA entry, in their released formats.

Every reader returns plain frozen records (paths, strings, labels) and decodes no image: datasets decide
how to load and transform pixels (``vislang.shared.data.robust`` skips and counts files that fail). A
missing file or key stops at once with one line naming the file, the entry and the key.

========================  ======================================================================
format                    files
========================  ======================================================================
VQA v2                    ``v2_OpenEnded_mscoco_{subtype}_questions.json``,
                          ``v2_mscoco_{subtype}_annotations.json`` (absent for test2015),
                          ``{subtype}/COCO_{subtype}_{image_id:012d}.jpg``
Karpathy splits           ``dataset_coco.json`` / ``dataset_flickr30k.json``
                          (``images[*].{filepath?, filename, split, sentences[*].raw, cocoid?|imgid}``)
Visual Genome regions     ``region_descriptions.json`` + ``VG_100K/{image_id}.jpg``
NLVR2                     ``{train,dev,test1}.json`` JSON lines + ``{split-set-pair}-img{0,1}.png``
SNLI-VE                   ``snli_ve_{train,dev,test}.jsonl`` + ``{Flikr30kID}`` (sic) images
========================  ======================================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "KARPATHY_SPLITS",
    "SNLI_VE_LABELS",
    "CaptionedImage",
    "EntailmentExample",
    "NLVR2Example",
    "VQAExample",
    "nlvr2_pair_prefix",
    "read_karpathy",
    "read_nlvr2",
    "read_snli_ve",
    "read_vg_regions",
    "read_vqa_v2",
    "vqa_v2_image_name",
    "vqa_v2_paths",
]

PathLike = str | os.PathLike[str]

KARPATHY_SPLITS = ("train", "restval", "val", "test")
"""Split names in Karpathy's files; papers train on ``train`` + ``restval`` (113,287 COCO images)."""

SNLI_VE_LABELS = ("contradiction", "neutral", "entailment")
"""SNLI-VE classes; a label's index is its position (ALBEF's numbering)."""


# ---- shared plumbing --------------------------------------------------------------------------------


def _require_file(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {what})")
    return path


def _load_json(path: PathLike, what: str) -> Any:
    path = _require_file(path, what)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def _iter_jsonl(path: PathLike, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-empty line; a broken line names its number."""
    path = _require_file(path, what)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line")
            yield number, record


def _field(record: dict[str, Any], key: str, where: str) -> Any:
    try:
        return record[key]
    except KeyError:
        raise ValueError(f"{where}: missing key {key!r}") from None


# ---- VQA v2 -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VQAExample:
    """One VQA v2 question; ``answers`` are the ten raw annotator answers (empty without annotations)."""

    question_id: int
    image_id: int
    image_path: Path
    question: str
    answers: tuple[str, ...]
    multiple_choice_answer: str | None
    question_type: str | None
    answer_type: str | None


def vqa_v2_image_name(subtype: str, image_id: int) -> str:
    """COCO's file name for an image of a VQA v2 split, e.g. ``COCO_val2014_000000262148.jpg``."""
    return f"COCO_{subtype}_{image_id:012d}.jpg"


def vqa_v2_paths(root: PathLike, subtype: str) -> tuple[Path, Path | None, Path]:
    """(questions JSON, annotations JSON or None when absent, image directory) of ``subtype`` under ``root``.

    ``subtype`` is VQA's ``data_subtype``: ``train2014``, ``val2014``, ``test2015`` or ``test-dev2015``
    (whose images live in ``test2015``).
    """
    root = Path(root)
    annotations = root / f"v2_mscoco_{subtype}_annotations.json"
    image_subtype = "test2015" if subtype == "test-dev2015" else subtype
    return (
        root / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
        annotations if annotations.is_file() else None,
        root / image_subtype,
    )


def read_vqa_v2(questions_json: PathLike, annotations_json: PathLike | None, image_dir: PathLike) -> list[VQAExample]:
    """Join VQA v2 questions with their annotations (if given) in question order.

    Image paths follow COCO's naming with the questions file's ``data_subtype`` (test-dev questions name
    the test2015 images). Every question must have an annotation and vice versa: the official evaluator
    asserts the same, so a mismatch here would only fail later.
    """
    what = "VQA v2 questions: {'data_subtype', 'questions': [{'image_id', 'question', 'question_id'}]}"
    data = _load_json(questions_json, what)
    subtype = _field(data, "data_subtype", str(questions_json))
    image_subtype = "test2015" if subtype == "test-dev2015" else subtype
    questions = _field(data, "questions", str(questions_json))
    annotations: dict[int, dict[str, Any]] = {}
    if annotations_json is not None:
        what = "VQA v2 annotations: {'annotations': [{'question_id', 'answers', ...}]}"
        records = _field(_load_json(annotations_json, what), "annotations", str(annotations_json))
        for k, record in enumerate(records):
            annotations[int(_field(record, "question_id", f"{annotations_json}: annotations[{k}]"))] = record
    image_dir = Path(image_dir)
    examples = []
    for k, record in enumerate(questions):
        where = f"{questions_json}: questions[{k}]"
        question_id = int(_field(record, "question_id", where))
        image_id = int(_field(record, "image_id", where))
        answers: tuple[str, ...] = ()
        mc_answer = question_type = answer_type = None
        if annotations_json is not None:
            annotation = annotations.pop(question_id, None)
            if annotation is None:
                raise ValueError(f"{annotations_json}: no annotation for question_id {question_id}")
            where = f"{annotations_json}: question_id {question_id}"
            answers = tuple(str(_field(a, "answer", where)) for a in _field(annotation, "answers", where))
            mc_answer = annotation.get("multiple_choice_answer")
            question_type, answer_type = annotation.get("question_type"), annotation.get("answer_type")
        examples.append(
            VQAExample(
                question_id=question_id,
                image_id=image_id,
                image_path=image_dir / vqa_v2_image_name(image_subtype, image_id),
                question=str(_field(record, "question", where)),
                answers=answers,
                multiple_choice_answer=mc_answer,
                question_type=question_type,
                answer_type=answer_type,
            )
        )
    if annotations:
        extra = sorted(annotations)[:3]
        raise ValueError(f"{annotations_json}: {len(annotations)} annotations have no question (e.g. ids {extra})")
    return examples


# ---- captions: Karpathy splits and Visual Genome regions -------------------------------------------


@dataclass(frozen=True)
class CaptionedImage:
    """An image with its captions (Karpathy) or region phrases (Visual Genome)."""

    image_id: int
    image_path: Path
    captions: tuple[str, ...]
    split: str


def read_karpathy(dataset_json: PathLike, image_root: PathLike, splits: Sequence[str]) -> list[CaptionedImage]:
    """The images of ``splits`` from Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json``.

    ``image_root / filepath / filename`` for COCO (filepath is ``train2014``/``val2014``), ``image_root /
    filename`` for Flickr30k (no filepath). ``image_id`` is COCO's ``cocoid`` when present, else ``imgid``.
    """
    unknown = sorted(set(splits) - set(KARPATHY_SPLITS))
    if unknown:
        raise ValueError(f"unknown Karpathy split(s) {unknown}; choose from {list(KARPATHY_SPLITS)}")
    what = "Karpathy split file: {'images': [{'filename', 'split', 'sentences': [{'raw'}], 'imgid'}]}"
    data = _load_json(dataset_json, what)
    image_root = Path(image_root)
    wanted = set(splits)
    out = []
    for k, record in enumerate(_field(data, "images", str(dataset_json))):
        where = f"{dataset_json}: images[{k}]"
        split = _field(record, "split", where)
        if split not in wanted:
            continue
        folder = image_root / record["filepath"] if record.get("filepath") else image_root
        image_id = record["cocoid"] if "cocoid" in record else _field(record, "imgid", where)
        captions = tuple(str(_field(s, "raw", where)) for s in _field(record, "sentences", where))
        out.append(CaptionedImage(int(image_id), folder / _field(record, "filename", where), captions, split))
    return out


def read_vg_regions(
    region_descriptions_json: PathLike, image_dir: PathLike, max_per_image: int | None = None
) -> list[CaptionedImage]:
    """Visual Genome ``region_descriptions.json`` as one record per image, region phrases as captions.

    SOHO and Pixel-BERT pair each phrase with the whole image (the boxes are not used in pre-training);
    ``max_per_image`` keeps the first phrases of crowded images.
    """
    what = "Visual Genome region_descriptions.json: [{'id', 'regions': [{'phrase', ...}]}]"
    data = _load_json(region_descriptions_json, what)
    image_dir = Path(image_dir)
    out = []
    for k, record in enumerate(data):
        where = f"{region_descriptions_json}: [{k}]"
        image_id = int(record["id"] if "id" in record else _field(record, "image_id", where))
        phrases = tuple(str(_field(r, "phrase", where)).strip() for r in _field(record, "regions", where))
        phrases = tuple(p for p in phrases if p)[:max_per_image]
        if phrases:
            out.append(CaptionedImage(image_id, image_dir / f"{image_id}.jpg", phrases, "train"))
    return out


# ---- NLVR2 ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NLVR2Example:
    """A sentence about a pair of images, true or false."""

    identifier: str
    sentence: str
    label: bool
    left_image: Path
    right_image: Path


def nlvr2_pair_prefix(identifier: str) -> str:
    """``split-setid-pairid`` of an identifier ``split-setid-pairid-sentenceid``: the images' name prefix."""
    parts = identifier.split("-")
    if len(parts) != 4:
        raise ValueError(f"NLVR2 identifier {identifier!r} is not split-setid-pairid-sentenceid")
    return "-".join(parts[:3])


def read_nlvr2(jsonl: PathLike, image_dir: PathLike) -> list[NLVR2Example]:
    """lil-lab's NLVR2 JSON lines; images ``image_dir[/directory]/{split-set-pair}-img0.png`` and ``-img1``.

    Only the training file has ``directory`` (the 100 sub-folders of the train images).
    """
    image_dir = Path(image_dir)
    out = []
    for number, record in _iter_jsonl(jsonl, "NLVR2 JSON lines: {'identifier', 'sentence', 'label'}"):
        where = f"{jsonl}:{number}"
        identifier = str(_field(record, "identifier", where))
        label = str(_field(record, "label", where)).lower()
        if label not in ("true", "false"):
            raise ValueError(f"{where}: label must be 'True' or 'False', got {record['label']!r}")
        folder = image_dir / str(record["directory"]) if "directory" in record else image_dir
        prefix = nlvr2_pair_prefix(identifier)
        out.append(
            NLVR2Example(
                identifier=identifier,
                sentence=str(_field(record, "sentence", where)),
                label=label == "true",
                left_image=folder / f"{prefix}-img0.png",
                right_image=folder / f"{prefix}-img1.png",
            )
        )
    return out


# ---- SNLI-VE ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntailmentExample:
    """A hypothesis about an image labelled entailment, neutral or contradiction (premise = the image)."""

    pair_id: str
    image_path: Path
    hypothesis: str
    label: str


def read_snli_ve(jsonl: PathLike, image_dir: PathLike) -> list[EntailmentExample]:
    """necla-ml's ``snli_ve_{train,dev,test}.jsonl``: image ``Flikr30kID`` (sic), ``sentence2``, ``gold_label``.

    ``sentence1`` (the caption the hypothesis was written against) is deliberately not returned: the task's
    premise is the image, and feeding the caption would leak the answer.
    """
    image_dir = Path(image_dir)
    out = []
    for number, record in _iter_jsonl(jsonl, "SNLI-VE JSON lines: {'Flikr30kID', 'sentence2', 'gold_label'}"):
        where = f"{jsonl}:{number}"
        label = str(_field(record, "gold_label", where))
        if label not in SNLI_VE_LABELS:
            raise ValueError(f"{where}: gold_label must be one of {list(SNLI_VE_LABELS)}, got {label!r}")
        image = str(_field(record, "Flikr30kID", where))
        image = image if image.endswith(".jpg") else f"{image}.jpg"
        pair_id = str(record.get("pairID", f"{Path(jsonl).stem}:{number}"))
        out.append(EntailmentExample(pair_id, image_dir / image, str(_field(record, "sentence2", where)), label))
    return out
