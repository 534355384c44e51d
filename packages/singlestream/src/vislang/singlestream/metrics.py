"""Metrics of the single-stream tasks that the shared metrics do not already cover, and the score table.

VQA, NLVR2 and SNLI-VE use ``vislang.shared.metrics`` as they are; retrieval with a cross-encoder (every
image scored against every text by the ITM head) needs its own state, ``ITMRetrievalMetric``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vislang.shared.metrics import retrieval_metrics, transpose_positives
from vislang.shared.metrics.ddp import SampleMetric

__all__ = ["ITMRetrievalMetric", "format_table"]


class ITMRetrievalMetric(SampleMetric):
    """Cross-encoder retrieval: each update adds images' ITM scores against *all* texts (exact under DDP).

    ``text_image[t]`` is the position of text ``t``'s image. ``compute`` gives image->text (TR, best of an
    image's captions) and text->image (IR) R@1/5/10 with pessimistic ties (``vislang.shared.metrics``),
    plus their chance levels for a random ranking.
    """

    def __init__(self, text_image: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text_image = list(text_image)
        self._add_states("scores")

    def update(self, scores: Tensor, index: Tensor) -> None:
        self.scores.append(scores.detach().float())
        self._append_index(index, scores.shape[0])

    def compute(self) -> dict[str, float]:
        keep = self._kept()
        sim = self._gathered("scores", keep)  # (images, texts), images in dataset order
        index = self._gathered("index", keep).tolist()
        image_texts: dict[int, list[int]] = {}
        for t, i in enumerate(self.text_image):
            image_texts.setdefault(i, []).append(t)
        tr = retrieval_metrics(sim, [image_texts.get(i, []) for i in index])
        row_of = {i: r for r, i in enumerate(index)}
        # text->image over the texts whose image was scored (all of them, unless evaluation was cut short)
        scored = [t for t, i in enumerate(self.text_image) if i in row_of]
        column = {t: c for c, t in enumerate(scored)}
        positives = [[column[t] for t in image_texts.get(i, [])] for i in index]
        ir = retrieval_metrics(sim[:, scored].T, transpose_positives(positives, len(scored)))
        out = {f"tr/{k}": v for k, v in tr.items()}
        out.update({f"ir/{k}": v for k, v in ir.items()})
        out["rsum"] = sum(v for k, v in out.items() if "/R@" in k)
        per_image = [len(image_texts.get(i, [])) for i in row_of]
        out["tr/chance_R@1"] = 100.0 * sum(per_image) / len(per_image) / sim.shape[1]
        out["ir/chance_R@1"] = 100.0 / sim.shape[0]
        return out


def format_table(scores: dict[str, dict[str, float]], baselines: dict[str, dict[str, Any]]) -> str:
    """A small table: each headline score beside its chance / majority baseline."""
    rows = [("task", "metric", "score", "baseline")]
    if "vqa" in scores:
        rows += _vqa_rows(scores["vqa"], baselines.get("vqa", {}))
    if "retrieval" in scores:
        s = scores["retrieval"]
        rows.append(("retrieval", "image->text R@1 (ITM)", f"{s['tr/R@1']:.2f}", f"{s['tr/chance_R@1']:.2f} (chance)"))
        rows.append(("retrieval", "text->image R@1 (ITM)", f"{s['ir/R@1']:.2f}", f"{s['ir/chance_R@1']:.2f} (chance)"))
        rows.append(("retrieval", "image->text R@5 / R@10", f"{s['tr/R@5']:.1f} / {s['tr/R@10']:.1f}", ""))
        rows.append(("retrieval", "text->image R@5 / R@10", f"{s['ir/R@5']:.1f} / {s['ir/R@10']:.1f}", ""))
    if "nlvr2" in scores:
        rows.append(("NLVR2", "accuracy", f"{scores['nlvr2'].get('accuracy', float('nan')):.2f}", "50.00 (chance)"))
    if "snli_ve" in scores:
        rows.append(("SNLI-VE", "accuracy", f"{scores['snli_ve'].get('accuracy', float('nan')):.2f}", "33.33 (chance)"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _vqa_rows(score: dict[str, float], base: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """VQA's accuracy beside the majority answer and the question-type prior, then per answer type."""
    majority = f"{base.get('majority', float('nan')):.2f} (always '{base.get('answer', '?')}')"
    rows = [("VQA", "accuracy (official, 2021)", f"{score['overall']:.2f}", majority)]
    if "per_question_type" in base:
        rows.append(("VQA", "", "", f"{base['per_question_type']:.2f} (question-type prior)"))
    for key in sorted(k for k in score if k.startswith("answer_type/")):
        rows.append(("VQA", f"  {key.split('/', 1)[1]}", f"{score[key]:.2f}", ""))
    return rows
