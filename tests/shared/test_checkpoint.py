"""vislang.shared.checkpoint: safe loading, round trips, unwrapping, renaming, loading into modules."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from vislang.shared.checkpoint import (
    CheckpointError,
    CheckpointRecord,
    LoadReport,
    StateDictMismatchError,
    UnsafeCheckpointError,
    load_checkpoint,
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
    """A script's own class pickled next to the weights: not on the allow-list, so the file is refused."""


# ----------------------------------------------------------------------------------------------------
# Metadata real training scripts write (mmengine runners, MAE-style argparse scripts)
# ----------------------------------------------------------------------------------------------------


def _save_as_mmengine(path: Path, payload: dict, monkeypatch: pytest.MonkeyPatch, marker: Path) -> None:
    """``torch.save`` with a class pickled under mmengine's ``HistoryBuffer`` name, as a runner does
    (``message_hub.state_dict()``); mmengine itself is not needed. Its ``__setstate__`` would write ``marker``."""

    class HistoryBuffer:
        def __init__(self, values: list[float]) -> None:
            self._log_history = np.array(values)
            self._count_history = np.ones(len(values), dtype=np.int64)
            self.max_length = 1000000

        def __setstate__(self, state: dict) -> None:  # must never run on load
            Path(marker).write_text("HistoryBuffer code ran")
            self.__dict__.update(state)

    module = types.ModuleType("mmengine.logging.history_buffer")
    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    payload["message_hub"] = {
        "log_scalars": {"train/loss": HistoryBuffer([0.9, 0.8]), "train/lr": HistoryBuffer([1e-4])},
        "runtime_info": {"epoch": 1600, "iter": 500000, "max_epochs": 1600},
        "resumed_keys": {"epoch": True},
    }
    torch.save(payload, path)
    monkeypatch.delitem(sys.modules, module.__name__)  # loading must not depend on it


def test_mmengine_runner_checkpoint_loads_with_its_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner checkpoint as mmengine writes it: ``meta`` with NumPy scalars / strings / arrays, the message
    hub's HistoryBuffers, optimizer and scheduler states -- read under weights_only, the weights unwrapped."""
    marker = tmp_path / "ran"
    weights = {"backbone.cls_token": torch.randn(1, 1, 4), "backbone.ln1.weight": torch.ones(4)}
    meta = {
        "epoch": 1600,
        "iter": 500000,
        "seed": np.int64(60),
        "time": np.str_("20240101_000000"),
        "mmengine_version": "0.10.7",
        "cfg": "model = dict(type='CMAE')",
        "experiment_name": "cmae",
        "hook_msgs": {"best_score": np.float64(83.8), "scores": np.array([82.5, 83.8])},
        "dataset_meta": {"classes": np.array(["a", "b"])},
    }
    payload = {
        "meta": meta,
        "state_dict": OrderedDict(weights),
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
            "param_groups": [{"lr": 2.4e-3, "betas": (0.9, 0.95), "params": [0]}],
        },
        "param_schedulers": [{"base_lrs": [2.4e-3], "last_step": 40, "_get_lr_called_within_step": False}],
    }
    path = tmp_path / "epoch_1600.pth"
    _save_as_mmengine(path, payload, monkeypatch, marker)
    loaded = load_checkpoint(path)
    assert loaded["meta"]["seed"] == 60 and isinstance(loaded["meta"]["seed"], np.int64)
    assert loaded["meta"]["time"] == "20240101_000000" and loaded["meta"]["hook_msgs"]["best_score"] == 83.8
    np.testing.assert_array_equal(loaded["meta"]["hook_msgs"]["scores"], [82.5, 83.8])
    buffer = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, CheckpointRecord)  # inert stand-in: the class's own code did not run
    np.testing.assert_array_equal(buffer.state["_log_history"], [0.9, 0.8])
    assert not marker.exists()
    torch.testing.assert_close(load_state_dict(path), weights)


def test_mae_style_checkpoint_with_argparse_namespace_loads(tmp_path: Path) -> None:
    """MAE / VideoMAE / ConvMAE ``misc.save_model``: ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``."""
    args = argparse.Namespace(
        model="mae_vit_base_patch16",
        mask_ratio=0.75,
        norm_pix_loss=True,
        blr=1.5e-4,
        input_size=224,
        output_dir=Path("out"),
        device="cuda",
    )
    weights = {"cls_token": torch.randn(1, 1, 4), "blocks.0.norm1.weight": torch.ones(4)}
    path = tmp_path / "checkpoint-799.pth"
    torch.save(
        {
            "model": weights,
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 799,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0},
            "args": args,
        },
        path,
    )
    loaded = load_checkpoint(path)
    assert loaded["args"] == args and loaded["epoch"] == 799
    torch.testing.assert_close(load_state_dict(path), weights)


def test_allow_list_does_not_let_code_through_numpy_object_arrays(tmp_path: Path) -> None:
    """An object array is allowed only if each element is: one that runs code is still refused."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    evil = np.empty(1, dtype=object)
    evil[0] = _RunsFunction(marker)
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"hook_msgs": evil}, "args": argparse.Namespace()}, path)
    with pytest.raises(UnsafeCheckpointError, match="_write_marker"):
        load_state_dict(path)
    assert not marker.exists()


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
