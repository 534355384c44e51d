"""Caption metrics: hand-checkable scores, the official PTB tokenisation, read-only jar dir, no-Java path."""

import math
import os
import shutil
import stat
import subprocess

import pytest
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vislang.shared.metrics import CaptionMetric, JavaNotFoundWarning, caption_scores, ptb_tokenize, simple_tokenize
from vislang.shared.metrics.captioning import PTB_JAR

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")

CAPTIONS = {
    1: ["A man's riding a horse.", "Someone (probably) can't ride -- fast!"],
    "x": ['He said "hello" to the dog, didn\'t he?', "3.5 cats; 10,000 mice"],
}


def test_identical_candidate_and_reference_scores_100_on_bleu_and_rouge():
    out = caption_scores(
        {1: "a man is riding a horse"}, {1: ["a man is riding a horse"]}, tokenizer="none", meteor=False
    )
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"):
        assert out[key] == pytest.approx(100.0, abs=1e-4), key
    assert "METEOR" not in out


def test_bleu1_hand_computed():
    # "a cat" vs "a dog sat on mat": clipped unigram precision 1/2, brevity penalty exp(1 - 5/2).
    out = caption_scores({1: "a cat"}, {1: ["a dog sat on mat"]}, tokenizer="none", meteor=False)
    assert out["Bleu_1"] == pytest.approx(100 * 0.5 * math.exp(1 - 5 / 2), rel=1e-6)
    assert out["ROUGE_L"] > 0 and out["CIDEr"] == 0.0  # one image: every IDF is log(1/1) = 0


@needs_java
def test_ptb_tokenize_equals_official_wrapper():
    official = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in CAPTIONS.items()})
    assert ptb_tokenize(CAPTIONS) == official
    assert ptb_tokenize({1: ["A man's hat."]}) == {1: ["a man 's hat"]}


@needs_java
def test_ptb_tokenize_never_writes_next_to_the_jar(tmp_path, monkeypatch):
    jar_dir = tmp_path / "site-packages"
    jar_dir.mkdir()
    jar = shutil.copy(PTB_JAR, jar_dir)
    jar_dir.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)  # read-only (root ignores it...)
    calls = []
    real_run = subprocess.run

    def spy(cmd, **kwargs):
        calls.append((cmd, kwargs.get("cwd")))
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    try:
        assert ptb_tokenize({1: ["Hello, world."]}, jar=jar) == {1: ["hello world"]}
        assert sorted(os.listdir(jar_dir)) == [os.path.basename(jar)]  # ...so check nothing was written
    finally:
        jar_dir.chmod(0o755)
    ((cmd, cwd),) = calls
    assert os.path.abspath(cwd) != str(jar_dir) and not cmd[-1].startswith(str(jar_dir))  # temp dir, now removed


def test_no_java_warns_and_runs_java_free_scorers(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    with pytest.warns(JavaNotFoundWarning, match="Java not found on PATH: METEOR is skipped"):
        out = caption_scores({1: "A man rides a horse."}, {1: ["A man rides a horse."]})
    assert set(out) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert out["Bleu_4"] == pytest.approx(100.0, abs=1e-4)
    with pytest.raises(RuntimeError, match="Java not found"):
        caption_scores({1: "a"}, {1: ["a"]}, require_java=True)
    with pytest.raises(RuntimeError, match="needs Java"):
        ptb_tokenize({1: ["a"]})


def test_simple_tokenizer_approximates_ptb():
    assert simple_tokenize({1: ["A man's riding a horse."]}) == {1: ["a man 's riding a horse"]}
    assert simple_tokenize({1: ["He didn't, 3.5 times!"]}) == {1: ["he did n't 3.5 times"]}


def test_id_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"missing \['2'\], extra \['3'\]"):
        caption_scores({1: "a", 3: "b"}, {1: ["a"], 2: ["b"]}, tokenizer="none", meteor=False)


def test_metric_dedups_and_matches_function():
    preds = {0: "a dog runs on grass", 1: "two cats sleep", 2: "a man rides a red bike"}
    refs = {
        0: ["a dog running on the grass", "dog on grass"],
        1: ["two cats are sleeping"],
        2: ["a man riding a bike", "man on a red bike", "a cyclist"],
    }
    metric = CaptionMetric(tokenizer="none", meteor=False)
    metric.update([preds[2], preds[0]], [refs[2], refs[0]], [2, 0])
    metric.update([preds[1], preds[2]], [refs[1], refs[2]], [1, 2])  # 2 repeated
    assert metric.compute() == caption_scores(preds, refs, tokenizer="none", meteor=False)


@needs_java
@pytest.mark.slow
def test_full_official_pipeline_with_meteor():
    preds = {0: "A dog runs on the grass.", 1: "Two cats are sleeping."}
    refs = {0: ["A dog is running on the grass.", "A dog on grass."], 1: ["Two cats are sleeping.", "Cats sleep."]}
    out = caption_scores(preds, refs)
    assert set(out) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert 0 < out["METEOR"] < 100 and out["Bleu_1"] > 50
