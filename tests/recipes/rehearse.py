"""Rehearse one paper config on CPU: two optimiser steps of its own trainer, precision, clipping, accumulation,
schedule, samplers and callbacks, with only the model shrunk to the `tiny` preset and the data replaced by the
synthetic world written in the config's own on-disk layout.

Run as a script, once per process (the way a cluster starts it):

    python tests/recipes/rehearse.py --config packages/soho/configs/soho_r101_vqa.yaml --out out.json --work DIR
    torchrun --nnodes 1 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT \
        tests/recipes/rehearse.py --config ... --out out.json --work DIR

Each process writes `out.<rank>.json`: what Lightning counted (world size, batches per epoch per process,
accumulation, estimated optimiser steps), the two optimiser steps it took (every trainable parameter's change,
saved beside as a tensor file), and which training and validation samples the data module holds (file content
digests). `tests/recipes/test_rehearsal.py` compares those with `vislang.shared.recipe`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision

from vislang.shared.cli import trainer_presets, with_preset_trainer

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC_TOKENIZER = str(REPO / "shared/src/vislang/shared/assets/synthetic_wordpiece")

# Only the model size and the data source change; each entry names why a key is replaced.
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    "cmae": {"preset": "tiny", "init_weights": None},  # video configs: video_tiny (see _model_preset)
    "vlab": {"preset": "tiny", "clip_weights": None, "decoder_weights": None, "gradient_checkpointing": False},
    "soho": {"init_weights": None, "max_text_len": 24},
    "pixelbert": {"init_weights": None, "max_text_len": 24},
    "pixellm": {
        "preset": "tiny",
        "llava_weights": None,
        "clip_weights": None,
        "pixellm_weights": None,
        "prompt_template": "<image> {question}",
        "max_new_tokens": 8,
        "eval_num_points": None,
    },
}
PAPER_OVERRIDES: dict[str, dict[str, Any]] = {"pixelbert": {"num_samples": 8}}  # inside `model.init_args.paper`
TOKENIZER_KEYS = ("tokenizer", "decoder_tokenizer")
# 16-mixed: the GradScaler's first scale. torch's default 2**16 overflows some random-init tiny models' fp16
# gradients on the first step (Pixel-BERT: the scaler skips it and halves, as it does early in a GPU run), and a
# skipped step cannot be compared with the fp32 one; 2**12 keeps the check sharp: a clip of still-scaled
# gradients shrinks the step 4096 times.
INIT_SCALE = 2.0**12
# per-process batch of the rehearsal: 2, except where 2 samples make the loss itself degenerate (CMAE's projector
# BatchNorm over 2 samples and an InfoNCE with one negative give fp32 gradients of norm ~100 that bf16 rounding
# turns around; at 16 the bf16 and fp32 gradients agree to cos 0.98)
BATCH_SIZE = {"cmae": 8}


def _model_preset(package: str, preset: str) -> str:
    """The tiny preset of the same kind: a video model stays a video model, a hybrid stays hybrid."""
    if package == "cmae" and preset.startswith("video_"):
        return "video_tiny"
    if package == "cmae" and preset.startswith("convvit"):
        return "convvit_tiny"
    return "tiny"


def _data_overrides(package: str, init_args: dict[str, Any], work: Path, batch_size: int) -> dict[str, Any]:
    """The synthetic world in the config's own layout, at a size two steps under 2-process DDP can reach."""
    data = work / "data"
    common = {"num_workers": 0, "batch_size": batch_size, "eval_batch_size": 4}
    if package == "cmae":
        out = {"root": str(data), "synthetic_samples": 48, "image_size": 32, **common}
        if "num_frames" in init_args:  # a video config: the video_tiny preset's 4 frames
            out["num_frames"] = 4
        return out
    if package == "vlab":
        return {
            "root": str(data),
            "videos_dir": None,
            "synthetic_videos": 48,
            "image_size": 32,
            "num_frames": 2,
            "eval_num_frames": 2,
            **common,
        }
    if package in ("soho", "pixelbert"):
        return {
            "root": str(data),
            "synthetic_images": 48,
            "image_size": 64,
            "max_size": 64,
            "train_sizes": None,
            **common,
        }
    if package == "pixellm":  # the synthetic switch writes MUSE only: the mix becomes MUSE alone
        return {
            "muse_root": str(data / "muse"),
            "muse_image_dir": "images",
            "muse_image_layout": "flat",
            "muse_train": "muse_train.json",
            "muse_val": ["muse_val.json"],
            "muse_test": [],
            "refer_root": None,
            "refer_train": [],
            "refer_val": [],
            "refer_test": [],
            "vqa_json": None,
            "vqa_image_dir": None,
            "sem_seg_root": None,
            "sem_seg_sources": [],
            "sample_rates": None,
            "synthetic_images": 48,
            "synthetic_image_size": 64,
            "image_size": 64,
            "patch_size": 8,
            "samples_per_epoch": 40,
            "val_limit": 8,
            **common,
        }
    raise ValueError(f"no rehearsal for package {package!r}")


