"""vislang.shared.checkpoint: safe loading, round trips, unwrapping, renaming, loading into modules."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from vislang.shared.checkpoint import (
    CheckpointError,
    LoadReport,
    StateDictMismatchError,
    UnsafeCheckpointError,
    load_into,
    load_state_dict,
    load_weights,
    rename_keys,
    save_state_dict,
    strip_prefix,
    unwrap_state_dict,
)


def _write_marker(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class _RunsFunction:
    """Unpickling this calls ``_write_marker`` -- the shape of every malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (_write_marker, (self.marker,))


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


# ----------------------------------------------------------------------------------------------------
# Refusing code
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [_RunsFunction, _RunsShell])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_pickle_that_runs_code_is_refused_without_running(tmp_path: Path, payload: type, fmt: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {"w": torch.ones(2)}, "extra": payload(marker)},
        path,
        _use_new_zipfile_serialization=fmt == "zip",
    )
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict(path)
    assert not marker.exists(), "unpickling executed code from the checkpoint"
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    expected_global = "_write_marker" if payload is _RunsFunction else "system"
    assert expected_global in message  # names what it wanted
    assert "safetensors" in message and "weights_only=False" in message  # says how to convert

    # Control: the fixture really is malicious -- an unsafe load runs its code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_raw_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": _RunsFunction(marker)}))
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_state_dict(path)
    assert not marker.exists()


def test_conversion_hint_works(tmp_path: Path) -> None:
    """The command in the refusal converts a trusted checkpoint into one that loads."""
    path = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.arange(3.0)}, "args": _Args()}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict(path)
    command = str(info.value).split('python -c "', 1)[1].split('"', 1)[0]
    exec(command, {"_Args": _Args})  # what the user runs in a trusted environment
    torch.testing.assert_close(load_state_dict(tmp_path / "old.safetensors"), {"w": torch.arange(3.0)})


class _Args:
    """Stands in for an argparse-like object that official checkpoints often pickle."""


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


