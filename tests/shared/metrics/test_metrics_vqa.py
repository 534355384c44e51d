"""VQA accuracy pinned to the reference quirks table (soho_pixelbert_vqa.md §4.3) and the official script."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vislang.shared.metrics import (
    VQAAccuracy,
    aggregate_vqa,
    build_answer_vocab,
    evaluate_vqa,
    process_digit_article,
    process_punctuation,
    read_vqa_results,
    vqa_accuracy,
    vqa_soft_score,
    vqa_soft_targets,
    write_vqa_results,
)

# (ground-truth answers, prediction, 2017 (LAVIS/MCAN), 2021 (official now)) -- every row of the table.
QUIRKS_TABLE = [
    (["yes"] * 10, "Yes", 1.0, 0.0),
    (["2"] * 10, "two", 1.0, 0.0),
    (["the dog"] * 10, "the dog", 0.0, 1.0),
    (["the dog"] * 9 + ["a dog"], "the dog", 0.0, 1.0),
    (["the dog"] * 9 + ["a dog"], "dog", 0.0, 1.0),
    (["two"] * 9 + ["2"], "2", 0.3, 1.0),
    (["two"] * 9 + ["2"], "two", 0.3, 1.0),
    (["dog"] * 9 + ["cat"], "cat", 0.3, 0.3),
    (["dog"] * 8 + ["cat"] * 2, "cat", 0.6, 0.6),
    (["dog"] * 7 + ["cat"] * 3, "cat", 0.9, 0.9),
    (["dog"] * 6 + ["cat"] * 4, "cat", 1.0, 1.0),
    (["2"] * 9 + ["3"], "Two.", 1.0, 1.0),
    (["100,978"] * 5 + ["100978"] * 5, "100,978", 1.0, 1.0),
    (["t shirt"] * 9 + ["shirt"], "t-shirt", 1.0, 1.0),
    (["none"] * 10, "0", 0.0, 0.0),
]


@pytest.mark.parametrize(("answers", "prediction", "old", "new"), QUIRKS_TABLE)
def test_quirks_table(answers, prediction, old, new):
    assert vqa_accuracy(prediction, answers, "2017") == pytest.approx(old, abs=1e-12)
    assert vqa_accuracy(prediction, answers, "2021") == pytest.approx(new, abs=1e-12)
    assert vqa_accuracy(prediction, answers) == vqa_accuracy(prediction, answers, "2021")  # default


def test_leave_one_out_mean_is_exact_float():
    # 1 match: nine subsets contain it (1/3 each), one does not -> 9 * (1/3) / 10 computed as the script does.
    assert vqa_accuracy("cat", ["dog"] * 9 + ["cat"]) == float(sum([1 / 3] * 9 + [0.0])) / 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes, it is", "yes it is"),  # ',' next to a space: deleted everywhere
        ("t-shirt", "t shirt"),  # '-' not next to a space: replaced by a space
        ("x -y", "x y"),  # " -" occurs: "-" deleted (the space stays)
        ("1,000 a-b", "1000 ab"),  # digit-comma-digit anywhere: every punctuation deleted
        ("end.", "end"),
        ("3.5", "3.5"),  # period followed by a digit stays
        ("1.a", "1a"),  # (?!<=\d) is a look-ahead: a period after a digit still goes
        ("it's 5:00", "it's 5:00"),  # apostrophes and colons untouched
        ("." * 33, "."),  # re.UNICODE lands in `count`: at most 32 periods removed
        ("what?!", "what  "),
    ],
)
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Two Dogs", "2 dogs"),
        ("an apple", "apple"),
        ("none", "0"),
        ("dont", "don't"),
        ("Im here", "im here"),  # key "Im" is capitalised; text is lower-cased first
        ("somebody'd", "somebodyd"),  # sic, in the official table
        ("  ten\tmen ", "10 men"),
    ],
)
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_2017_does_not_strip_ground_truth_but_2021_does():
    answers = ["dog "] * 9 + ["cat"]
    assert vqa_accuracy("dog", answers, "2017") == 0.0
    assert vqa_accuracy("dog", answers, "2021") == 1.0


def test_rejects_bad_version_and_empty_answers():
    with pytest.raises(ValueError, match="version"):
        vqa_accuracy("a", ["a"], "2019")
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("a", [])


_token = st.text(alphabet="bcdfghjkmpqrsvwxz", min_size=2, max_size=5)


@settings(max_examples=60, deadline=None)
@given(st.lists(_token, min_size=10, max_size=10), st.integers(0, 9), st.randoms(use_true_random=False))
def test_accuracy_equals_soft_score_and_is_permutation_invariant(answers, pick, rnd):
    pred = answers[pick]
    expected = vqa_soft_score(answers.count(pred))
    shuffled = list(answers)
    rnd.shuffle(shuffled)
    for version in ("2017", "2021"):
        assert vqa_accuracy(pred, answers, version) == pytest.approx(expected, abs=1e-12)
        assert vqa_accuracy(pred, shuffled, version) == pytest.approx(expected, abs=1e-12)


def _annotations():
    return [
        {
            "question_id": 1,
            "question_type": "what color",
            "answer_type": "other",
            "answers": [{"answer": "red", "answer_id": i + 1} for i in range(10)],
        },
        {
            "question_id": 2,
            "question_type": "is the",
            "answer_type": "yes/no",
            "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(["yes"] * 9 + ["no"])],
        },
        {
            "question_id": 3,
            "question_type": "how many",
            "answer_type": "number",
            "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(["2"] * 8 + ["3"] * 2)],
        },
    ]


def test_evaluate_aggregates_like_vqaeval():
    result = evaluate_vqa({1: "red", 2: "no", 3: "three"}, _annotations())
    # per question: 1.0, 0.3, 0.6 -> overall round(100 * 1.9 / 3, 2)
    assert result["overall"] == 63.33
    assert result["perAnswerType"] == {"other": 100.0, "yes/no": 30.0, "number": 60.0}
    assert result["perQuestionType"] == {"what color": 100.0, "is the": 30.0, "how many": 60.0}
    assert result["perQuestion"] == {1: 100.0, 2: 30.0, 3: 60.0}
    assert aggregate_vqa([1.0, 0.3, 0.6], ndigits=None)["overall"] == pytest.approx(190 / 3)


def test_results_round_trip_and_refusals(tmp_path):
    path = tmp_path / "results.json"
    write_vqa_results({2: "no", 1: "red"}, path, question_ids=[1, 2])
    assert json.loads(path.read_text()) == [{"question_id": 1, "answer": "red"}, {"question_id": 2, "answer": "no"}]
    assert read_vqa_results(path, [1, 2]) == {1: "red", 2: "no"}
    with pytest.raises(ValueError, match=r"1 missing question ids \(3\); 1 extra question ids \(99\)") as err:
        write_vqa_results({1: "a", 2: "b", 99: "c"}, path, question_ids=[1, 2, 3])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"1 missing question ids \(3\)"):
        read_vqa_results(path, [1, 2, 3])
    path.write_text(json.dumps([{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}]))
    with pytest.raises(ValueError, match="duplicated question ids"):
        read_vqa_results(path, [1])
    path.write_text(json.dumps({"question_id": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        read_vqa_results(path)
    with pytest.raises(ValueError, match="missing"):
        evaluate_vqa({1: "red"}, _annotations())


def test_answer_vocab_threshold_and_order():
    anns = [{"multiple_choice_answer": "Two"}] * 9 + [{"multiple_choice_answer": "cat"}] * 8
    anns += [{"multiple_choice_answer": "1,000"}] * 4 + [{"multiple_choice_answer": "1000"}] * 5
    anns = [{"multiple_choice_answer": "dog."}] * 10 + anns
    # "dog." -> "dog" (10), "Two" -> "2" (9, exactly at the threshold), "cat" (8, below), "1,000"/"1000" merge (9)
    assert build_answer_vocab(anns) == ["dog", "2", "1000"]
    assert build_answer_vocab(anns, min_count=8) == ["dog", "2", "cat", "1000"]


def test_soft_targets_count_raw_answers():
    a2l = {"2": 0, "cat": 1, "dog": 2}
    labels, scores = vqa_soft_targets(["two"] * 6 + ["2"] * 3 + ["cat"], a2l)
    assert dict(zip(labels, scores, strict=False)) == {0: 0.9, 1: 0.3}  # raw "two" is not in the vocabulary
    labels, scores = vqa_soft_targets(["two"] * 6 + ["2"] * 3 + ["cat"], a2l, normalize=True)
    assert dict(zip(labels, scores, strict=False)) == {0: 1.0, 1: 0.3}  # MCAN normalises first
    assert [vqa_soft_score(k) for k in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert vqa_soft_targets(["zebra"] * 10, a2l) == ([], [])


def test_metric_dedups_padding_and_matches_evaluate():
    anns = _annotations()
    preds = {1: "red", 2: "no", 3: "three"}
    metric = VQAAccuracy()
    metric.update(
        ["three", "red"],
        [[a["answer"] for a in anns[2]["answers"]], [a["answer"] for a in anns[0]["answers"]]],
        torch.tensor([2, 0]),
        ["number", "other"],
        ["how many", "what color"],
    )
    metric.update(
        ["no", "three"],
        [[a["answer"] for a in anns[1]["answers"]], [a["answer"] for a in anns[2]["answers"]]],
        torch.tensor([1, 2]),
        ["yes/no", "number"],
        ["is the", "how many"],
    )  # index 2 repeated
    out = metric.compute()
    ref = evaluate_vqa(preds, anns)
    assert out["overall"] == ref["overall"] == 63.33
    assert out["answer_type/number"] == 60.0 and out["question_type/is the"] == 30.0