def rehearsal_config(config: Path, work: Path, batch_size: int) -> dict[str, Any]:
    """The paper config with the model shrunk and the data synthetic; trainer settings left as configured."""
    package = config.parts[-3]
    cfg = with_preset_trainer(yaml.safe_load(config.read_text()))
    model = cfg["model"].setdefault("init_args", {})
    paper_args = model["paper"] if isinstance(model.get("paper"), dict) else model  # SOHO / Pixel-BERT: `paper:`
    preset = _model_preset(package, str(paper_args.get("preset", "")))
    for key, value in MODEL_OVERRIDES[package].items():
        if key in model or key == "preset" or value is not None:
            model[key] = value
    for key, value in PAPER_OVERRIDES.get(package, {}).items():  # SOHO / Pixel-BERT: their `paper:` spec
        paper_args[key] = value
    paper_args["preset"] = preset
    if paper_args is not model:
        model.pop("preset", None)
    for key in list(model):  # no pretrained starts: the tiny model is random (nothing to download)
        if key.endswith("_weights"):
            model[key] = None
    for key in TOKENIZER_KEYS:
        if model.get(key):
            model[key] = SYNTHETIC_TOKENIZER
    data = cfg["data"].setdefault("init_args", {})
    for key, value in _data_overrides(package, data, work, batch_size).items():
        data[key] = value
    if "tokenizer" in data:
        data["tokenizer"] = SYNTHETIC_TOKENIZER
    return cfg


class StepRecorder(Callback):
    """Records every trainable parameter's change over each optimiser step; stops after `steps` of them."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.deltas: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self._pending: dict[int, torch.Tensor | None] = {}
        self.before: torch.Tensor | None = None
        self.global_step = 0
        self.batches = 0

    def _flat(self, module: LightningModule) -> torch.Tensor:
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.cat([p.detach().double().flatten() for p in params]) if params else torch.zeros(0)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.before = self._flat(pl_module)
        self.global_step = trainer.global_step

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        """The gradients the optimiser receives (unscaled by a GradScaler; Lightning clips right after). With
        several optimisers (single-stream: AdamW + SGD) each contributes its own parameters."""
        for group in optimizer.param_groups:
            for p in group["params"]:
                self._pending[id(p)] = p.grad.detach().double().flatten().clone() if p.grad is not None else None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.batches += 1
        if trainer.global_step == self.global_step:
            return  # accumulating
        self.global_step = trainer.global_step
        after = self._flat(pl_module)
        self.deltas.append(after - self.before)
        params = [p for p in pl_module.parameters() if p.requires_grad]
        self.grads.append(
            torch.cat(
                [g if (g := self._pending.get(id(p))) is not None else p.new_zeros(p.numel()).double() for p in params]
            )
        )
        self._pending = {}
        self.before = after
        if len(self.deltas) >= self.steps:
            trainer.should_stop = True


def _content_digest(path: str) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _paths_in(value: Any) -> list[str]:
    """Existing files named anywhere in a record (a dataclass, dict, list or path)."""
    if isinstance(value, str | Path):
        return [str(value)] if len(str(value)) < 4096 and Path(value).is_file() else []
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _paths_in(v)]
    return []


def sample_digests(dataset: Any) -> list[str]:
    """Content digests of the files a dataset's items read (`sample_file`, or the paths its records name)."""
    datasets = getattr(dataset, "datasets", None)
    if datasets is not None:  # ConcatDataset
        return sorted({d for sub in datasets for d in sample_digests(sub)})
    if hasattr(dataset, "sample_file"):
        files = [f for i in range(len(dataset)) for f in _paths_in(dataset.sample_file(i))]  # 1 or 2 images
    else:
        records = next(getattr(dataset, a) for a in ("samples", "items", "examples", "images") if hasattr(dataset, a))
        files = _paths_in(list(records))
    return sorted({_content_digest(str(f)) for f in files if Path(str(f)).is_file()})


