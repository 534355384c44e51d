"""Caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D), x100 as papers report.

What differs from calling ``pycocoevalcap.eval.COCOEvalCap`` (``reference/vlab.md`` §2.5):

* **Read-only site-packages.** The official ``PTBTokenizer.tokenize`` writes its temporary file next to its
  jar and runs Java there, which fails when the package directory is read-only. :func:`ptb_tokenize` runs
  the very same jar, command line (``-preserveLines -lowerCase``) and punctuation filter, but with the
  temporary file and working directory in a fresh temporary directory.
* **No Java.** METEOR and the PTB tokenizer need a JRE. Without ``java`` on ``PATH`` a
  :class:`JavaNotFoundWarning` says so, METEOR is left out of the result, captions are tokenised by
  :func:`simple_tokenize` (an approximation) and the Java-free scorers (BLEU, ROUGE-L, CIDEr) still run.
  Pass ``require_java=True`` to make that an error instead.
* ``Cider`` in pycocoevalcap is CIDEr-D (sigma 6 length penalty, clipped counts); its document frequencies
  come from the references passed in, so scores over a subset are not comparable to full test-set scores.
  SPICE is not computed (it downloads Stanford models at first use).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from torch import Tensor

from vislang.shared.metrics.ddp import SampleMetric

__all__ = [
    "CaptionMetric",
    "JavaNotFoundWarning",
    "caption_scores",
    "java_available",
    "ptb_tokenize",
    "simple_tokenize",
]

PTB_JAR = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)


class JavaNotFoundWarning(UserWarning):
    """Java is missing: METEOR is skipped and tokenisation is approximate."""


def java_available() -> bool:
    """Whether a ``java`` executable is on ``PATH`` (METEOR and the PTB tokenizer need it)."""
    return shutil.which("java") is not None


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]], jar: str = PTB_JAR) -> dict[Hashable, list[str]]:
    """Stanford PTB tokenisation exactly as ``pycocoevalcap``'s ``PTBTokenizer``, without writing next to the jar.

    Same jar, same ``java -cp <jar> edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase <file>``
    and the same removal of ``ptbtokenizer.PUNCTUATIONS`` tokens; only the temporary file and the working
    directory move to a private temporary directory.

    Args:
        captions: id -> list of raw captions.
        jar: Path to ``stanford-corenlp-3.4.1.jar`` (default: the one bundled with pycocoevalcap).
    """
    if not java_available():
        raise RuntimeError("the PTB tokenizer needs Java: no `java` on PATH (install a JRE, e.g. default-jre-headless)")
    ids = [k for k, v in captions.items() for _ in range(len(v))]
    sentences = "\n".join(c.replace("\n", " ") for v in captions.values() for c in v)
    with tempfile.TemporaryDirectory(prefix="vislang_ptb_") as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "wb") as f:
            f.write(sentences.encode())
        cmd = [
            "java",
            "-cp",
            os.path.abspath(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
            path,
        ]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace').strip()[:300]}"
        )
    lines = proc.stdout.decode().split("\n")
    out: dict[Hashable, list[str]] = {}
    for k, line in zip(ids, lines):  # noqa: B905 -- as the official wrapper
        out.setdefault(k, []).append(
            " ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS)
        )
    return out


_SIMPLE_TOKEN = re.compile(r"n't|'(?:s|re|ve|d|ll|m)\b|[a-z0-9]+(?:\.[0-9]+)?|[^\sa-z0-9]")


def simple_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """Java-free approximation of the PTB tokenizer: lower-case, split clitics and punctuation, then drop
    the same punctuation tokens. Not bit-identical to PTB (e.g. on abbreviations and quotes)."""
    out: dict[Hashable, list[str]] = {}
    for k, caps in captions.items():
        out[k] = [
            " ".join(
                t for t in _SIMPLE_TOKEN.findall(c.lower().replace("n't", " n't")) if t not in ptbtokenizer.PUNCTUATIONS
            )
            for c in caps
        ]
    return out


def _meteor(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        # Stop the JVM now rather than whenever Meteor.__del__ runs (which then finds it already gone).
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    return float(score)


def caption_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    tokenizer: str = "ptb",
    meteor: bool = True,
    require_java: bool = False,
) -> dict[str, float]:
    """COCO caption metrics x100 (``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``).

    Args:
        predictions: id -> one generated caption.
        references: id -> reference captions (all of them: MSRVTT 20, MSVD ~40, COCO 5); same ids.
        tokenizer: ``"ptb"`` (official), ``"simple"`` (Java-free approximation) or ``"none"`` (already
            tokenised, lower-cased text).
        meteor: Compute METEOR (starts a JVM, ~8 s).
        require_java: Raise instead of warning when Java is missing.

    Returns:
        Scores x100 (papers' convention). ``METEOR`` is absent when it was not computed.
    """
    if predictions.keys() != references.keys():
        missing = sorted(map(str, references.keys() - predictions.keys()))[:5]
        extra = sorted(map(str, predictions.keys() - references.keys()))[:5]
        raise ValueError(f"prediction ids do not match reference ids: missing {missing}, extra {extra}")
    if not predictions:
        raise ValueError("caption_scores needs at least one caption")
    if tokenizer not in ("ptb", "simple", "none"):
        raise ValueError(f"tokenizer must be 'ptb', 'simple' or 'none', got {tokenizer!r}")
    has_java = java_available()
    if not has_java and (meteor or tokenizer == "ptb"):
        message = (
            "Java not found on PATH: METEOR is skipped and captions are tokenised by a Python approximation of "
            "the PTB tokenizer, so BLEU/ROUGE_L/CIDEr may differ slightly from official numbers; install a JRE "
            "(e.g. apt-get install default-jre-headless) for official scores"
        )
        if require_java:
            raise RuntimeError(message)
        warnings.warn(message, JavaNotFoundWarning, stacklevel=2)
        if tokenizer == "ptb":
            tokenizer = "simple"
        meteor = False
    res_raw = {k: [v] for k, v in predictions.items()}
    gts_raw = {k: list(references[k]) for k in predictions}
    if tokenizer == "ptb":
        res, gts = ptb_tokenize(res_raw), ptb_tokenize(gts_raw)
    elif tokenizer == "simple":
        res, gts = simple_tokenize(res_raw), simple_tokenize(gts_raw)
    else:
        res, gts = res_raw, gts_raw
    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its ratios
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"Bleu_{i + 1}": 100 * float(b) for i, b in enumerate(bleu)})
    if meteor:
        out["METEOR"] = 100 * _meteor(gts, res)
    out["ROUGE_L"] = 100 * float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = 100 * float(Cider().compute_score(gts, res)[0])
    return out


class CaptionMetric(SampleMetric):
    """Collects generated captions and their references over an epoch (exact under DDP) and scores them
    with :func:`caption_scores` on the full set in ``compute`` (CIDEr's statistics need the whole set)."""

    def __init__(self, tokenizer: str = "ptb", meteor: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.meteor = meteor
        self._add_string_state("prediction")
        self._add_string_state("reference")
        self._add_states("num_references")

    def update(
        self, predictions: Sequence[str], references: Sequence[Sequence[str]], index: Tensor | Sequence[int]
    ) -> None:
        """Add a batch of generated captions, each with all its references and its dataset index."""
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
        self._append_index(index, len(predictions))
        self._append_strings("prediction", list(predictions))
        self._append_strings("reference", [r for refs in references for r in refs])
        self.num_references.append(torch.tensor([len(r) for r in references], dtype=torch.long, device=self.device))

    def compute(self) -> dict[str, float]:
        keep = self._kept()
        index = self._state("index").long()
        preds = self._gathered_strings("prediction", keep)
        counts = self._state("num_references").long()
        flat_refs = self._gathered_strings("reference", torch.arange(int(counts.sum())))
        offsets = torch.cumsum(counts, 0) - counts
        refs = [flat_refs[o : o + c] for o, c in zip(offsets[keep].tolist(), counts[keep].tolist(), strict=True)]
        ids = index[keep].tolist()
        return caption_scores(
            dict(zip(ids, preds, strict=True)), dict(zip(ids, refs, strict=True)), self.tokenizer, self.meteor
        )