def test_missing_unknown_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state_dict(tmp_path / "nope.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"w\.npz.*unknown checkpoint extension"):
        load_state_dict(tmp_path / "w.npz")
    for name, data in [("bad.safetensors", b"garbage"), ("bad.pt", b"garbage\x00"), ("trunc.ckpt", None)]:
        path = tmp_path / name
        if data is None:
            torch.save({"w": torch.ones(100)}, path)
            data = path.read_bytes()[:200]
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_state_dict(path)
        assert not isinstance(info.value, UnsafeCheckpointError)
        assert name in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Round trips and unwrapping
# ----------------------------------------------------------------------------------------------------


def test_safetensors_round_trip_with_shared_and_strided_tensors(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    state = {
        "embed": base,
        "tied": base,  # same storage (tied weights)
        "transposed": base.t(),  # non-contiguous view of the same storage
        "row": base[1],  # slice of a larger storage
        "ints": torch.tensor([1, 2, 3]),
    }
    path = save_state_dict(state, tmp_path / "out" / "w.safetensors", metadata={"source": "test"})
    loaded = load_state_dict(path)
    assert set(loaded) == set(state)  # safetensors stores keys sorted
    for name, tensor in state.items():
        torch.testing.assert_close(loaded[name], tensor)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"source": "test"}
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temporary file left


def test_pt_round_trip(tmp_path: Path) -> None:
    net = _tiny_net()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    torch.save(net.state_dict(), tmp_path / "pytorch_model.bin")
    for name in ("w.pth", "pytorch_model.bin"):
        torch.testing.assert_close(load_state_dict(tmp_path / name), dict(net.state_dict()))


@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # Lightning's own deprecation, not ours
def test_unwraps_lightning_checkpoint_from_a_real_trainer(tmp_path: Path) -> None:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self, data_root: Path = Path("/data"), lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()  # Lightning pickles the Path hyper-parameter
            self.net = nn.Linear(2, 1)

        def training_step(self, batch: torch.Tensor, _: int) -> torch.Tensor:
            return self.net(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    module = Module()
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(torch.randn(4, 2), batch_size=2))
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    # The Path hyper-parameter is outside torch's default allow-list; pathlib is allowed as inert.
    with pytest.raises(pickle.UnpicklingError, match="Path"):
        torch.load(tmp_path / "last.ckpt", weights_only=True)
    state = load_state_dict(tmp_path / "last.ckpt")
    torch.testing.assert_close(state, dict(module.state_dict()))
    assert set(state) == {"net.weight", "net.bias"}
    fresh = nn.Linear(2, 1)
    assert load_weights(fresh, tmp_path / "last.ckpt", prefix="net.", strict=True).ok
    torch.testing.assert_close(fresh.weight, module.net.weight)


def test_unwrap_nested_and_explicit_keys() -> None:
    w = torch.ones(2)
    assert unwrap_state_dict({"epoch": 3, "model": {"module": {"w": w}}}) == {"w": w}
    assert unwrap_state_dict({"state_dict": OrderedDict(w=w, step=5)}) == {"w": w}  # non-tensors dropped
    assert unwrap_state_dict({"model": {"w": w}, "ema": {"w": 2 * w}}, key="ema")["w"].sum() == 4
    with pytest.raises(CheckpointError, match="teacher"):
        unwrap_state_dict({"model": {"w": w}}, key="teacher")
    with pytest.raises(CheckpointError, match="no tensors"):
        unwrap_state_dict({"epoch": 3, "optimizer": {}})


# ----------------------------------------------------------------------------------------------------
# Renaming and loading into modules
# ----------------------------------------------------------------------------------------------------


def test_strip_prefix() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    state = {"module.encoder_q.w": a, "module.queue": b}
    stripped = strip_prefix(state, "module.")
    assert stripped == {"encoder_q.w": a, "queue": b}
    assert strip_prefix(stripped, "encoder_q.", drop_others=True) == {"w": a}
    assert strip_prefix(stripped, "encoder_q.") == {"w": a, "queue": b}


def test_rename_keys_in_order_with_groups_and_drops() -> None:
    t = torch.zeros(1)
    state = {"blocks.0.attn.qkv.weight": t, "blocks.11.mlp.fc1.bias": t, "decoder_embed.weight": t, "cls_token": t}
    rules = [
        (r"^decoder_", None),
        (r"^blocks\.(\d+)\.", r"encoder.layers.\1."),
        (r"\.attn\.qkv\.", ".attention.in_proj."),
        (r"^encoder\.layers\.11\.", "encoder.last."),  # sees the result of the previous rules
    ]
    assert list(rename_keys(state, rules)) == [
        "encoder.layers.0.attention.in_proj.weight",
        "encoder.last.mlp.fc1.bias",
        "cls_token",
    ]
    with pytest.raises(ValueError, match="both"):
        rename_keys({"a.w": t, "b.w": t}, [(r"^[ab]\.", "")])


def test_load_into_reports_missing_unexpected_and_shape_mismatch() -> None:
    source = _tiny_net().state_dict()
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 5))  # new head, 5 classes
    state = {k: v for k, v in source.items() if k != "0.bias"}
    state["decoder.w"] = torch.zeros(1)

    report = load_into(target, state)
    assert isinstance(report, LoadReport) and not report.ok
    assert report.missing == ["0.bias"]
    assert report.unexpected == ["decoder.w"]
    assert report.mismatched == [("2.weight", (2, 4), (5, 4)), ("2.bias", (2,), (5,))]
    torch.testing.assert_close(target[0].weight, source["0.weight"])  # the rest was loaded
    assert "2.weight" in str(report)

    with pytest.raises(StateDictMismatchError) as info:
        load_into(target, state, strict=True, allowed_unexpected=[r"decoder\..*"])
    assert "2.weight" in str(info.value) and "decoder.w" not in str(info.value).splitlines()[0]
    assert info.value.report.mismatched == report.mismatched

    ok = load_into(
        target, state, strict=True, allowed_missing=[r"0\.bias", r"2\..*"], allowed_unexpected=[r"decoder\..*"]
    )
    assert ok.mismatched and not ok.ok  # allowed, still reported
