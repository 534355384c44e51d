"""The pieces of exact resume (vislang.shared.data.resume, .loaders): sampler order and position, per-sample
seeding, the callback's state, the newest-checkpoint choice, and a kill in the middle of a checkpoint write.
The packages' demos are killed and resumed end to end in tests/test_demos_resume.py (slow)."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vislang.shared.data.loaders import eval_loader, train_loader
from vislang.shared.data.resume import ResumableSampler, SampleKey, newest_checkpoint, seeded
from vislang.shared.data.robust import RobustDataset


class _RandomCrop(Dataset):
    """Each item draws from all three global generators, as augmentations do."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "draw": torch.rand(()).item() + np.random.rand() + random.random()}


def _keys(sampler: ResumableSampler) -> list[int]:
    return [key.index for key in sampler]


def test_sampler_order_is_a_function_of_seed_and_epoch_only() -> None:
    dataset = _RandomCrop()
    a = ResumableSampler(dataset, seed=3, num_replicas=1, rank=0)
    torch.manual_seed(123)  # the global generator plays no part
    first = _keys(a)
    torch.manual_seed(456)
    assert _keys(ResumableSampler(dataset, seed=3, num_replicas=1, rank=0)) == first
    assert sorted(first) == list(range(20)) and first != list(range(20))
    a.set_epoch(1)
    assert _keys(a) != first
    assert {key.epoch for key in a} == {1} and {key.seed for key in a} == {3}


def test_sampler_starts_mid_epoch_where_the_checkpoint_was() -> None:
    dataset = _RandomCrop()
    full = ResumableSampler(dataset, seed=0, num_replicas=1, rank=0)
    full.set_epoch(2)
    whole = _keys(full)
    resumed = ResumableSampler(dataset, seed=0, num_replicas=1, rank=0)
    resumed.start_at(2, 7)
    assert _keys(resumed) == whole[7:]
    assert _keys(resumed) == whole  # the skip applies once; a re-iteration (max_size_cycle) is the whole epoch
    at_end = ResumableSampler(dataset, seed=0, num_replicas=1, rank=0)
    at_end.start_at(2, 20)  # an epoch consumed to its end resumes with the next one
    assert at_end.epoch == 3 and len(_keys(at_end)) == 20


def test_ranks_split_an_epoch_without_overlap_and_weighted_draws_are_seeded() -> None:
    dataset = _RandomCrop()
    shares = [_keys(ResumableSampler(dataset, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 10 and not set(shares[0]) & set(shares[1])
    weights = [0.0] * 10 + [1.0] * 10
    drawn = [
        _keys(ResumableSampler(dataset, seed=1, weights=weights, num_samples=50, num_replicas=1, rank=0))
        for _ in range(2)
    ]
    assert drawn[0] == drawn[1] and len(drawn[0]) == 50 and min(drawn[0]) >= 10


def test_a_sample_draws_the_same_augmentation_whatever_the_process_state_and_leaves_it_untouched() -> None:
    robust = RobustDataset(_RandomCrop())
    key = SampleKey(4, epoch=1, seed=0)
    torch.manual_seed(1)
    first = robust[key]["draw"]
    after = torch.rand(3)
    torch.manual_seed(1)
    np.random.seed(99)
    random.seed(7)
    assert robust[key]["draw"] == first
    assert torch.equal(torch.rand(3), after)  # loading did not move the training stream
    assert robust[SampleKey(4, epoch=2, seed=0)]["draw"] != first  # a new epoch, a new augmentation


def test_seeded_restores_every_generator() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    expected = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    with seeded([SampleKey(1, 0, 0)]):
        torch.rand(5), np.random.rand(5), random.random()
    got = torch.rand(2), np.random.rand(2), random.random()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_the_collate_runs_seeded_by_its_batch() -> None:
    def masking_collate(samples: list[dict]) -> dict:  # draws like a masked-language-model collate
        return {"index": torch.tensor([s["index"] for s in samples]), "mask": torch.rand(len(samples))}

    def batches() -> list[dict]:
        return list(train_loader(_RandomCrop(), 4, collate=masking_collate))

    torch.manual_seed(5)
    a = batches()
    torch.manual_seed(6)
    b = batches()
    assert all(
        torch.equal(x["index"], y["index"]) and torch.equal(x["mask"], y["mask"]) for x, y in zip(a, b, strict=True)
    )
    assert "_sample_key" not in a[0] and a[0]["load_failures"] == 0


def test_eval_loader_keeps_the_order() -> None:
    assert [int(i) for b in eval_loader(_RandomCrop(), 6) for i in b["index"]] == list(range(20))


_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import fsspec.implementations.local as local
    import torch
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    folder, kill_at_write = sys.argv[1], int(sys.argv[2])
    writes = [0]
    original = local.LocalFileOpener.write
    def write(self, data):  # the kill lands half-way through writing last.ckpt's bytes
        if self.path.endswith("last.ckpt"):
            writes[0] += 1
            if writes[0] == kill_at_write:
                original(self, data[: len(data) // 2])
                self.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, data)
    local.LocalFileOpener.write = write
    data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4)
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=1)
    Trainer(max_steps=4, callbacks=[checkpoint], logger=False, enable_progress_bar=False).fit(Tiny(), data)
    """
)


def test_a_kill_while_writing_last_ckpt_leaves_the_previous_one_intact(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(_RUN)
    folder = tmp_path / "checkpoints"
    result = subprocess.run(
        [sys.executable, str(script), str(folder), "3"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == -9, result.stderr[-2000:]
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2  # the third save (step 3) was cut short; the second is whole

    class _Trainer:  # what newest_checkpoint reads: the checkpoint callbacks' folders
        checkpoint_callbacks = [type("C", (), {"dirpath": str(folder)})()]

    newest = newest_checkpoint(_Trainer())
    assert newest is not None and torch.load(newest, weights_only=True)["global_step"] == 3  # step 3's own file


def test_shipped_configs_name_package_assets_not_source_paths(tmp_path: Path, monkeypatch) -> None:
    """Configs run from any working directory: an asset is named `pkg://<package>/<path>`, never by its
    place in the source tree."""
    from vislang.shared.preflight import check_tokenizer
    from vislang.shared.text import load_tokenizer

    repo = Path(__file__).resolve().parents[2]
    settings = [
        (config.name, line.split("#", 1)[0])
        for config in sorted(repo.glob("packages/*/configs/*.yaml"))
        for line in config.read_text().splitlines()
    ]
    assert not [name for name, line in settings if "shared/src/" in line or "packages/" in line]
    assets = {line.split(":", 1)[1].strip() for _, line in settings if "pkg://" in line}
    assert assets == {"pkg://vislang.shared/assets/synthetic_wordpiece"}
    monkeypatch.chdir(tmp_path)
    for asset in assets:
        assert check_tokenizer("model.tokenizer", asset, "fix") == []
        assert load_tokenizer(asset).tokenize("a red circle")
    assert check_tokenizer("model.tokenizer", "pkg://vislang.nothing/x", "fix")[0].problem.startswith("pkg://")
