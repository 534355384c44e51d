"""Behaviour snapshots: is a refactor free of behaviour change? Not collected by pytest; run by hand.

A snapshot is a short, seeded `lightning fit` of one config (a few batches, two epochs, so the
schedule, a validation pass and a checkpoint all happen), run in an empty working directory with one
thread, from the source tree you name. It records every tensor of the checkpoint it wrote (weights,
buffers, optimiser state) as a SHA-256, every logged metric, and the run's last printed lines. Run the
same config from the tree before and after a change and compare:

    python tests/behaviour_snapshot.py run --tree /tmp/base --config packages/vlab/configs/demo.yaml --out before.json
    python tests/behaviour_snapshot.py run --tree .         --config packages/vlab/configs/demo.yaml --out after.json
    python tests/behaviour_snapshot.py compare before.json after.json

``--tree`` puts that tree's ``shared/src`` and ``packages/*/src`` first on ``PYTHONPATH``, so an older
checkout (a ``git worktree``) runs with its own code in this environment. Extra arguments after ``--``
go to the ``lightning fit`` command line (e.g. a class path that moved).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def _tensor_digests(tree: object, prefix: str = "") -> dict[str, str]:
    """SHA-256 of every tensor in a nested checkpoint structure, keyed by its path in it."""
    out: dict[str, str] = {}
    if isinstance(tree, torch.Tensor):
        data = tree.detach().cpu().contiguous()
        out[prefix] = (
            f"{tuple(data.shape)} {data.dtype} "
            + hashlib.sha256(data.reshape(-1).view(torch.uint8).numpy()).hexdigest()
        )
    elif isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_tensor_digests(value, f"{prefix}/{key}"))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            out.update(_tensor_digests(value, f"{prefix}/{i}"))
    return out


def run(tree: Path, config: str, batches: int, epochs: int, extra: list[str]) -> dict[str, object]:
    tree = tree.resolve()
    sources = [tree / "shared" / "src", *sorted((tree / "packages").glob("*/src"))]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(map(str, sources)))
    with tempfile.TemporaryDirectory(prefix="snapshot-") as work:
        command = [
            sys.executable,
            "-m",
            "vislang.shared",
            "fit",
            "--config",
            str(tree / config),
            f"--trainer.limit_train_batches={batches}",
            f"--trainer.limit_val_batches={batches}",
            f"--trainer.max_epochs={epochs}",
            "--trainer.num_sanity_val_steps=0",
            *extra,
        ]
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"{config}: the run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        checkpoints = sorted(Path(work).rglob("last.ckpt")) or sorted(Path(work).rglob("*.ckpt"))
        digests = {}
        for path in checkpoints:
            state = torch.load(path, map_location="cpu", weights_only=False)
            state = {key: state[key] for key in ("state_dict", "optimizer_states", "lr_schedulers") if key in state}
            digests.update(_tensor_digests(state, str(path.relative_to(work))))
        metrics = []
        for path in sorted(Path(work).rglob("metrics.csv")):
            with path.open() as handle:
                metrics += [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
        printed = [line for line in done.stdout.splitlines() if line.strip()][-40:]
    return {"config": config, "tree": str(tree), "tensors": digests, "metrics": metrics, "printed": printed}


def compare(before: dict, after: dict) -> int:
    """Print what differs; 0 when the tensors and the logged metrics are the same."""
    problems = 0
    old, new = before["tensors"], after["tensors"]
    if old.keys() != new.keys():
        # a key that moved but kept its value is a rename, not a behaviour change
        if sorted(old.values()) == sorted(new.values()):
            print(f"tensors: {len(old)} identical values; keys renamed: {sorted(set(old) ^ set(new))[:6]} ...")
        else:
            problems += 1
            print(
                f"tensors: key sets differ ({len(set(old) - set(new))} only before, {len(set(new) - set(old))} only after)"
            )
    differing = [key for key in old.keys() & new.keys() if old[key] != new[key]]
    problems += bool(differing)
    print(f"tensors: {len(old.keys() & new.keys()) - len(differing)} of {len(old.keys() & new.keys())} identical")
    for key in sorted(differing)[:10]:
        print(f"  differs: {key}")
    if before["metrics"] != after["metrics"]:
        problems += 1
        print("metrics: differ")
        for row_old, row_new in zip(before["metrics"], after["metrics"], strict=False):
            for key in sorted(row_old.keys() | row_new.keys()):
                if row_old.get(key) != row_new.get(key):
                    print(f"  {key}: {row_old.get(key)} -> {row_new.get(key)}")
    else:
        print(f"metrics: {len(before['metrics'])} logged rows identical")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--tree", type=Path, default=Path("."))
    run_parser.add_argument("--config", required=True)
    run_parser.add_argument("--out", type=Path, required=True)
    run_parser.add_argument("--batches", type=int, default=4)
    run_parser.add_argument("--epochs", type=int, default=2)
    compare_parser = commands.add_parser("compare")
    compare_parser.add_argument("before", type=Path)
    compare_parser.add_argument("after", type=Path)
    args, extra = parser.parse_known_args()
    if args.command == "run":
        extra = [arg for arg in extra if arg != "--"]
        snapshot = run(args.tree, args.config, args.batches, args.epochs, extra)
        args.out.write_text(json.dumps(snapshot, indent=1))
        print(
            f"{args.config}: {len(snapshot['tensors'])} tensors, {len(snapshot['metrics'])} metric rows -> {args.out}"
        )
    else:
        sys.exit(compare(json.loads(args.before.read_text()), json.loads(args.after.read_text())))


if __name__ == "__main__":
    main()
