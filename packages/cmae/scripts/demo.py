"""The CMAE demo, end to end on synthetic object-centric images (CPU, about six minutes on two cores):

    python packages/cmae/scripts/demo.py [--out demo_outputs/cmae_demo] [--seeds 0 1] [--jobs 2]   (= make demo-cmae)

1. writes the synthetic images once (``configs/demo.yaml``'s data: 32-px images of one large shape on a flat
   background, class = the shape) in the ImageNet folder layout, which the real ImageNet reader then reads;
2. for every seed, pre-trains the tiny model twice with ``lightning fit --config configs/demo.yaml``: CMAE
   (``ct_weight: 1``) and plain MAE (``ct_weight: 0``, the same steps, masking, views and decoder), so the
   two differ only by the contrastive branch's loss;
3. after each pre-training the config's ``FewLabelEvaluation`` callback fine-tunes the encoder end to end on
   10 % of the training labels for a fixed number of steps, probes its frozen features (kNN and linear), and
   does the same for a random-init encoder (once per seed, in the CMAE run);
4. prints the table of every run and the two differences the demo is about: CMAE vs random init and CMAE
   vs MAE, per seed, as measured.

Every run is the command a user can type; this script only chains them (``--jobs`` runs in parallel, one
thread each) and reads back their ``evaluation.json``. It is a script beside the package, not part of
``vislang.cmae``: it needs the repository's ``configs/demo.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from vislang.cmae.data import CMAEPretrainDataModule

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
METHODS = (("cmae", 1.0), ("mae", 0.0))
"""(name, contrastive loss weight) of the two pre-trainings compared at each seed."""
FINETUNE_BAR = 10.0
"""The demo's bar: CMAE fine-tuning beats the random-init encoder by this many points on every seed."""


def _run_name(seed: int, method: str) -> str:
    return f"seed{seed}_{method}"


def _command(seed: int, method: str, ct_weight: float, out: Path, root: Path, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vislang.shared",
        "fit",
        "--config",
        str(CONFIG),
        f"--seed_everything={seed}",
        f"--model.init_args.ct_weight={ct_weight}",
        f"--data.init_args.root={root}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={_run_name(seed, method)}",
        "--trainer.enable_progress_bar=false",
        # the random-init encoder depends on the seed only: the CMAE run of the seed evaluates it
        f"--trainer.callbacks.random_init={str(method == 'cmae').lower()}",
        *extra,
    ]


def _latest_results(out: Path, name: str) -> dict:
    runs = sorted((out / name).glob("version_*/evaluation.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"{out / name}: the run wrote no evaluation.json; see {out / (name + '.log')}")
    return json.loads(runs[-1].read_text())


def write_images(root: Path, extra: Sequence[str]) -> None:
    """The config's synthetic images, written once before the runs start (the runs then only read them)."""
    args = dict(yaml.safe_load(CONFIG.read_text())["data"]["init_args"], root=str(root))
    for item in extra:  # --data.init_args.key=value overrides given to the demo apply here too
        if item.startswith("--data.init_args.") and "=" in item:
            key, value = item.removeprefix("--data.init_args.").split("=", 1)
            args[key] = yaml.safe_load(value)
    CMAEPretrainDataModule(**args).prepare_data()


def run_all(seeds: Sequence[int], out: Path, root: Path, jobs: int, extra: Sequence[str]) -> dict[str, float]:
    """Every (seed, method) pre-training + evaluation, ``jobs`` at a time; returns each run's wall seconds."""
    env = dict(os.environ)
    if jobs > 1:  # one core per run
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pending = [(seed, method, ct) for seed in seeds for method, ct in METHODS]
    running: list[tuple[str, subprocess.Popen, float]] = []
    seconds: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < jobs:
            seed, method, ct = pending.pop(0)
            name = _run_name(seed, method)
            log = (out / f"{name}.log").open("w")
            print(
                f"[{time.strftime('%H:%M:%S')}] start {name}: pre-train ({method.upper()}) + evaluation "
                f"(log: {out / (name + '.log')})",
                flush=True,
            )
            process = subprocess.Popen(
                _command(seed, method, ct, out, root, extra), stdout=log, stderr=subprocess.STDOUT, env=env
            )
            running.append((name, process, time.time()))
        time.sleep(0.5)
        for entry in list(running):
            name, process, start = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            seconds[name] = time.time() - start
            if process.returncode != 0:
                for _, other, _ in running:
                    other.terminate()
                tail = (out / f"{name}.log").read_text().splitlines()[-15:]
                raise SystemExit(
                    f"{name} failed (exit {process.returncode}); last lines of its log:\n" + "\n".join(tail)
                )
            print(f"[{time.strftime('%H:%M:%S')}] done  {name} in {seconds[name]:.0f} s", flush=True)
    return seconds


def summary(seeds: Sequence[int], out: Path) -> tuple[str, bool]:
    """The demo's table (every seed: CMAE, MAE, random init) and whether CMAE met the fine-tuning bar."""
    results = {(seed, method): _latest_results(out, _run_name(seed, method)) for seed in seeds for method, _ in METHODS}
    first = results[(seeds[0], "cmae")]
    labels = first["labels"]
    header = f"  {'top-1 % on held-out images':<34}"
    for seed in seeds:
        header += f"| seed {seed}: {'CMAE':>6}{'MAE':>7}{'random':>8}  "
    lines = [
        f"\nCMAE demo: {labels['train']} of {labels['of']} training labels, {labels['val']} held-out images, "
        f"5 shape classes (majority class {first['majority_class']:.1f} %)",
        header,
    ]
    rows = {
        "finetune": "fine-tuning (end to end)",
        "knn": "kNN probe (frozen)",
        "linear_probe": "linear probe (frozen)",
    }
    for key, label in rows.items():
        line = f"  {label:<34}"
        for seed in seeds:
            cmae, mae = results[(seed, "cmae")][key], results[(seed, "mae")][key]
            line += f"|   {'':>6}{cmae['pretrained']:>6.1f}{mae['pretrained']:>7.1f}{cmae['random_init']:>8.1f}  "
        lines.append(line)
    passed = True
    lines.append("")
    for seed in seeds:
        cmae, mae = results[(seed, "cmae")]["finetune"], results[(seed, "mae")]["finetune"]
        gain = cmae["pretrained"] - cmae["random_init"]
        passed &= gain >= FINETUNE_BAR
        lines.append(
            f"  seed {seed}: fine-tuning CMAE - random init = {gain:+.1f} points "
            f"({'meets' if gain >= FINETUNE_BAR else 'MISSES'} the >= +{FINETUNE_BAR:.0f} bar); "
            f"CMAE - MAE = {cmae['pretrained'] - mae['pretrained']:+.1f} points; "
            f"MAE - random init = {mae['pretrained'] - cmae['random_init']:+.1f} points"
        )
    return "\n".join(lines) + "\n", passed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments are passed to every `lightning fit` run, e.g. --trainer.max_epochs=4.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_outputs/cmae_demo"), help="runs, logs, images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each when > 1)")
    args, extra = parser.parse_known_args(argv)
    start = time.time()
    root = args.out / "images"
    write_images(root, extra)
    seconds = run_all(args.seeds, args.out, root, max(args.jobs, 1), extra)
    table, _ = summary(args.seeds, args.out)
    print(table, flush=True)
    print(
        f"wall time {time.time() - start:.0f} s ({args.jobs} run(s) at a time; runs "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + f"); load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
