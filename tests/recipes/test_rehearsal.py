"""Recipe rehearsal: every paper config trains two optimiser steps on CPU at its own precision, clipping,
accumulation, schedule, samplers and callbacks (model shrunk to `tiny`, data synthetic in the same layout), in
one process and under 2-process DDP launched by torchrun, and checks

* every process's optimiser step equals the fp32 step of the same run within rounding (a clip of still-scaled
  gradients under 16-mixed, or a GradScaler that skips the step, fails this),
* the processes agree (DDP averaged the gradients),
* the optimiser steps per epoch and in total, and the global batch, that Lightning counts equal
  `vislang.shared.recipe`'s arithmetic (the function the README tables print at the paper's world size),
* no validation item is in the training set (file contents compared).

The last tests launch the same runner the way SLURM and torchrun start a cluster job.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from vislang.shared.cli import trainer_presets
from vislang.shared.recipe import DROP_LAST, optimizer_steps_per_epoch, paper_configs, recipe

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("rehearse.py")
INIT_SCALE = 2.0**12  # rehearse.py's first GradScaler scale under 16-mixed
REHEARSED = ("cmae", "vlab", "soho", "pixelbert", "pixellm")
CONFIGS = [c for c in paper_configs() if c.parts[-3] in REHEARSED]
# Mixed precision against fp32, per optimiser step: the gradients the optimiser receives (unscaled, before the
# clip) within GRAD_TOLERANCE (relative L2 distance), and the step itself, whose size must match within
# STEP_SIZE_TOLERANCE and whose direction within STEP_TOLERANCE (Adam's first steps are ~lr x sign(gradient), so
# rounding flips the sign of near-zero gradients: the step direction is looser than the gradient's). A clip of
# still-scaled gradients, or a skipped step, changes the size by orders of magnitude.
GRAD_TOLERANCE = {"16-mixed": 0.1, "bf16-mixed": 0.3, "32-true": 1e-9}
STEP_TOLERANCE = {"16-mixed": 0.4, "bf16-mixed": 0.7, "32-true": 1e-9}
STEP_SIZE_TOLERANCE = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_", "OMPI_"))}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK"):
        env.pop(key, None)
    return env


def _check(done: subprocess.CompletedProcess | list, what: str) -> None:
    for proc in done if isinstance(done, list) else [done]:
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise AssertionError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def run(
    config: Path, work: Path, world: int, fp32: bool = False, launcher: str = "torchrun", strategy: str = "config"
) -> list[dict[str, Any]]:
    """Run the rehearsal; one result per process (its counts and its optimiser steps as `deltas`)."""
    out = work / ("fp32" if fp32 else "amp") / "out.json"
    args = [str(RUNNER), "--config", str(config), "--work", str(work), "--out", str(out), "--strategy", strategy]
    args += ["--fp32"] if fp32 else []
    env = _env()
    if world == 1:
        _check(subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True), "run")
    elif launcher == "torchrun":
        rdzv = ["--nnodes", "1", "--nproc-per-node", str(world), "--rdzv-backend", "c10d"]
        rdzv += ["--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", *rdzv, *args]
        _check(subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900), "torchrun")
    elif launcher == "slurm":
        _check(launch_as_slurm(args, world, env), "SLURM-launched run")
    else:
        raise ValueError(launcher)
    results = []
    for rank in range(world):
        result = json.loads(Path(f"{out.with_suffix('')}.{rank}.json").read_text())
        result["deltas"] = torch.load(f"{out.with_suffix('')}.{rank}.pt")
        result["grads"] = torch.load(f"{out.with_suffix('')}.{rank}.grads.pt")
        results.append(result)
    return results


def launch_as_slurm(args: list[str], world: int, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Start `world` processes with the variables `srun` sets for one node (Lightning's SLURMEnvironment)."""
    port = free_port()
    procs = []
    for rank in range(world):
        slurm = {
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NAME": "rehearsal",  # not "bash"/"interactive", which Lightning treats as no SLURM job
            "SLURM_NTASKS": str(world),
            "SLURM_NTASKS_PER_NODE": str(world),
            "SLURM_NNODES": "1",
            "SLURM_NODELIST": "127.0.0.1",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NODEID": "0",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                env={**env, **slurm},
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


def _distance(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Relative L2 distance of `a` from `b`, and the ratio of their norms."""
    return float((a - b).norm() / b.norm()), float(a.norm() / b.norm())


def check_steps(
    amp: list[dict[str, Any]], fp32: list[dict[str, Any]], steps: int = 2, same_on_all_processes: bool = True
) -> None:
    """Each process took `steps` optimiser steps, equal to the fp32 ones within rounding, and the same on all."""
    precision = amp[0]["precision"]
    for a, f in zip(amp, fp32, strict=True):
        assert a["optimizer_steps"] == f["optimizer_steps"] == steps
        if a["scaler_scale"] is not None:  # 16-mixed: the GradScaler never skipped a step (finite gradients)
            assert a["scaler_scale"] >= INIT_SCALE
        for step in range(steps):
            grad, grad_ratio = _distance(a["grads"][step], f["grads"][step])
            size = f["deltas"][step].norm()
            assert size > 0, "the fp32 step moved nothing"
            distance, ratio = _distance(a["deltas"][step], f["deltas"][step])
            print(
                f"rank {a['rank']} step {step} {precision}: gradient distance {grad:.4f} (norm ratio "
                f"{grad_ratio:.4f}), step distance {distance:.4f} (norm ratio {ratio:.4f})"
            )
            assert grad < GRAD_TOLERANCE[precision], f"rank {a['rank']} step {step}: gradients differ ({grad:.3f})"
            assert distance < STEP_TOLERANCE[precision] and abs(ratio - 1) < STEP_SIZE_TOLERANCE, (
                f"rank {a['rank']} step {step}: the {precision} step differs from the fp32 step: relative distance "
                f"{distance:.3f}, norm ratio {ratio:.3f}"
            )
    for other in amp[1:] if same_on_all_processes else []:  # DDP: every process applied the same averaged gradients
        assert torch.allclose(other["deltas"], amp[0]["deltas"], rtol=1e-5, atol=1e-7)


def check_counts(config: Path, work: Path, results: list[dict[str, Any]]) -> None:
    """Lightning's counts at this world size equal the recipe arithmetic the README tables use."""
    rehearsed = work / "config.amp.yaml"  # the config as run: same trainer, tiny batch, synthetic data
    cfg = yaml.safe_load(rehearsed.read_text())
    r0 = results[0]
    world = r0["world_size"]
    assert world == len(results)
    ours = recipe(rehearsed, gpus=world, items={p: r0["train_items"] for p in ("train", "pretrain", *_tasks(cfg))})
    assert r0["drop_last"] == DROP_LAST[cfg["data"]["class_path"]]
    per_epoch = set(ours.steps_per_epoch.values())  # every phase was given the measured training set
    assert len(per_epoch) == 1
    per_epoch = per_epoch.pop()
    if not cfg["data"]["init_args"].get("samples_per_epoch"):  # the recipe's arithmetic, spelled out
        assert per_epoch == optimizer_steps_per_epoch(
            r0["train_items"], r0["loader_batch_size"], world, r0["accumulate_grad_batches"], r0["drop_last"]
        )
    for r in results:
        lightning_steps = -(-r["batches_per_epoch"] // r["accumulate_grad_batches"])
        assert lightning_steps == per_epoch, f"rank {r['rank']}: Lightning {lightning_steps}, recipe {per_epoch}"
        assert r["loader_batch_size"] * world * r["accumulate_grad_batches"] == ours.global_batch
    if len(ours.steps_per_epoch) == 1:  # one phase: Lightning's whole-run estimate is the recipe's total
        assert r0["estimated_stepping_batches"] == ours.steps
    samples_per_epoch = cfg["data"]["init_args"].get("samples_per_epoch")
    if samples_per_epoch:  # PixelLM: every process draws samples_per_epoch items, whatever the world size
        assert r0["batches_per_epoch"] * r0["loader_batch_size"] == samples_per_epoch


def _tasks(cfg: dict[str, Any]) -> list[str]:
    task = cfg["data"].get("init_args", {}).get("task")
    return [] if task is None else [task] if isinstance(task, str) else list(task)


def check_no_validation_item_in_training(results: list[dict[str, Any]]) -> None:
    r0 = results[0]
    assert r0["train_digests"], "no training sample files found to compare"  # (pre-training may validate nothing)
    shared = set(r0["train_digests"]) & set(r0["val_digests"])
    assert not shared, f"{len(shared)} validation files are also training files"


def rehearse(config: Path, tmp_path: Path, world: int) -> None:
    amp = run(config, tmp_path / f"w{world}", world)
    fp32 = run(config, tmp_path / f"w{world}", world, fp32=True)
    check_steps(amp, fp32)
    check_counts(config, tmp_path / f"w{world}", amp)
    check_no_validation_item_in_training(amp)


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.parts[-3]}/{c.stem}")
def test_rehearse_paper_config(config: Path, world: int, tmp_path: Path) -> None:
    rehearse(config, tmp_path, world)


def test_rehearse_soho_vqa_in_one_process(tmp_path: Path) -> None:
    """The fast representative: 16-mixed through a CPU GradScaler, the module's own clipping, one process."""
    rehearse(REPO / "packages/soho/configs/soho_r101_vqa.yaml", tmp_path, world=1)


# -- cluster launches (the top-level README's "Multi-node" lines): SLURM's srun simulated, and torchrun ----------
# 2 CPU processes started as SLURM and torchrun start them, with the shared DDP and FSDP presets; Lightning must
# detect the launcher (SLURMEnvironment / TorchElasticEnvironment), form one world of 2 and step alike.

# bf16-mixed, SyncBN, 4 nodes x 8 GPUs in the paper; FSDP on fine-tuning (no EMA target)
MULTINODE_CONFIG = REPO / "packages/cmae/configs/imagenet_pretrain_vit_base.yaml"
FSDP_CONFIG = REPO / "packages/cmae/configs/imagenet_finetune_vit_base.yaml"


@pytest.mark.slow
def test_ddp_preset_under_simulated_slurm(tmp_path: Path) -> None:
    ddp = yaml.safe_load(trainer_presets()["ddp"].read_text())
    amp = run(MULTINODE_CONFIG, tmp_path, world=2, launcher="slurm", strategy=ddp["strategy"])
    fp32 = run(MULTINODE_CONFIG, tmp_path, world=2, launcher="slurm", strategy=ddp["strategy"], fp32=True)
    assert {r["cluster_environment"] for r in amp} == {"SLURMEnvironment"}
    assert [r["rank"] for r in amp] == [0, 1] and {r["strategy"] for r in amp} == {"DDPStrategy"}
    check_steps(amp, fp32)
    check_counts(MULTINODE_CONFIG, tmp_path, amp)


@pytest.mark.slow
def test_ddp_preset_under_torchrun(tmp_path: Path) -> None:
    amp = run(MULTINODE_CONFIG, tmp_path, world=2, launcher="torchrun", strategy="ddp")
    assert {r["cluster_environment"] for r in amp} == {"TorchElasticEnvironment"}
    assert {r["world_size"] for r in amp} == {2}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_fsdp_preset(launcher: str, tmp_path: Path) -> None:
    """The `fsdp` trainer preset's strategy (vislang.shared.strategies.FSDP) on 2 CPU processes.

    On CMAE fine-tuning: CMAE pre-training's EMA target update reads the online parameters, which FSDP has
    flattened and sharded (see the README's Multi-node notes)."""
    amp = run(FSDP_CONFIG, tmp_path, world=2, launcher=launcher, strategy="fsdp")
    fp32 = run(FSDP_CONFIG, tmp_path, world=2, launcher=launcher, strategy="fsdp", fp32=True)
    expected = "SLURMEnvironment" if launcher == "slurm" else "TorchElasticEnvironment"
    assert {r["cluster_environment"] for r in amp} == {expected}
    assert {r["strategy"] for r in amp} == {"FSDP"}
    # each process holds its own shard: compare each shard's step with the fp32 run's same shard
    check_steps(amp, fp32, same_on_all_processes=False)
    check_counts(FSDP_CONFIG, tmp_path, amp)
