"""The official VQA accuracy (GT-Vision-Lab ``vqaEval.py``), bit for bit, in both versions still in use.

Versions (see ``reference/soho_pixelbert_vqa.md`` §4):

* ``"2021"`` -- the official script since commit a013f00 (2021-03-11) and the EvalAI server: strip ``\\n``,
  ``\\t`` and surrounding spaces from the ten answers and the prediction; only **if the ten answers are not
  all identical**, apply ``processPunctuation`` + ``processDigitArticle`` to all of them and to the
  prediction. With unanimous annotators nothing is normalised -- not even the prediction's case.
* ``"2017"`` -- before a013f00, still in LAVIS ``vqa_eval.py`` and MCAN ``vqaEval.py``: the prediction is
  always normalised (punctuation + digits/articles); the ground truth only gets ``processPunctuation``,
  only when annotators disagree, and is never stripped.

In both, accuracy = mean over the ten leave-one-out subsets of ``min(1, #matches among the other 9 / 3)``.

The word lists below (punctuation, number words, articles, contractions) are *data* transcribed from the
official BSD-licensed ``vqaEval.py``; the code around them is our own. The official regexes and their
quirks are kept deliberately: the period regex ``(?!<=\\d)(\\.)(?!\\d)`` is a negative *look-ahead* for the
literal ``<=`` (so every period not followed by a digit goes), and ``re.UNICODE`` is passed where
``re.sub`` expects ``count`` (so at most 32 periods are removed).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vislang.shared.metrics.ddp import SampleMetric

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "VQAAccuracy",
    "aggregate_vqa",
    "build_answer_vocab",
    "evaluate_vqa",
    "normalize_vocab_answer",
    "process_digit_article",
    "process_punctuation",
    "read_vqa_results",
    "vqa_accuracy",
    "vqa_prior_baselines",
    "vqa_soft_score",
    "vqa_soft_targets",
    "write_vqa_results",
]

VQA_VERSIONS = ("2021", "2017")

# --- data of the official vqaEval.py (BSD-2-Clause, GT-Vision-Lab/VQA), transcribed verbatim ----------
PUNCTUATION: tuple[str, ...] = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a look-ahead, not a look-behind
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # sic: the official call passes re.UNICODE (= 32) as `count`
# -------------------------------------------------------------------------------------------------------


def process_punctuation(text: str) -> str:
    """``VQAEval.processPunctuation``: delete or blank out punctuation, then strip periods.

    Each punctuation character is *deleted* if it is adjacent to a space anywhere in the input, or if the
    input contains a digit-comma-digit group; otherwise it is *replaced by a space*. Both tests look at the
    original text. Then at most 32 periods not followed by a digit are removed. Apostrophes and colons stay.
    """
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        out = out.replace(p, "") if (p + " " in text or " " + p in text) or has_digit_comma else out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """``VQAEval.processDigitArticle``: lower-case, number words to digits, drop articles, contractions.

    The contraction lookup runs on lower-cased words, so the table's capitalised keys (``"Im"``, ``"Ive"``,
    ``"Id've"``) never match -- "im" stays "im", as in the official script.
    """
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, answers: list[str], version: str = "2021") -> float:
    """Official VQA accuracy of one prediction against the (normally ten) human answers, in [0, 1].

    Args:
        prediction: The model's answer string, as it would be written to the results JSON.
        answers: The annotators' raw answers (``annotations[i]["answers"][j]["answer"]``).
        version: ``"2021"`` (official now, default) or ``"2017"`` (LAVIS / MCAN); see the module docstring.

    Returns:
        Mean over the leave-one-out subsets of ``min(1, matches / 3)``: 0, 0.3, 0.6, 0.9 or 1.0 for a
        prediction matching 0, 1, 2, 3 or >= 4 of ten answers.
    """
    if version not in VQA_VERSIONS:
        raise ValueError(f"version must be one of {VQA_VERSIONS}, got {version!r}")
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    if version == "2021":
        gts = [_clean(a) for a in answers]
        pred = _clean(prediction)
        if len(set(gts)) > 1:
            gts = [process_digit_article(process_punctuation(a)) for a in gts]
            pred = process_digit_article(process_punctuation(pred))
    else:
        gts = list(answers)
        pred = process_digit_article(process_punctuation(_clean(prediction)))
        if len(set(gts)) > 1:
            gts = [process_punctuation(a) for a in gts]
    hits = [g == pred for g in gts]
    total = sum(hits)
    # The official loop: for each answer i, count matches among the others ("10 choose 9" subsets).
    per_subset = [min(1.0, float(total - hit) / 3) for hit in hits]
    return float(sum(per_subset)) / len(per_subset)


def aggregate_vqa(
    accuracies: Sequence[float],
    answer_types: Sequence[str] | None = None,
    question_types: Sequence[str] | None = None,
    ndigits: int | None = 2,
) -> dict[str, Any]:
    """``VQAEval.setAccuracy``: overall, per answer type and per question type, in percent.

    Args:
        accuracies: Per-question accuracies in [0, 1], in evaluation order.
        answer_types: Per-question ``answer_type`` ("yes/no", "number", "other"), or ``None``.
        question_types: Per-question ``question_type`` (the 65 prefixes), or ``None``.
        ndigits: Rounding as the official ``round(100 * mean, 2)``; ``None`` keeps full precision.

    Returns:
        ``{"overall": float, "perAnswerType": {type: float}, "perQuestionType": {type: float}}`` (the
        official key names).
    """
    if not accuracies:
        raise ValueError("aggregate_vqa needs at least one question")

    def pct(values: list[float]) -> float:
        value = 100 * float(sum(values)) / len(values)
        return round(value, ndigits) if ndigits is not None else value

    result: dict[str, Any] = {"overall": pct(list(accuracies))}
    for key, types in (("perAnswerType", answer_types), ("perQuestionType", question_types)):
        groups: dict[str, list[float]] = defaultdict(list)
        if types is not None:
            if len(types) != len(accuracies):
                raise ValueError(f"{key}: got {len(types)} types for {len(accuracies)} questions")
            for t, acc in zip(types, accuracies, strict=True):
                groups[t].append(acc)
        result[key] = {t: pct(v) for t, v in groups.items()}
    return result


def vqa_prior_baselines(train: Iterable[Any], evaluated: Sequence[Any], version: str = "2021") -> dict[str, Any]:
    """The VQA paper's answer-prior baselines, scored with the official accuracy on ``evaluated``.

    ``majority``: always the most common training ``multiple_choice_answer``; ``per_question_type``: the
    most common training answer of the question's ``question_type`` (the majority answer for unseen
    types). A model that does not look at the image can reach the second one, so a VQA score means
    "grounded" only above it. Items need ``multiple_choice_answer``, ``question_type`` and ``answers``
    (``vislang.shared.data.vl.VQAExample``). Returns percentages and the majority answer.
    """
    overall: Counter[str] = Counter()
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    for example in train:
        overall[example.multiple_choice_answer] += 1
        per_type[example.question_type or ""][example.multiple_choice_answer] += 1
    if not overall or not evaluated:
        raise ValueError("vqa_prior_baselines needs training and evaluated questions")
    majority = overall.most_common(1)[0][0]
    by_type = {t: c.most_common(1)[0][0] for t, c in per_type.items()}

    def score(answer_of: Any) -> float:
        return 100 * sum(vqa_accuracy(answer_of(e), list(e.answers), version) for e in evaluated) / len(evaluated)

    return {
        "majority": score(lambda e: majority),
        "per_question_type": score(lambda e: by_type.get(e.question_type or "", majority)),
        "answer": majority,
    }


def _id_mismatch_message(missing: Iterable[int], extra: Iterable[int], duplicated: Iterable[int] = ()) -> str:
    parts = []
    for name, ids in (("missing", missing), ("extra", extra), ("duplicated", duplicated)):
        ids = sorted(ids)
        if ids:
            shown = ", ".join(str(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
            parts.append(f"{len(ids)} {name} question ids ({shown})")
    return "VQA results do not match the question set: " + "; ".join(parts)


def _check_ids(result_ids: Sequence[int], expected: Iterable[int]) -> None:
    counts = Counter(result_ids)
    expected_set = set(expected)
    missing = expected_set - counts.keys()
    extra = counts.keys() - expected_set
    duplicated = [q for q, c in counts.items() if c > 1]
    if missing or extra or duplicated:
        raise ValueError(_id_mismatch_message(missing, extra, duplicated))


def write_vqa_results(
    predictions: Mapping[int, str], path: str | os.PathLike[str], question_ids: Iterable[int] | None = None
) -> None:
    """Write the official results file ``[{"question_id": int, "answer": str}, ...]``.

    Args:
        predictions: Question id -> answer string.
        path: Output JSON path.
        question_ids: The full question set (e.g. every test2015 id: EvalAI refuses partial test-dev
            submissions, ALBEF #96). If given, missing or extra ids raise ``ValueError`` before writing.
    """
    if question_ids is not None:
        _check_ids(list(predictions), question_ids)
    rows = [{"question_id": int(q), "answer": str(a)} for q, a in sorted(predictions.items())]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)


def read_vqa_results(path: str | os.PathLike[str], question_ids: Iterable[int] | None = None) -> dict[int, str]:
    """Read a results file, refusing it as ``VQA.loadRes`` does when ids do not match the question set.

    Beyond the official assertion, duplicated question ids are refused too (the official code silently
    keeps the last one).
    """
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"question_id", "answer"} <= r.keys() for r in rows
    ):
        raise ValueError(f"{path}: results must be a JSON list of {{'question_id', 'answer'}} objects")
    ids = [int(r["question_id"]) for r in rows]
    _check_ids(ids, question_ids if question_ids is not None else ids)
    return {int(r["question_id"]): str(r["answer"]) for r in rows}


def evaluate_vqa(
    predictions: Mapping[int, str],
    annotations: Sequence[Mapping[str, Any]],
    version: str = "2021",
    ndigits: int | None = 2,
) -> dict[str, Any]:
    """``VQAEval.evaluate`` on already-loaded data: official aggregation plus per-question scores.

    Args:
        predictions: Question id -> answer (e.g. from :func:`read_vqa_results`); must cover exactly the
            annotated question ids.
        annotations: The ``"annotations"`` list of ``v2_mscoco_*_annotations.json``.
        version: ``"2021"`` or ``"2017"``.
        ndigits: Rounding of every reported number (official: 2).

    Returns:
        :func:`aggregate_vqa`'s dict plus ``"perQuestion"``: {question_id: rounded percent}.
    """
    _check_ids(list(predictions), [a["question_id"] for a in annotations])
    accs, ans_types, q_types, per_q = [], [], [], {}
    for ann in annotations:
        acc = vqa_accuracy(predictions[ann["question_id"]], [a["answer"] for a in ann["answers"]], version)
        accs.append(acc)
        ans_types.append(ann["answer_type"])
        q_types.append(ann["question_type"])
        per_q[ann["question_id"]] = round(100 * acc, ndigits) if ndigits is not None else 100 * acc
    result = aggregate_vqa(accs, ans_types, q_types, ndigits)
    result["perQuestion"] = per_q
    return result


def normalize_vocab_answer(answer: str) -> str:
    """Answer normalisation of the 3129-answer vocabulary (bottom-up-attention-vqa ``compute_softscore``,
    ViLT ``normalize_word``): punctuation, digits/articles, then every remaining comma removed."""
    return process_digit_article(process_punctuation(answer)).replace(",", "")


def build_answer_vocab(annotations: Iterable[Mapping[str, Any]], min_count: int = 9) -> list[str]:
    """Answers whose normalised ``multiple_choice_answer`` is seen for at least ``min_count`` questions.

    Each question counts once (its ``multiple_choice_answer``). On VQA v2 train+val with ``min_count=9``
    this gives the 3129 answers of bottom-up-attention-vqa / MCAN / ViLT. Label order is **first-seen
    order** over ``annotations`` (as ViLT's ``Counter`` iteration; bottom-up's Py2 dict order is not
    reproducible), so pass annotations in a fixed order.
    """
    counts = Counter(normalize_vocab_answer(a["multiple_choice_answer"]) for a in annotations)
    return [a for a, c in counts.items() if c >= min_count]


def vqa_soft_score(count: int) -> float:
    """bottom-up's ``get_score``: 0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, >= 4 annotators."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def vqa_soft_targets(
    answers: Sequence[str], answer_to_label: Mapping[str, int], normalize: bool = False
) -> tuple[list[int], list[float]]:
    """Soft-score training targets of one question: (labels, scores) for its in-vocabulary answers.

    Args:
        answers: The ten raw answers.
        answer_to_label: Vocabulary answer -> label index.
        normalize: ``False`` counts the raw answers (bottom-up, ViLT); ``True`` normalises each with
            :func:`normalize_vocab_answer` first (MCAN ``proc_ans``).

    Returns:
        Labels in first-seen order and their scores; both empty when no answer is in the vocabulary
        (ViLT drops such training questions).
    """
    counts = Counter(normalize_vocab_answer(a) if normalize else a for a in answers)
    labels = [answer_to_label[a] for a in counts if a in answer_to_label]
    scores = [vqa_soft_score(counts[a]) for a in counts if a in answer_to_label]
    return labels, scores


