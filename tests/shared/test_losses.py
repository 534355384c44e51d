"""vislang.shared.losses: hand-computed values, DDP equivalence, mask losses, BERT masking statistics.

The DDP test runs this file as a script once per rank (``python test_losses.py RANK WORLD DIR``), with a
gloo process group rendezvousing through a FileStore in ``tmp_path``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vislang.shared.losses import (
    IGNORE_INDEX,
    MaskingIds,
    dice_loss,
    info_nce,
    mask_tokens,
    sigmoid_bce_loss,
    symmetric_info_nce,
)

WORLD = 2
LOCAL_BATCH = 4
DIM = 5
TEMPERATURE = 0.1

# ----------------------------------------------------------------------------------------------------
# InfoNCE
# ----------------------------------------------------------------------------------------------------


def test_info_nce_2x2_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = 0.5
    # logits = q k^T / t = [[2, 1.2], [0, 1.6]]; positives on the diagonal.
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    expected = (row0 + row1) / 2
    assert info_nce(q, k, t).item() == pytest.approx(expected, rel=1e-6)
    # k -> q: logits = k q^T / t = [[2, 0], [1.2, 1.6]]
    back = (
        -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0)) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    ) / 2
    assert symmetric_info_nce(q, k, t).item() == pytest.approx((expected + back) / 2, rel=1e-6)


def test_info_nce_equals_cross_entropy_and_extra_negatives() -> None:
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    k = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(10, 8, generator=g), dim=1)
    torch.testing.assert_close(info_nce(q, k, 0.2), F.cross_entropy(q @ k.t() / 0.2, torch.arange(6)))
    # MoCo v1/v2 queue: extra columns of negatives after the in-batch keys.
    expected = F.cross_entropy(torch.cat([q @ k.t(), q @ queue.t()], 1) / 0.2, torch.arange(6))
    torch.testing.assert_close(info_nce(q, k, 0.2, negatives=queue), expected)
    # A learnable temperature receives a gradient.
    t = torch.tensor(0.2, requires_grad=True)
    info_nce(q, k, t).backward()
    assert t.grad is not None and t.grad.abs() > 0


def test_info_nce_rejects_misaligned_batches() -> None:
    with pytest.raises(ValueError, match="same batch size"):
        info_nce(torch.randn(3, 2), torch.randn(4, 2))


def _full_batch() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(WORLD * LOCAL_BATCH, DIM, generator=g, dtype=torch.float64)
    b = torch.randn(WORLD * LOCAL_BATCH, DIM, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    proj = torch.nn.Linear(DIM, DIM).double()
    return a, b, proj


def _losses(proj: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    za = F.normalize(proj(a), dim=1)
    zb = F.normalize(b, dim=1)
    return symmetric_info_nce(za, zb, TEMPERATURE), info_nce(za, zb, TEMPERATURE)


def test_ddp_info_nce_equals_full_batch(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(r), str(WORLD), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(WORLD)
    ]
    for r, proc in enumerate(procs):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"rank {r} failed:\n{err[-3000:]}"

    a, b, proj = _full_batch()
    a.requires_grad_(True)
    symmetric, one_way = _losses(proj, a, b)
    symmetric.backward(retain_graph=True)
    param_grads = [p.grad.clone() for p in proj.parameters()]
    proj.zero_grad()
    (a_grad,) = torch.autograd.grad(one_way, a)

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    # Loss value: the mean of the local losses is the full-batch loss (each rank averages its queries).
    torch.testing.assert_close(sum(r["symmetric"] for r in results) / WORLD, symmetric.detach())
    torch.testing.assert_close(sum(r["one_way"] for r in results) / WORLD, one_way.detach())
    for r, result in enumerate(results):
        # DDP averages the parameter gradients over ranks -> exactly the full-batch gradient.
        for got, want in zip(result["param_grads"], param_grads, strict=True):
            torch.testing.assert_close(got, want)
        # Input gradient convention: the local grad is d(sum_r L_r)/dx = WORLD x the full-batch grad.
        rows = slice(r * LOCAL_BATCH, (r + 1) * LOCAL_BATCH)
        torch.testing.assert_close(result["input_grad"] / WORLD, a_grad[rows])
        # Without the rank offset the positives would be wrong: rank 1's local loss differs from the
        # loss of its queries against its own shard only.
        assert not torch.allclose(result["one_way"], result["one_way_local_keys"])


def _worker(rank_: int, world: int, out_dir: Path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir / 'store'}", rank=rank_, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        a, b, proj = _full_batch()
        rows = slice(rank_ * LOCAL_BATCH, (rank_ + 1) * LOCAL_BATCH)
        a_local, b_local = a[rows].clone().requires_grad_(True), b[rows].clone()
        model = DistributedDataParallel(proj)
        symmetric, one_way = _losses(model, a_local, b_local)
        symmetric.backward()
        param_grads = [p.grad.clone() for p in model.parameters()]
        _, one_way = _losses(proj, a_local, b_local)  # plain module: no DDP hook for the input-grad check
        (input_grad,) = torch.autograd.grad(one_way, a_local)
        with torch.no_grad():
            za, zb = F.normalize(proj(a_local), dim=1), F.normalize(b_local, dim=1)
            local_keys = info_nce(za, zb, TEMPERATURE, gather=False)
        torch.save(
            {
                "symmetric": symmetric.detach(),
                "one_way": one_way.detach(),
                "one_way_local_keys": local_keys,
                "param_grads": param_grads,
                "input_grad": input_grad,
            },
            out_dir / f"rank{rank_}.pt",
        )
        dist.barrier()  # both ranks finish their collectives before gloo is torn down
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# Mask losses
# ----------------------------------------------------------------------------------------------------


def test_sigmoid_bce_mean_over_pixels_then_masks() -> None:
    logits = torch.tensor([[[0.0, 2.0]], [[-1.0, 3.0]]])  # 2 masks of 1x2 pixels
    targets = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])

    def bce(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    per_mask = [(bce(0, 1) + bce(2, 0)) / 2, (bce(-1, 0) + bce(3, 1)) / 2]
    assert sigmoid_bce_loss(logits, targets).item() == pytest.approx(sum(per_mask) / 2, rel=1e-6)
    assert sigmoid_bce_loss(logits, targets, num_masks=4).item() == pytest.approx(sum(per_mask) / 4, rel=1e-6)
    torch.testing.assert_close(
        sigmoid_bce_loss(logits, targets.bool()), F.binary_cross_entropy_with_logits(logits, targets)
    )


def test_dice_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [20.0, 20.0, -20.0, -20.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # mask 0: p = 0.5 everywhere -> 1 - (2*1 + 1) / (2 + 2 + 1) = 0.4; mask 1: perfect -> ~0
    assert dice_loss(logits, targets).item() == pytest.approx((0.4 + 0.0) / 2, abs=1e-6)
    # An empty prediction of an empty mask costs nothing thanks to the smoothing term.
    assert dice_loss(torch.full((1, 4), -50.0), torch.zeros(1, 4)).item() == pytest.approx(0.0, abs=1e-6)
    # LISA/PixelLM variant: sums scaled by 1/1000 with eps 1e-6.
    lisa = 1 - (2 * 1 / 1000 + 1e-6) / (2 / 1000 + 2 / 1000 + 1e-6)
    got = dice_loss(logits[:1], targets[:1], scale=1000.0, smooth=1e-6).item()
    assert got == pytest.approx(lisa, rel=1e-5)


# ----------------------------------------------------------------------------------------------------
# BERT masking
# ----------------------------------------------------------------------------------------------------

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 50
IDS = MaskingIds(mask_id=MASK, vocab_size=VOCAB, special_ids=[PAD, UNK, CLS, SEP, MASK])


def _batch(n: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    ids[:, 0] = CLS
    lengths = torch.randint(length // 2, length, (n,), generator=g)
    for i, n_tokens in enumerate(lengths.tolist()):
        ids[i, n_tokens - 1] = SEP
        ids[i, n_tokens:] = PAD
    return ids


def test_mask_tokens_statistics_and_specials() -> None:
    ids = _batch(2000, 64, seed=0)
    masked, labels = mask_tokens(ids, IDS, generator=torch.Generator().manual_seed(1))
    special = torch.isin(ids, torch.tensor([PAD, CLS, SEP]))
    selected = labels != IGNORE_INDEX

    assert not selected[special].any(), "special or padding tokens were selected"
    torch.testing.assert_close(masked[special], ids[special])
    torch.testing.assert_close(labels[selected], ids[selected])
    torch.testing.assert_close(masked[~selected], ids[~selected])

    n_candidates = int((~special).sum())
    n_selected = int(selected.sum())
    assert n_selected / n_candidates == pytest.approx(0.15, abs=0.005)
    became_mask = masked[selected] == MASK
    kept = masked[selected] == ids[selected]
    replaced = ~became_mask & ~kept
    assert became_mask.float().mean().item() == pytest.approx(0.8, abs=0.01)
    # A random draw equal to the original counts as "kept": 10% + 10% / 45 non-special ids.
    assert kept.float().mean().item() == pytest.approx(0.1 + 0.1 / (VOCAB - 5), abs=0.01)
    assert replaced.float().mean().item() == pytest.approx(0.1 - 0.1 / (VOCAB - 5), abs=0.01)
    random_tokens = masked[selected][replaced]
    assert not torch.isin(random_tokens, torch.tensor(IDS.special_ids)).any()
    assert len(random_tokens.unique()) == VOCAB - 5  # drawn from the whole non-special vocabulary


def test_mask_tokens_is_reproducible_and_leaves_input_alone() -> None:
    ids = _batch(8, 16, seed=3)
    original = ids.clone()
    first = mask_tokens(ids, IDS, generator=torch.Generator().manual_seed(7))
    second = mask_tokens(ids, IDS, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(ids, original)
    masked, labels = mask_tokens(ids, IDS, probability=0.0)
    assert (labels == IGNORE_INDEX).all() and torch.equal(masked, ids)


def test_mask_tokens_with_hf_tokenizer(tmp_path: Path) -> None:
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    raw = BertWordPieceTokenizer()
    raw.train_from_iterator(["a red circle", "two blue squares"] * 5, vocab_size=60, show_progress=False)
    tokenizer = BertTokenizerFast(tokenizer_object=raw._tokenizer)
    ids_info = MaskingIds.from_tokenizer(tokenizer)
    assert ids_info.mask_id == tokenizer.mask_token_id
    assert set(ids_info.special_ids) == set(tokenizer.all_special_ids)
    batch = tokenizer(["a red circle", "two blue squares a red circle"], padding=True, return_tensors="pt")
    masked, labels = mask_tokens(
        batch["input_ids"], tokenizer, probability=1.0, generator=torch.Generator().manual_seed(0)
    )
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert (labels[special] == IGNORE_INDEX).all()
    assert (labels[~special] == batch["input_ids"][~special]).all()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