def _loaders(loaders: Any) -> list[Any]:
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, list | tuple):
        return list(loaders)
    return [loaders]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (data, logs), shared by the ranks")
    parser.add_argument("--out", type=Path, required=True, help="out.json: each rank writes out.<rank>.json")
    parser.add_argument("--fp32", action="store_true", help="the reference: precision 32-true, all else the same")
    parser.add_argument(
        "--strategy", default="config", help="with > 1 process: config (its own, ddp if auto), ddp or fsdp"
    )
    parser.add_argument("--batch-size", type=int, help="per process (default: BATCH_SIZE, else 2)")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    from vislang.shared.cli import build_cli

    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    batch_size = args.batch_size or BATCH_SIZE.get(args.config.resolve().parts[-3], 2)
    cfg = rehearsal_config(args.config.resolve(), args.work, batch_size)
    trainer_cfg = cfg["trainer"]
    configured_precision = str(trainer_cfg.get("precision", "32-true"))
    precision = "32-true" if args.fp32 else configured_precision
    trainer_cfg.update(
        {
            "accelerator": "cpu",
            "devices": world,
            "num_nodes": 1,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(args.work / "root"),
            "enable_progress_bar": False,
            # torch's SyncBatchNorm runs on CUDA only ("SyncBatchNorm layers only work with GPU
            # modules"): on CPU the BN statistics stay per process
            "sync_batchnorm": False,
        }
    )
    logger = trainer_cfg.get("logger")
    if isinstance(logger, dict):  # the config's logger, writing into the scratch folder
        logger.setdefault("init_args", {})["save_dir"] = str(args.work / "logs")
    configured_strategy = trainer_cfg.get("strategy", "auto")
    if world == 1:
        trainer_cfg["strategy"] = "auto"
    elif args.strategy == "fsdp":
        trainer_cfg["strategy"] = _fsdp()
    elif args.strategy == "config" and configured_strategy not in (None, "auto"):
        trainer_cfg["strategy"] = configured_strategy  # e.g. ddp_find_unused_parameters_true
    else:
        trainer_cfg["strategy"] = "ddp"  # what Lightning's "auto" picks for several GPUs
    # the Trainer refuses 16-mixed on CPU: build with 32-true, then give the strategy Lightning's own 16-mixed
    # plugin with a CPU GradScaler (torch >= 2.3), the code path a GPU run takes
    trainer_cfg["precision"] = "32-true" if precision == "16-mixed" else precision
    path = args.work / f"config.{'fp32' if args.fp32 else 'amp'}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    cli = build_cli(["-c", str(path)], run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    scaler = None
    if precision == "16-mixed":
        scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
        trainer.strategy.precision_plugin = MixedPrecision("16-mixed", device="cpu", scaler=scaler)
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            callback.dirpath = str(args.work / "checkpoints")
    recorder = StepRecorder(args.steps)
    trainer.callbacks.append(recorder)
    for m in model.modules():  # no dropout: the mixed and fp32 runs then differ by rounding only
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    trainer.fit(model, datamodule=datamodule)

    rank = trainer.global_rank
    # several task loaders (VLAB's CombinedLoader, max_size_cycle): an epoch is the longest one
    train_loader = max(_loaders(trainer.train_dataloader), key=len)
    datamodule.setup("validate") if not trainer.val_dataloaders else None
    val_sets = [loader.dataset for loader in _loaders(trainer.val_dataloaders)]
    deltas = torch.stack(recorder.deltas) if recorder.deltas else torch.zeros(0)
    stem = args.out.with_suffix("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(deltas, f"{stem}.{rank}.pt")
    torch.save(recorder.grads, f"{stem}.{rank}.grads.pt")
    result = {
        "rank": rank,
        "world_size": trainer.world_size,
        "cluster_environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
        "strategy": type(trainer.strategy).__name__,
        "precision_plugin": type(trainer.strategy.precision_plugin).__name__,
        "precision": precision,
        "scaler_scale": float(scaler.get_scale()) if scaler is not None else None,
        "batches_per_epoch": trainer.num_training_batches,
        "train_items": len(train_loader.dataset),
        "loader_batch_size": train_loader.batch_size,
        "drop_last": bool(train_loader.drop_last),
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "max_epochs": trainer.max_epochs,
        "estimated_stepping_batches": trainer.estimated_stepping_batches,
        "optimizer_steps": len(recorder.deltas),
        "batches_seen": recorder.batches,
        "gradient_clip_val": trainer.gradient_clip_val,
        "train_digests": sorted({d for lo in _loaders(trainer.train_dataloader) for d in sample_digests(lo.dataset)}),
        "val_digests": sorted({d for ds in val_sets for d in sample_digests(ds)}),
    }
    Path(f"{stem}.{rank}.json").write_text(json.dumps(result))


def _fsdp() -> dict[str, Any]:
    """The shared FSDP preset's strategy (the `fsdp` preset), wrapping every tiny model's blocks."""
    preset = yaml.safe_load(trainer_presets()["fsdp"].read_text())
    return preset["strategy"]


if __name__ == "__main__":
    sys.exit(main())
