"""Cross-modal retrieval: R@K, MdR, MnR with several positives per query and pessimistic ties.

Conventions (``reference/soho_pixelbert_vqa.md`` §5.1, ``reference/vlab.md`` §3):

* Rows of ``sim`` are queries, columns targets. A query's rank is taken at its **best-ranked positive**
  (ALBEF ``itm_eval`` text retrieval: min over an image's ~5 captions; MSVD's ~40).
* **Ties count against the query**: rank (0-based) = number of *wrong* targets scoring ``>=`` the best
  positive. ``np.argsort`` (ALBEF) and ``topk`` (ViLT) break ties by position, and CLIP4Clip's
  ``np.where(sorted - diag == 0)`` even counts several hits per row; here a tie can never raise a score.
* R@K in percent (``count * 100 / n`` as CLIP4Clip), ``MdR = median(rank) + 1`` (``np.median``: the mean
  of the two middle ranks for an even count) and ``MnR = mean(rank) + 1``.

Memory: similarities are written block by block into the preallocated result (``torch.mm(..., out=)``),
and ranks and dual softmax process one row block at a time, so a 10,000 x 10,000 evaluation holds the
result plus one block (see ``benchmarks/retrieval.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from vislang.shared.metrics.ddp import SampleMetric, first_occurrence

__all__ = [
    "Positives",
    "RetrievalMetric",
    "RetrievalSimilarities",
    "blockwise_similarity",
    "dual_softmax",
    "positives_from_keys",
    "retrieval_metrics",
    "retrieval_ranks",
    "transpose_positives",
    "video_to_text_metrics",
]

Positives = Tensor | Sequence[Sequence[int]]
"""Each query's correct targets: a ``(N, M)`` bool matrix, a ``(N,)`` long tensor (one target per
query), or a list of ``N`` lists of target indices."""

DEFAULT_BLOCK = 256


def blockwise_similarity(
    queries: Tensor, targets: Tensor, block_size: int = DEFAULT_BLOCK, out: Tensor | None = None
) -> Tensor:
    """``queries @ targets.T`` computed ``block_size`` rows at a time straight into the result.

    Each block is written in place with ``torch.mm(..., out=result[rows])``, so besides the ``(N, M)``
    result nothing bigger than one block is ever allocated (CLIP4Clip's ``_run_on_single_gpu`` instead
    concatenates the blocks, which holds the matrix twice). Pass L2-normalised embeddings for cosine
    similarity.
    """
    if queries.ndim != 2 or targets.ndim != 2 or queries.shape[1] != targets.shape[1]:
        raise ValueError(
            f"expected (N, D) and (M, D) embeddings, got {tuple(queries.shape)} and {tuple(targets.shape)}"
        )
    n, m = queries.shape[0], targets.shape[0]
    dtype = torch.promote_types(queries.dtype, targets.dtype)
    if out is None:
        out = torch.empty(n, m, dtype=dtype, device=queries.device)
    elif out.shape != (n, m):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(n, m)}")
    targets_t = targets.to(dtype).t()
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        torch.mm(queries[start:stop].to(dtype), targets_t, out=out[start:stop])
    return out


def dual_softmax(sim: Tensor, temperature: float, dim: int = 0, block_size: int = DEFAULT_BLOCK) -> Tensor:
    """Dual-softmax re-weighting (CAMoE; VALOR's implementation), **in place**, block by block.

    ``S' = S * softmax(S / temperature, dim) * S.shape[dim]``. With rows = text queries, ``dim=0`` weights
    each (text, video) score by how strongly that video prefers this text over all other *test* texts
    (text-to-video); video-to-text uses ``dim=1``. Transductive: report it separately from plain numbers.

    Args:
        sim: ``(N, M)`` similarities; overwritten and returned.
        temperature: Softmax temperature, ``1 / logit_scale.exp()`` for CLIP.
        dim: Softmax dimension.
        block_size: Rows processed at a time.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = sim.shape[dim]
    if dim in (1, -1):
        for start in range(0, sim.shape[0], block_size):
            blk = sim[start : start + block_size]
            blk.mul_(torch.softmax(blk / temperature, dim=1).mul_(n))
        return sim
    if dim != 0:
        raise ValueError(f"dim must be 0 or 1, got {dim}")
    # Two streaming passes give each column's log-sum-exp, a third rescales in place.
    col_max = torch.full((sim.shape[1],), -torch.inf, dtype=sim.dtype, device=sim.device)
    for start in range(0, sim.shape[0], block_size):
        col_max = torch.maximum(col_max, sim[start : start + block_size].amax(0) / temperature)
    col_sum = torch.zeros_like(col_max)
    for start in range(0, sim.shape[0], block_size):
        col_sum += torch.exp(sim[start : start + block_size] / temperature - col_max).sum(0)
    log_norm = col_max + torch.log(col_sum)
    for start in range(0, sim.shape[0], block_size):
        blk = sim[start : start + block_size]
        blk.mul_(torch.exp(blk / temperature - log_norm).mul_(n))
    return sim


def _positive_block(positives: Positives, start: int, stop: int, num_targets: int, device: torch.device) -> Tensor:
    if isinstance(positives, Tensor):
        if positives.dtype == torch.bool:
            return positives[start:stop].to(device)
        cols = positives[start:stop].to(device).long().reshape(-1)
        mask = torch.zeros(stop - start, num_targets, dtype=torch.bool, device=device)
        mask[torch.arange(stop - start, device=device), cols] = True
        return mask
    mask = torch.zeros(stop - start, num_targets, dtype=torch.bool, device=device)
    rows = [r for r, cols in enumerate(positives[start:stop]) for _ in cols]
    cols = [c for cols in positives[start:stop] for c in cols]
    if cols:
        mask[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = True
    return mask


def _num_queries(positives: Positives) -> int:
    return positives.shape[0] if isinstance(positives, Tensor) else len(positives)


def retrieval_ranks(sim: Tensor, positives: Positives, block_size: int = DEFAULT_BLOCK) -> Tensor:
    """0-based rank of each query's best positive, ties pessimistic (see module docstring).

    Returns:
        ``(N,)`` int64: the number of wrong targets scoring at least as high as the best positive.
    """
    if sim.ndim != 2:
        raise ValueError(f"sim must be a (queries, targets) matrix, got shape {tuple(sim.shape)}")
    n, m = sim.shape
    if _num_queries(positives) != n:
        raise ValueError(f"positives describe {_num_queries(positives)} queries but sim has {n} rows")
    if isinstance(positives, Tensor) and positives.dtype == torch.bool and positives.shape != sim.shape:
        raise ValueError(f"bool positives have shape {tuple(positives.shape)}, sim has {tuple(sim.shape)}")
    ranks = torch.empty(n, dtype=torch.long, device=sim.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        blk = sim[start:stop]
        if torch.isnan(blk).any():
            raise ValueError("sim contains NaN; a NaN score cannot be ranked")
        pos = _positive_block(positives, start, stop, m, sim.device)
        has_pos = pos.any(1)
        if not bool(has_pos.all()):
            rows = (start + torch.nonzero(~has_pos).flatten()).tolist()
            raise ValueError(f"queries without any positive target: {rows[:5]}{' ...' if len(rows) > 5 else ''}")
        best = blk.masked_fill(~pos, -torch.inf).amax(1, keepdim=True)
        ranks[start:stop] = ((blk >= best) & ~pos).sum(1)
    return ranks


def retrieval_metrics(
    sim: Tensor, positives: Positives, ks: Sequence[int] = (1, 5, 10), block_size: int = DEFAULT_BLOCK
) -> dict[str, float]:
    """R@K (percent), MdR and MnR (1-based) of one retrieval direction; rows of ``sim`` are queries.

    Args:
        sim: ``(N, M)`` query-target scores (e.g. from :func:`blockwise_similarity`); for the other
            direction pass ``sim.T`` and :func:`transpose_positives`.
        positives: Each query's correct targets (:data:`Positives`); the best-ranked one counts.
        ks: Cut-offs K of R@K.
        block_size: Rows ranked at a time (bounds extra memory to one block).

    Returns:
        ``{"R@1", "R@5", "R@10", "MdR", "MnR"}`` (one ``R@K`` per entry of ``ks``).
    """
    ranks = retrieval_ranks(sim, positives, block_size).cpu().numpy()
    n = len(ranks)
    out = {f"R@{k}": float(np.sum(ranks < k)) * 100 / n for k in ks}
    out["MdR"] = float(np.median(ranks)) + 1
    out["MnR"] = float(np.mean(ranks)) + 1
    return out


def transpose_positives(positives: Positives, num_targets: int) -> list[list[int]]:
    """Positives of the reverse direction: for each target, the queries it is correct for."""
    out: list[list[int]] = [[] for _ in range(num_targets)]
    n = _num_queries(positives)
    if isinstance(positives, Tensor) and positives.dtype == torch.bool:
        for q, t in torch.nonzero(positives).tolist():
            out[t].append(q)
        return out
    rows = positives.tolist() if isinstance(positives, Tensor) else positives
    for q in range(n):
        targets = rows[q] if isinstance(rows[q], (list, tuple)) else [rows[q]]
        for t in targets:
            out[int(t)].append(q)
    return out


def positives_from_keys(query_keys: Tensor | Sequence[int], target_keys: Tensor | Sequence[int]) -> list[list[int]]:
    """Query ``i`` is correct for target ``j`` iff their keys (e.g. image or video ids) are equal."""
    where: dict[int, list[int]] = {}
    for j, key in enumerate(torch.as_tensor(target_keys).tolist()):
        where.setdefault(key, []).append(j)
    return [list(where.get(key, [])) for key in torch.as_tensor(query_keys).tolist()]


def video_to_text_metrics(
    sim_v2t: Tensor,
    positives: Positives,
    text_key: Tensor,
    video_to_text: Literal["captions", "groups"] = "captions",
    block_size: int = DEFAULT_BLOCK,
) -> dict[str, float]:
    """Visual-to-text scores of a (visuals x texts) matrix under one of the two multi-caption conventions.

    ``captions`` (ALBEF ``itm_eval``): every text is a target; a visual's rank is that of its best-ranked
    own text, so each wrong *text* scoring above it costs a place. ``groups`` (CLIP4Clip's multi-sentence
    evaluation, ``tensor_video_to_text_sim``): the texts are grouped by key and each group scores by its
    best text, so each wrong *visual's group* costs a place. ``positives`` are the text->visual positives.
    """
    num_visual = sim_v2t.shape[0]
    if video_to_text == "captions":
        return retrieval_metrics(sim_v2t, transpose_positives(positives, num_visual), block_size=block_size)
    if video_to_text != "groups":
        raise ValueError(f"video_to_text: expected 'captions' or 'groups', got {video_to_text!r}")
    keys, group = torch.unique(torch.as_tensor(text_key).to(sim_v2t.device), return_inverse=True)
    grouped = torch.full((num_visual, keys.numel()), float("-inf"), dtype=sim_v2t.dtype, device=sim_v2t.device)
    grouped.scatter_reduce_(1, group.expand(num_visual, -1), sim_v2t, reduce="amax")
    # the visual whose key a group carries is that group's one positive
    group_of_visual: list[list[int]] = [[] for _ in range(num_visual)]
    for text, visuals in enumerate(positives if not isinstance(positives, Tensor) else positives.tolist()):
        for visual in visuals if isinstance(visuals, list) else [visuals]:
            group_of_visual[visual] = [int(group[text])]
    return retrieval_metrics(grouped, group_of_visual, block_size=block_size)


@dataclass
class RetrievalSimilarities:
    """An evaluation set as `RetrievalMetric` ranks it: every text and visual once, and both directions' scores.

    Texts are ordered by dataset index, visuals by key; a text is correct for the visual with its key.
    A re-ranker (e.g. a cross-encoder re-scoring each query's top-k, UMT's ``k_test``) replaces the two
    matrices and hands the result back to `RetrievalMetric.score`.

    Attributes:
        text_to_visual: ``(texts, visuals)`` scores, rows queries (after dual softmax over texts, if set).
        visual_to_text: ``(visuals, texts)`` scores, rows queries (after dual softmax over visuals, if set);
            may be a transposed view, so ``.contiguous()`` it before writing into it.
        text_index: ``(texts,)`` dataset index of each row of ``text_to_visual``.
        text_key: ``(texts,)`` key (image or video id) of each text.
        visual_key: ``(visuals,)`` key of each visual.
    """

    text_to_visual: Tensor
    visual_to_text: Tensor
    text_index: Tensor
    text_key: Tensor
    visual_key: Tensor

    @property
    def positives(self) -> list[list[int]]:
        """Each text's correct visuals (columns of ``text_to_visual``): those with its key."""
        return positives_from_keys(self.text_key, self.visual_key)


class RetrievalMetric(SampleMetric):
    """Text <-> visual retrieval over a whole evaluation set, exact under DDP.

    Each ``update`` adds text embeddings (with their dataset index and the key of their image/video) and
    visual embeddings (with their key). After the all-gather, texts are deduplicated by dataset index and
    visuals by key (a video seen with several captions is kept once), both in ascending order; a text is
    correct for the visual with the same key. ``compute`` returns both directions plus ``rsum``:
    ``t2v/R@1 ... t2v/MnR, v2t/R@1 ... v2t/MnR``. With several texts per visual, ``video_to_text`` picks
    the convention (see ``video_to_text_metrics``): ``captions`` (ALBEF, default) or ``groups`` (CLIP4Clip).

    ``compute()`` is ``score(similarities())``; a re-ranker calls the two itself and changes the
    similarities in between (see `RetrievalSimilarities`).
    """

    def __init__(
        self,
        dual_softmax_temperature: float | None = None,
        block_size: int = DEFAULT_BLOCK,
        video_to_text: Literal["captions", "groups"] = "captions",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if video_to_text not in ("captions", "groups"):
            raise ValueError(f"video_to_text: expected 'captions' or 'groups', got {video_to_text!r}")
        self.dual_softmax_temperature = dual_softmax_temperature
        self.block_size = block_size
        self.video_to_text = video_to_text
        self._add_states("text_emb", "text_key", "visual_emb", "visual_key")

    def update(
        self,
        text_emb: Tensor,
        text_key: Tensor | Sequence[int],
        index: Tensor | Sequence[int],
        visual_emb: Tensor | None = None,
        visual_key: Tensor | Sequence[int] | None = None,
    ) -> None:
        """Add a batch: ``text_emb`` (B, D) with keys and dataset indices; optionally visual (B', D)."""
        n = text_emb.shape[0]
        self._append_index(index, n)
        self.text_emb.append(text_emb.detach())
        self.text_key.append(torch.as_tensor(text_key, device=self.device).long().reshape(-1))
        if (visual_emb is None) != (visual_key is None):
            raise ValueError("pass visual_emb and visual_key together")
        if visual_emb is not None:
            self.visual_emb.append(visual_emb.detach())
            self.visual_key.append(torch.as_tensor(visual_key, device=self.device).long().reshape(-1))

    def similarities(self) -> RetrievalSimilarities:
        """The similarity matrices ``compute`` ranks, over every process's samples (gathered as
        ``compute`` gathers them; every rank gets the whole set)."""
        with self.sync_context(self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync):
            return self._similarities()

    def score(self, similarities: RetrievalSimilarities) -> dict[str, float]:
        """Both directions' R@K, MdR and MnR, ``rsum`` and the set sizes, as ``compute`` reports them."""
        positives = similarities.positives
        t2v = retrieval_metrics(similarities.text_to_visual, positives, block_size=self.block_size)
        v2t = video_to_text_metrics(
            similarities.visual_to_text, positives, similarities.text_key, self.video_to_text, self.block_size
        )
        out = {f"t2v/{k}": v for k, v in t2v.items()}
        out.update({f"v2t/{k}": v for k, v in v2t.items()})
        out["rsum"] = sum(v for k, v in out.items() if "/R@" in k)
        # set sizes after deduplication: a random ranking's R@1 is 100 / num_visual
        num_text, num_visual = similarities.text_to_visual.shape
        out["num_text"], out["num_visual"] = float(num_text), float(num_visual)
        return out

    def compute(self) -> dict[str, float]:
        return self.score(self._similarities())

    def _similarities(self) -> RetrievalSimilarities:
        # the states as they are: gathered inside `compute`, or by `similarities`
        keep = self._kept()
        text = self._gathered("text_emb", keep)
        visual_keys_all = self._state("visual_key").long()
        if visual_keys_all.numel() == 0:
            raise RuntimeError("RetrievalMetric got no visual embeddings")
        vkeep = first_occurrence(visual_keys_all)
        sim = blockwise_similarity(text, self._state("visual_emb")[vkeep], self.block_size)
        if self.dual_softmax_temperature is not None:
            temperature, block = self.dual_softmax_temperature, self.block_size
            sim_v2t = dual_softmax(sim.clone(), temperature, dim=1, block_size=block).T
            dual_softmax(sim, temperature, dim=0, block_size=block)
        else:
            sim_v2t = sim.T
        return RetrievalSimilarities(
            text_to_visual=sim,
            visual_to_text=sim_v2t,
            text_index=self._gathered("index", keep).long(),
            text_key=self._gathered("text_key", keep),
            visual_key=visual_keys_all[vkeep],
        )
