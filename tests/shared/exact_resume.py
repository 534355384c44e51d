"""Shared by the packages' exact-resume tests: run a config three times through the real `lightning`
command — uninterrupted; killed with SIGKILL at a step or epoch; resumed from ``--ckpt_path last`` —
and compare the final checkpoints bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).parent


def run_lightning(
    config: Path,
    args: list[str],
    workdir: Path,
    checkpoints: Path,
    kill: dict | None = None,
    resume: bool = False,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    """`lightning fit` with a checkpoint after every optimiser step (and `KillAt(**kill)` if given)."""
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(checkpoints), "save_last": True, "every_n_train_steps": 1},
        },
    ]
    if kill:
        callbacks.append({"class_path": "resume_killer.KillAt", "init_args": kill})
    overlay = workdir / f"overlay_{checkpoints.name}_{'resume' if resume else 'run'}.yaml"
    overlay.write_text(
        yaml.safe_dump({"trainer": {"callbacks": callbacks, "logger": False, "enable_checkpointing": True}})
    )
    command = [str(Path(sys.executable).parent / "lightning"), "fit", "-c", str(config), *args, "-c", str(overlay)]
    if resume:
        command.append("--ckpt_path=last")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=workdir, env=env)


def final_state(checkpoints: Path) -> dict[str, torch.Tensor]:
    """Weights and optimiser state of the newest checkpoint in the folder."""
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    tensors = {f"model.{k}": v for k, v in state["state_dict"].items()}
    for i, optimizer in enumerate(state["optimizer_states"]):
        for param, values in optimizer["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim{i}.{param}.{name}"] = value
    tensors["global_step"] = torch.tensor(state["global_step"])
    return tensors


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bit-identical (or present in one only)."""
    names = sorted(set(a) | set(b))
    return [n for n in names if n not in a or n not in b or not torch.equal(a[n], b[n])]


def check_exact_resume(config: Path, args: list[str], tmp_path: Path, kill: dict) -> None:
    """Uninterrupted vs killed-and-resumed: same final weights and optimiser state, bit for bit."""
    straight = run_lightning(config, args, tmp_path, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_lightning(config, args, tmp_path, tmp_path / "killed", kill=kill)
    assert killed.returncode == -9, f"the run was not killed (rc {killed.returncode}): {killed.stderr[-2000:]}"
    resumed = run_lightning(config, args, tmp_path, tmp_path / "killed", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "killed")
    assert int(a["global_step"]) == int(b["global_step"]) > 0
    diff = differing(a, b)
    assert not diff, f"{len(diff)} of {len(a)} tensors differ after resuming, e.g. {diff[:5]}"