class VQAAccuracy(SampleMetric):
    """Official VQA accuracy accumulated over an epoch, exact under DDP (see :mod:`.ddp`).

    ``update`` scores each question with :func:`vqa_accuracy` locally (string work never crosses
    processes); ``compute`` returns the official aggregation in percent, rounded like the official
    script: ``{"overall": ..., "answer_type/<t>": ..., "question_type/<t>": ...}``.
    """

    def __init__(self, version: str = "2021", ndigits: int | None = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if version not in VQA_VERSIONS:
            raise ValueError(f"version must be one of {VQA_VERSIONS}, got {version!r}")
        self.version = version
        self.ndigits = ndigits
        self._add_states("accuracy")
        self._add_string_state("answer_type")
        self._add_string_state("question_type")

    def update(
        self,
        predictions: Sequence[str],
        answers: Sequence[Sequence[str]],
        index: Tensor | Sequence[int],
        answer_types: Sequence[str] | None = None,
        question_types: Sequence[str] | None = None,
    ) -> None:
        """Score a batch.

        Args:
            predictions: One answer string per question.
            answers: The raw human answers of each question.
            index: Dataset index of each question (deduplicates sampler padding).
            answer_types: ``answer_type`` per question (optional).
            question_types: ``question_type`` per question (optional).
        """
        n = len(predictions)
        if len(answers) != n:
            raise ValueError(f"got {n} predictions but {len(answers)} answer lists")
        accs = [vqa_accuracy(p, list(a), self.version) for p, a in zip(predictions, answers, strict=True)]
        self.accuracy.append(torch.tensor(accs, dtype=torch.float64, device=self.device))
        self._append_index(index, n)
        self._append_strings("answer_type", list(answer_types) if answer_types is not None else [""] * n)
        self._append_strings("question_type", list(question_types) if question_types is not None else [""] * n)

    def compute(self) -> dict[str, float]:
        keep = self._kept()
        accs = self._gathered("accuracy", keep).tolist()
        ans_types = self._gathered_strings("answer_type", keep)
        q_types = self._gathered_strings("question_type", keep)
        agg = aggregate_vqa(accs, ans_types, q_types, self.ndigits)
        out = {"overall": agg["overall"]}
        out.update({f"answer_type/{t}": v for t, v in agg["perAnswerType"].items() if t})
        out.update({f"question_type/{t}": v for t, v in agg["perQuestionType"].items() if t})
        return out
