"""The VLAB demo trained from WebDataset shards written from the synthetic world, read locally and over HTTP."""

from __future__ import annotations

import functools
import http.server
import json
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback

from vislang.shared.cli import build_cli
from vislang.shared.data.shards import ShardLoader
from vislang.shared.data.shards import main as shards_main

DEMO = Path(__file__).resolve().parents[2] / "packages" / "vlab" / "configs" / "demo.yaml"
TOKENIZER = DEMO.parents[3] / "shared/src/vislang/shared/assets/synthetic_wordpiece"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory) -> tuple[Path, Path]:
    """The demo config's synthetic world (24 videos instead of 1,000) in the MSRVTT layout, and its training
    split written to shards of 4 videos by the shard writer's command line."""
    folder = tmp_path_factory.mktemp("vlab_shards")
    config = yaml.safe_load(DEMO.read_text())
    config["data"]["init_args"].update(root=str(folder / "msrvtt"), synthetic_videos=24)
    (folder / "demo.yaml").write_text(yaml.safe_dump(config))
    shards_main(
        ["write", "--from", str(folder / "demo.yaml"), "--out", str(folder / "shards"), "--samples-per-shard", "4"]
    )
    return folder / "msrvtt", folder / "shards"


def test_shards_hold_each_training_video_with_its_captions_and_qa(demo_shards: tuple[Path, Path]) -> None:
    root, shards = demo_shards
    train_videos = {row.split(",")[0] for row in (root / "MSRVTT_train.9k.csv").read_text().split()[1:]}
    found = {}
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            for name in names:
                if name.endswith(".json"):
                    meta = json.load(tar.extractfile(name))
                    key = name.removesuffix(".json")
                    assert f"{key}.mp4" in names and f"{key}.txt" in names  # video2dataset's layout
                    video = tar.extractfile(f"{key}.mp4").read()
                    assert video == (root / meta["video"]).read_bytes()
                    found[Path(meta["video"]).stem] = meta
        assert json.loads(shard.with_name(shard.stem + "_stats.json").read_text())["successes"] == len(names) // 3
    assert train_videos <= set(found)
    sentences = json.loads((root / "MSRVTT_data.json").read_text())["sentences"]
    some = next(iter(train_videos))
    assert found[some]["captions"] == [s["caption"] for s in sentences if s["video_id"] == some]
    assert all(meta["qa"] for meta in found.values())


def _fit_demo_from(shards: str, root: Path, tmp_path: Path, workers: int) -> object:
    return build_cli(
        [
            "fit",
            "-c",
            str(DEMO),
            f"--data.init_args.root={root}",
            "--data.init_args.synthetic_videos=0",
            f"--data.init_args.train_shards={shards}",
            f"--data.init_args.num_workers={workers}",
            "--data.init_args.batch_size=4",
            "--data.init_args.shuffle_buffer=8",
            "--trainer.max_epochs=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--model.init_args.decoder_tokenizer={TOKENIZER}",
        ]
    )


def test_demo_trains_from_local_shards(demo_shards: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    root, shards = demo_shards
    monkeypatch.chdir(tmp_path)
    cli = _fit_demo_from(str(shards), root, tmp_path, workers=0)
    loaders = cli.trainer.fit_loop._combined_loader.flattened
    assert all(isinstance(loader, ShardLoader) for loader in loaders) and len(loaders) == 2
    # one worker is dealt every shard: all full batches of the training videos, in each of 2 epochs
    assert cli.trainer.global_step == 2 * len(loaders[0]) > 0
    assert loaders[0].dataset.epoch == 1  # Lightning's set_epoch reached the dataset
    assert set(cli.model.last_scores) == {"retrieval", "qa"}


def test_demo_trains_from_shards_served_over_http(demo_shards: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    root, shards = demo_shards
    handler = functools.partial(_QuietHandler, directory=shards)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.chdir(tmp_path)
    try:
        last = len(list(shards.glob("*.tar"))) - 1
        url = f"http://127.0.0.1:{server.server_port}/{{00000..{last:05d}}}.tar"
        cli = _fit_demo_from(url, root, tmp_path, workers=2)
        assert cli.trainer.global_step == 2 * len(cli.trainer.fit_loop._combined_loader.flattened[0]) > 0
        assert server.RequestHandlerClass is not None and _QuietHandler.requests >= 2 * (last + 1)  # stats + tars
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def log_message(self, *args) -> None:
        type(self).requests += 1


@pytest.mark.slow
@pytest.mark.parametrize(("kill", "workers"), [({"step": 3}, 2), ({"step": 6}, 0)], ids=["2-workers", "main-process"])
def test_killed_and_resumed_shard_run_equals_the_uninterrupted_one(
    demo_shards: tuple[Path, Path], kill: dict, workers: int, tmp_path: Path, check_exact_resume
) -> None:
    """Killed with SIGKILL mid-epoch (an odd batch: with 2 workers the next batch comes from worker 1) and
    resumed with `--ckpt_path last`: the shards' skip_batches makes the weights and optimiser state equal
    the uninterrupted run's, bit for bit."""
    root, shards = demo_shards
    args = [
        f"--data.init_args.root={root}",
        "--data.init_args.synthetic_videos=0",
        f"--data.init_args.train_shards={shards}",
        f"--data.init_args.num_workers={workers}",
        "--data.init_args.batch_size=4",
        "--data.init_args.shuffle_buffer=8",
        "--trainer.max_epochs=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
    ]
    check_exact_resume(DEMO, args, tmp_path, kill)


class RecordIndices(Callback):
    """Writes the sample indices each rank trained on, per task, to ``folder/rank<N>.json`` (for the DDP test)."""

    def __init__(self, folder: str) -> None:
        self.folder, self.seen = Path(folder), {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for task, part in batch.items():
            self.seen.setdefault(task, []).extend(int(i) for i in part["index"])

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


@pytest.mark.slow
def test_demo_from_shards_under_two_process_ddp(demo_shards: tuple[Path, Path], tmp_path: Path) -> None:
    """Two CPU processes (rank and world size from the process group, one loader worker each) train on
    disjoint samples and take the same number of steps, so the epoch ends without a hang."""
    import os
    import subprocess

    root, shards = demo_shards
    lightning = Path(sys.executable).parent / "lightning"
    record = {"class_path": "test_vlab_shards.RecordIndices", "init_args": {"folder": str(tmp_path / "seen")}}
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [record], "logger": False}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [
            str(lightning),
            "fit",
            "-c",
            str(DEMO),
            f"--data.init_args.root={root}",
            "--data.init_args.synthetic_videos=0",
            f"--data.init_args.train_shards={shards}",
            "--data.init_args.num_workers=1",
            "--data.init_args.batch_size=2",
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.max_epochs=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={tmp_path}",
            "-c",
            str(overlay),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / "seen" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for task in ("retrieval", "qa"):
        first, second = seen[0][task], seen[1][task]
        assert len(first) == len(second) > 0  # the same number of steps of the same batch size
        assert len(set(first) | set(second)) == len(first) + len(second)  # no sample on both ranks or twice
        assert {i // 10**7 for i in first}.isdisjoint({i // 10**7 for i in second})  # whole shards per rank
