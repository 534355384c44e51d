"""SOHO visual dictionary: nearest neighbour, straight-through gradient, EMA step, DDP consistency."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from vislang.soho.model import VisualDictionary


def test_nearest_neighbour_equals_brute_force():
    torch.manual_seed(0)
    vd = VisualDictionary(num_tokens=32, dim=8).eval()
    x = torch.randn(100, 8)
    brute = torch.stack([((vd.embed - row) ** 2).sum(1).argmin() for row in x])
    assert torch.equal(vd.lookup(x), brute)
    assert torch.equal(vd.lookup(x), torch.cdist(x, vd.embed).argmin(1))


def test_straight_through_gradient_is_identity_and_forward_is_the_code():
    torch.manual_seed(0)
    vd = VisualDictionary(num_tokens=16, dim=4).eval()
    x = torch.randn(10, 4, requires_grad=True)
    quantized, index = vd(x)
    assert torch.allclose(quantized, vd.embed[index])
    weights = torch.randn(10, 4)
    (quantized * weights).sum().backward()
    assert torch.equal(x.grad, weights)
    assert all(not b.requires_grad for b in vd.buffers())


def test_one_ema_step_matches_hand_computation():
    vd = VisualDictionary(num_tokens=3, dim=1, decay=0.5, eps=1e-5)
    vd.embed.copy_(torch.tensor([[0.0], [10.0], [-7.0]]))
    vd.embed_avg.copy_(vd.embed)
    vd.train()
    x = torch.tensor([[1.0], [3.0]])  # both nearest to code 0
    vd(x)
    n = torch.tensor([2.0, 0.0, 0.0])
    cluster = 0.5 * torch.zeros(3) + 0.5 * n
    avg = 0.5 * torch.tensor([[0.0], [10.0], [-7.0]]) + 0.5 * torch.tensor([[4.0], [0.0], [0.0]])
    total = cluster.sum()
    smoothed = (cluster + 1e-5) / (total + 3 * 1e-5) * total
    assert torch.allclose(vd.cluster_size, cluster)
    assert torch.allclose(vd.embed, avg / smoothed[:, None])
    assert vd.embed[0].item() == pytest.approx(2.0, abs=1e-4)  # mean of the assigned batch
    assert int(vd.updates) == 1


def test_decay_ramp_is_configurable():
    vd = VisualDictionary(num_tokens=4, dim=2, decay=0.1, decay_ramp=True, max_decay=0.99)
    assert vd.current_decay() == pytest.approx(0.1)
    vd.updates.fill_(20)
    assert vd.current_decay() == pytest.approx(0.99)
    assert VisualDictionary(4, 2, decay=0.4).current_decay() == 0.4


def test_dead_code_restart_reseeds_unused_codes():
    torch.manual_seed(0)
    vd = VisualDictionary(num_tokens=8, dim=2, decay=0.0, restart_dead=True).train()
    x = torch.randn(5, 2) + 100.0
    vd(x)
    assert (vd.embed.norm(dim=1) > 50).all()  # every code now sits among the features, none at zero


def _ddp_rank(rank: int, world: int, out: str) -> None:
    """One rank of the DDP test (run as a script): one training step of the dictionary on rank-specific data."""
    from datetime import timedelta

    store = dist.FileStore(f"{out}/store", world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    torch.manual_seed(0)  # identical initial dictionaries
    vd = VisualDictionary(num_tokens=16, dim=4, decay=0.4, restart_dead=True).train()
    torch.manual_seed(100 + rank)  # different data per rank
    vd(torch.randn(30, 4))
    torch.save({k: v.clone() for k, v in vd.state_dict().items()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_ddp_step_keeps_copies_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(r), "2", str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(a["updates"]) == 1
    # the update used both ranks' data: the code counts sum to 2 x 30 features x (1 - decay)
    assert float(a["cluster_size"].sum()) == pytest.approx(60 * 0.6, rel=1e-5)


if __name__ == "__main__":
    _ddp_rank(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
