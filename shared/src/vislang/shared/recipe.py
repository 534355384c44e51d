"""Training recipes: what a config trains, printed beside the paper's numbers.

    python -m vislang.shared.recipe --config packages/cmae/configs/imagenet_pretrain_vit_base.yaml
    python -m vislang.shared.recipe --package cmae      # the README's "Recipes" block of a package

For each paper config: GPUs assumed, per-GPU and global batch, epochs, optimiser steps per epoch and in total,
peak learning rate and schedule, precision. "Ours" is computed from the config (a batch size in a data config
is per process; Lightning's DistributedSampler splits the training set across processes, so a GPU sees
ceil(N / world) items a epoch), the paper's column comes from `PAPERS` (facts of shared/reference/*.md and
the official configs; a fact marked [unverified] there is marked so here). Every field where the two differ
carries a note saying why. The recipe rehearsal (tests/recipes) counts the same quantities with Lightning at
2 processes and compares them with `optimizer_steps_per_epoch`, the function the tables use.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vislang.shared.cli import with_preset_trainer

__all__ = [
    "PAPERS",
    "Paper",
    "Recipe",
    "optimizer_steps_per_epoch",
    "paper_configs",
    "recipe",
    "recipe_table",
    "readme_block",
]

REPO = Path(__file__).resolve().parents[4]

DROP_LAST = {  # do the training loaders of a data module drop the last incomplete batch (data.py `drop_last=train`)
    "vislang.cmae.data.CMAEPretrainDataModule": True,
    "vislang.cmae.data.CMAEClassificationDataModule": True,
    "vislang.vlab.data.VLABDataModule": True,
    "vislang.singlestream.data.SingleStreamDataModule": True,
    "vislang.pixellm.data.PixelLMDataModule": False,
    "vislang.vqa_ensemble.data.VQADataModule": False,
    "vislang.vqa_ensemble.data.COCODetectionDataModule": False,
}


def optimizer_steps_per_epoch(items: int, batch_size: int, world_size: int, accumulate: int, drop_last: bool) -> int:
    """Optimiser steps one epoch takes on every process.

    Lightning's DistributedSampler gives each of `world_size` processes ceil(items / world_size) items (padding
    by repetition); the loader makes batches of `batch_size` (dropping a last short one if `drop_last`); the
    optimiser steps every `accumulate` batches and at the epoch's last batch.
    """
    per_process = math.ceil(items / world_size)
    batches = per_process // batch_size if drop_last else math.ceil(per_process / batch_size)
    return math.ceil(batches / accumulate)


@dataclass(frozen=True)
class Paper:
    """The paper's (or the official code's) recipe for one config; None = not published."""

    gpus: int | None
    global_batch: int | None
    epochs: float | None
    steps: int | None
    lr: str
    schedule: str
    precision: str
    items: dict[str, int]  # training items per epoch by phase (pretrain / the task / train), our data modules' unit
    item: str  # what one item is, and the dataset size's source
    source: str
    unverified: tuple[str, ...] = ()  # fields whose paper value is [unverified]
    notes: dict[str, str] = field(default_factory=dict)  # why ours differs, per field
    gpus_assumed: int | None = None  # for `devices: auto` when the paper does not say


@dataclass(frozen=True)
class Recipe:
    """What a config trains at the world size it assumes."""

    config: str
    gpus: int
    batch_per_gpu: int
    accumulate: int
    global_batch: int
    epochs: int | None
    steps_per_epoch: dict[str, int]
    steps: int
    lr: str
    schedule: str
    precision: str
    gradient_clip: float | None


def _cfg(config: Path) -> dict[str, Any]:
    return with_preset_trainer(yaml.safe_load(Path(config).read_text()))


def _key(config: Path) -> str:
    config = Path(config)
    return f"{config.parts[-3]}/{config.stem}"


def paper_configs(package: str | None = None) -> list[Path]:
    """Every config with a paper recipe (demos and the ensemble's weight fitting train nothing)."""
    configs = sorted((REPO / "packages").glob(f"{package or '*'}/configs/*.yaml"))
    return [c for c in configs if _key(c) in PAPERS]


def _phases(data: dict[str, Any], epochs: int) -> dict[str, int]:
    """Epochs per training phase (the single-stream data module pre-trains, then runs its tasks in turn)."""
    if "pretrain_epochs" not in data and "task" not in data:
        return {"train": epochs}
    pretrain = int(data.get("pretrain_epochs", 0))
    task = data.get("task", "vqa")
    tasks = [] if task is None else [task] if isinstance(task, str) else list(task)
    phases = {"pretrain": min(pretrain, epochs)} if pretrain or not tasks else {}
    left = epochs - phases.get("pretrain", 0)
    task_epochs = list(data.get("task_epochs") or [])
    for name, n in zip(tasks, [*task_epochs, None], strict=False):
        phases[name] = left if n is None else min(n, left)
        left -= phases[name]
    return {k: v for k, v in phases.items() if v > 0}


AFTER_WARMUP = {  # what each module's schedule does after the warm-up (its configure_optimizers)
    "vislang.cmae.module.CMAEPretrainModule": "cosine to {min_lr:g}",
    "vislang.cmae.module.CMAEClassificationModule": "cosine to {min_lr:g}",
    "vislang.vlab.module.VLABModule": "cosine to 0",
    "vislang.pixellm.module.PixelLMModule": "linear decay to 0",
    "vislang.vqa_ensemble.module.DetectorModule": "cosine to 0",
}


def _schedule(model_class: str, model: dict[str, Any]) -> str:
    parts = []
    for key, unit in (("warmup_epochs", "epochs"), ("warmup_steps", "steps")):
        if model.get(key):
            parts.append(f"warm-up {model[key]} {unit}")
    if model.get("warmup_ratio"):
        parts.append(f"warm-up {model['warmup_ratio']:.0%} of steps")
    if model.get("lr_milestones"):
        parts.append(f"x0.1 at epochs {model['lr_milestones']}")
    elif model.get("decay_epochs"):
        parts.append(f"x{model.get('decay_factor', 0.1)} at epochs {model['decay_epochs']}")
    elif model_class in AFTER_WARMUP:
        parts.append(AFTER_WARMUP[model_class].format(min_lr=float(model.get("min_lr", 0.0))))
    return ", ".join(parts) or "constant"


def _lr(model: dict[str, Any]) -> str:
    extra = [f"{k} {model[k]:g}" for k in ("cnn_lr", "clip_lr", "bert_lr") if model.get(k) is not None]
    return ", ".join([f"{model['lr']:g}", *extra]) if "lr" in model else "see module"


def recipe(config: str | Path, gpus: int | None = None, items: dict[str, int] | None = None) -> Recipe:
    """The recipe of `config` at `gpus` processes (default: the config's devices x num_nodes; `auto` or -1:
    the paper's GPU count) over `items` training items per phase (default: the paper's dataset sizes)."""
    config = Path(config)
    cfg = _cfg(config)
    trainer, model = cfg.get("trainer", {}), cfg["model"].get("init_args", {})
    model = {**model, **(model.get("optimiser") or {})}  # the single-stream modules group theirs as `optimiser`
    data_class, data = cfg["data"]["class_path"], cfg["data"].get("init_args", {})
    paper = PAPERS.get(_key(config))
    if gpus is None:
        devices, nodes = trainer.get("devices", 1), int(trainer.get("num_nodes", 1))
        if isinstance(devices, int) and devices > 0:
            gpus = devices * nodes
        elif paper is not None and (paper.gpus or paper.gpus_assumed):
            gpus = paper.gpus or paper.gpus_assumed
        else:
            raise ValueError(f"{config}: trainer.devices is {devices!r}; pass the number of GPUs (--gpus)")
    batch = int(data.get("batch_size", 1))
    accumulate = int(trainer.get("accumulate_grad_batches", 1))
    max_steps = int(trainer.get("max_steps", -1) or -1)
    epochs = trainer.get("max_epochs")
    items = items if items is not None else (paper.items if paper else {})
    if "samples_per_epoch" in data and data["samples_per_epoch"]:
        # PixelLM: every process draws samples_per_epoch items a epoch (the released meaning)
        items = {"train": int(data["samples_per_epoch"]) * gpus}
    per_epoch: dict[str, int] = {}
    steps = max_steps if max_steps > 0 else 0
    if epochs is not None:
        drop_last = DROP_LAST.get(data_class, False)
        for phase, n_epochs in _phases(data, int(epochs)).items():
            if phase not in items:
                raise ValueError(f"{config}: no training-set size for phase {phase!r}")
            per_epoch[phase] = optimizer_steps_per_epoch(items[phase], batch, gpus, accumulate, drop_last)
            if max_steps <= 0:
                steps += n_epochs * per_epoch[phase]
    return Recipe(
        config=_key(config),
        gpus=gpus,
        batch_per_gpu=batch,
        accumulate=accumulate,
        global_batch=batch * gpus * accumulate,
        epochs=None if epochs is None else int(epochs),
        steps_per_epoch=per_epoch,
        steps=steps,
        lr=_lr(model),
        schedule=_schedule(cfg["model"]["class_path"], model),
        precision=str(trainer.get("precision", "32-true")),
        gradient_clip=trainer.get("gradient_clip_val"),
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "not published"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def recipe_table(config: str | Path) -> str:
    """A Markdown table: ours beside the paper's, with the reason for every difference."""
    r = recipe(config)
    p = PAPERS[_key(config)]
    per_epoch = ", ".join(f"{k} {v:,}" for k, v in r.steps_per_epoch.items()) or "-"
    batch = f"{r.global_batch:,} = {r.gpus} x {r.batch_per_gpu}" + (
        f" x {r.accumulate} accum." if r.accumulate > 1 else ""
    )
    rows = [
        ("GPUs", _fmt(r.gpus), p.gpus, "gpus"),
        ("global batch", batch, p.global_batch, "global_batch"),
        ("epochs", _fmt(r.epochs) if r.epochs else "-", p.epochs, "epochs"),
        ("optimiser steps / epoch", per_epoch, None, "steps_per_epoch"),
        ("optimiser steps", _fmt(r.steps), p.steps, "steps"),
        ("peak lr", r.lr, p.lr, "lr"),
        ("schedule", r.schedule, p.schedule, "schedule"),
        ("precision", r.precision, p.precision, "precision"),
    ]
    lines = [
        f"**{r.config}** ({p.item}; paper: {p.source})",
        "",
        "| | ours | paper | difference |",
        "|---|---|---|---|",
    ]
    for name, ours, theirs, key in rows:
        theirs_text = "-" if key == "steps_per_epoch" else _fmt(theirs)
        if key in p.unverified:
            theirs_text += " [unverified]"
        lines.append(f"| {name} | {ours} | {theirs_text} | {p.notes.get(key, '')} |")
    return "\n".join(lines)


def differing_fields(config: str | Path) -> list[str]:
    """Fields whose value differs from the paper's (numbers compared exactly; text fields are compared by the
    notes: every field named in a config's notes is one we state differs)."""
    r, p = recipe(config), PAPERS[_key(config)]
    out = []
    for key, ours, theirs in (
        ("gpus", r.gpus, p.gpus),
        ("global_batch", r.global_batch, p.global_batch),
        ("epochs", r.epochs, p.epochs),
        ("steps", r.steps, p.steps),
    ):
        if ours != theirs:  # includes "not published" (None) beside a value of ours
            out.append(key)
    return out


BEGIN, END = "<!-- recipes:begin (python -m vislang.shared.recipe --package {}) -->", "<!-- recipes:end -->"


def readme_block(package: str) -> str:
    """The README's Recipes block of a package, between markers a test compares with this output."""
    tables = "\n\n".join(recipe_table(c) for c in paper_configs(package))
    return f"{BEGIN.format(package)}\n{tables}\n{END}"


# -- the papers' recipes ------------------------------------------------------------------------------------
# Dataset sizes: ImageNet-1k train 1,281,167 images; Kinetics-400 train list of VideoMAE 240,436 videos
# [unverified: copies differ by a few thousand]; Something-Something v2 train 168,913 videos; COCO Karpathy
# train + restval 113,287 images / 566,747 captions; VG region descriptions 5.4 M on 108,077 images; VQA v2
# train2014 443,757 questions; Flickr30K Karpathy train 29,000 images; SNLI-VE train 529,527 pairs; NLVR2 train
# 86,373 statements; MSRVTT 9k train 9,000 videos; MSRVTT-QA train 158,581, MSVD-QA 30,933, TGIF-FrameQA 39,389
# questions; WebVid-2.5M 2,492,317 videos [unverified].

_IN1K = 1_281_167
_CMAE_PT = dict(
    gpus=32,
    global_batch=4096,
    epochs=1600,
    steps=1600 * (_IN1K // 4096),
    lr="2.4e-3 (1.5e-4 x 4096 / 256)",
    schedule="warm-up 40 epochs, cosine to 0",
    precision="fp16 AMP",
    items={"train": _IN1K},
    item="ImageNet-1k train images",
    unverified=("precision",),
)
_SOHO_FT_NOTE = "no official code for this task: batch, epochs and lr are ours (reference §1, unverified)"
_K400 = (240_436, "Kinetics-400 train videos (VideoMAE list, size [unverified])")
_SSV2 = (168_913, "Something-Something v2 train videos")


def _videomae(data: tuple[int, str], batch: int, epochs: int, lr: str, unverified: tuple[str, ...]) -> Paper:
    """CMAE-V has no code: VideoMAE's pre-training (32 GPUs, batch 2048) or fine-tuning (8 GPUs) recipe."""
    items, item = data
    pretrain = batch == 2048
    return Paper(
        gpus=32 if pretrain else 8,
        global_batch=batch,
        epochs=epochs,
        steps=epochs * (items // batch),
        lr=lr,
        schedule="warm-up 40 epochs, cosine to 1e-5 x 2048 / 256" if pretrain else "warm-up 5 epochs, cosine to 1e-6",
        precision="fp16 AMP",
        items={"train": items},
        item=item,
        source="VideoMAE's recipe (CMAE-V has no code; reference cmae.md §CMAE-V)"
        if pretrain
        else "VideoMAE's fine-tuning recipe for the 800-epoch model",
        unverified=(*unverified, "precision"),
        notes={"precision": "bf16-mixed", **({"schedule": "cosine end as configured by min_lr"} if pretrain else {})},
    )


PAPERS: dict[str, Paper] = {
    "cmae/imagenet_pretrain_vit_base": Paper(
        **_CMAE_PT,
        source="official cmae_vit-base-p16_32xb128-coslr-1600e_in1k.py (reference cmae.md)",
        notes={
            "precision": "bf16-mixed: fp16's range needs loss scaling; bf16 does not (same AMP memory and speed)",
            "steps": "the paper's 312 steps/epoch drops the last partial global batch; ours too (drop_last)",
        },
    ),
    "cmae/imagenet_pretrain_convvit_base": Paper(
        **{**_CMAE_PT, "unverified": ("gpus", "global_batch", "epochs", "steps", "lr", "schedule", "precision")},
        source="not released: the ViT-B recipe with the ConvViT backbone (reference cmae.md, [unverified])",
        notes={"precision": "bf16-mixed, as the ViT-B config"},
    ),
    "cmae/imagenet_finetune_vit_base": Paper(
        gpus=8,
        global_batch=1024,
        epochs=100,
        steps=100 * (_IN1K // 1024),
        lr="1e-3 (2.5e-4 x 1024 / 256)",
        schedule="warm-up 5 epochs, cosine to 1e-6",
        precision="fp16 AMP",
        items={"train": _IN1K},
        item="ImageNet-1k train images",
        source="official cmae_base_pre1600_8x128_100e_in1k.py",
        unverified=("precision",),
        notes={"precision": "bf16-mixed instead of fp16 AMP (no loss scaling needed)"},
    ),
    "cmae/imagenet_linprobe_vit_base": Paper(
        gpus=None,
        global_batch=16384,
        epochs=90,
        steps=90 * math.ceil(_IN1K / 16384),
        lr="LARS 0.1 x 16384 / 256 = 6.4",
        schedule="warm-up 10 epochs, cosine to 0",
        precision="fp16 AMP",
        items={"train": _IN1K},
        item="ImageNet-1k train images",
        source="MAE appendix A.2 (CMAE follows MAE's linear probe; reference cmae.md)",
        unverified=("gpus", "precision"),
        notes={
            "gpus": "MAE does not state the GPU count for linear probing",
            "global_batch": "4,096 with AdamW instead of LARS at 16,384 (LARS is not in torch.optim)",
            "steps": "4x the steps of the 16,384 batch",
            "lr": "AdamW lr for the smaller batch, not LARS's",
            "schedule": "5 warm-up epochs (MAE: 10)",
            "precision": "bf16-mixed",
        },
    ),
    "cmae/k400_pretrain": _videomae(_K400, 2048, 800, "1.2e-3 (1.5e-4 x 2048 / 256)", ("gpus", "steps")),
    "cmae/ssv2_pretrain": _videomae(_SSV2, 2048, 800, "1.2e-3 (1.5e-4 x 2048 / 256)", ("gpus",)),
    "cmae/k400_finetune": _videomae(_K400, 512, 100, "1e-3", ("gpus", "steps")),
    "cmae/ssv2_finetune": _videomae(_SSV2, 512, 50, "5e-4", ("gpus", "epochs")),
}

_VLAB_NOTE = "VLAB's recipe is not public (reference vlab.md): ours is VALOR/COSA's fine-tuning recipe on one GPU"
_VLAB = dict(
    gpus=None,
    global_batch=None,
    epochs=None,
    steps=None,
    lr="not published",
    schedule="not published",
    precision="fp16 (VALOR)",
    source="not published; VALOR/COSA's recipe in reference vlab.md",
    unverified=("precision",),
    notes={
        "gpus": _VLAB_NOTE,
        "global_batch": "64 per step (CLIP4Clip uses 128); more GPUs: stack the ddp preset",
        "epochs": "VALOR/COSA's fine-tuning length",
        "steps": "follows from our batch and epochs",
        "lr": "CLIP4Clip's: 1e-4 for new modules, a low lr for CLIP",
        "schedule": "VALOR/COSA: linear warm-up 10 %, then decay",
        "precision": "bf16-mixed instead of fp16 (no loss scaling)",
    },
)
PAPERS.update(
    {
        "vlab/msrvtt": Paper(
            **_VLAB, items={"train": 180_000}, item="MSRVTT 9k train (video, caption) pairs: 9,000 x 20"
        ),
        "vlab/msrvtt_caption": Paper(
            **_VLAB, items={"train": 180_000}, item="MSRVTT 9k train (video, caption) pairs: 9,000 x 20"
        ),
        "vlab/msrvtt_qa": Paper(**_VLAB, items={"train": 158_581}, item="MSRVTT-QA train questions"),
        "vlab/msvd_qa": Paper(**_VLAB, items={"train": 30_933}, item="MSVD-QA train questions"),
        "vlab/tgif_frameqa": Paper(**_VLAB, items={"train": 39_389}, item="TGIF-FrameQA train questions"),
        "vlab/webvid_pretrain": Paper(
            **_VLAB, items={"train": 2_492_317}, item="WebVid-2.5M train videos (size [unverified])"
        ),
    }
)

_COCO_CAPTIONS, _VG_REGIONS = 566_747, 5_408_689
_SINGLESTREAM_PT_ITEMS = _COCO_CAPTIONS + _VG_REGIONS
_SS_FT = dict(
    gpus=8,
    global_batch=None,
    epochs=None,
    steps=None,
    schedule="not published",
    precision="not published",
    unverified=("gpus",),
)


def _finetune(paper: tuple[str, str], task: str, items: int, item: str) -> Paper:
    """A single-stream downstream task without official code: batch, epochs and schedule are ours."""
    source, lr_note = paper
    return Paper(
        **_SS_FT,
        lr="not published",
        items={task: items},
        item=item,
        source=source,
        notes={**_SS_FT_NOTES, "lr": lr_note},
    )


_SOHO_FT = ("no official code (reference §1)", "SOHO's pre-training lr")
_PB_FT = ("no official code (reference §2.5)", "the pre-training lr")
_SS_FT_NOTES = {
    "global_batch": "no official code for this task: batch is ours",
    "epochs": "no official code for this task: 10 epochs, ViLT/UNITER-like",
    "steps": "follows from our batch and epochs",
    "schedule": "SOHO's pre-training schedule shape (warm-up 1000 steps from lr/3, x0.1 steps) moved to epochs 6, 8",
    "precision": "16-mixed as SOHO's pre-training (apex O1)",
}
PAPERS.update(
    {
        "soho/soho_r101_pretrain": Paper(
            gpus=8,
            global_batch=1024,
            epochs=40,
            steps=None,
            lr="1e-4, cnn_lr 1e-2",
            schedule="warm-up 1000 steps from lr/3, x0.1 at epochs [25, 35]",
            precision="fp16 (apex O1)",
            items={"pretrain": _SINGLESTREAM_PT_ITEMS},
            item="COCO captions + VG region descriptions, one caption per item (sizes [unverified])",
            source="official configs/Pretrain/soho_res18_pre.py (reference soho_pixelbert_vqa.md §1.4)",
            unverified=("steps",),
            notes={
                "global_batch": "8 x 64 pairs, no accumulation: the official 16 images x 4 captions x 2 "
                "(update_interval) is 1024; manual optimisation (two optimisers) has no accumulation here",
                "steps": "the paper's pairs per epoch are not stated",
                "schedule": "same",
                "precision": "16-mixed = apex O1",
            },
        ),
        "soho/soho_r101_vqa": Paper(
            gpus=8,
            global_batch=256,
            epochs=20,
            steps=20 * math.ceil(443_757 / 256),
            lr="1e-4, cnn_lr 1e-2",
            schedule="warm-up 1000 steps from lr/3, x0.1 at epochs [12, 16]",
            precision="fp32 (apex O0)",
            items={"vqa": 443_757},
            item="VQA v2 train2014 questions",
            source="official configs/VQA/soho_res18_vqa.py (reference §1.4)",
            unverified=("steps",),
            notes={
                "precision": "16-mixed: the official VQA run is fp32 (O0); a GradScaler keeps fp16 stable "
                "(rehearsed: the clipped step equals the fp32 step)",
                "steps": "the official run trains on train + val for test-dev; this config trains on train2014",
            },
        ),
        "soho/soho_r101_retrieval_coco": _finetune(
            _SOHO_FT,
            "retrieval",
            _COCO_CAPTIONS,
            "COCO Karpathy train + restval captions, each beside 15 other images' captions",
        ),
        "soho/soho_r101_retrieval_flickr30k": _finetune(
            _SOHO_FT,
            "retrieval",
            145_000,
            "Flickr30K Karpathy train captions (29,000 images x 5), each beside 15 negatives",
        ),
        "soho/soho_r101_nlvr2": _finetune(_SOHO_FT, "nlvr2", 86_373, "NLVR2 train statements"),
        "soho/soho_r101_snli_ve": _finetune(_SOHO_FT, "snli_ve", 529_527, "SNLI-VE train pairs"),
    }
)

_PB_PT = dict(
    gpus=None,
    global_batch=None,
    epochs=40,
    steps=None,
    lr="1e-4, cnn_lr 1e-2",
    schedule="x0.1 at epochs [25, 35]",
    precision="not published",
    items={"pretrain": _SINGLESTREAM_PT_ITEMS, "vqa": 443_757},
    item="pre-training: COCO captions + VG regions, one caption per item; VQA: train2014 questions",
    source="no official code; reference soho_pixelbert_vqa.md §2.4 (as SOHO)",
    unverified=("epochs", "lr", "schedule"),
    notes={
        "gpus": "not published: 8 assumed (devices: auto on one 8-GPU machine)",
        "global_batch": "8 x 32 per step (not published)",
        "epochs": "40 pre-training + 20 VQA (VQA length as SOHO's official VQA run)",
        "steps": "follows from our batch and epochs",
        "precision": "16-mixed as SOHO's pre-training",
    },
    gpus_assumed=8,
)
PAPERS.update(
    {
        "pixelbert/pixelbert_r50": Paper(**_PB_PT),
        "pixelbert/pixelbert_x152": Paper(**_PB_PT),
        "pixelbert/pixelbert_r50_retrieval_flickr30k": _finetune(
            _PB_FT,
            "retrieval",
            145_000,
            "Flickr30K Karpathy train captions (29,000 images x 5), each beside 20 negatives",
        ),
        "pixelbert/pixelbert_r50_nlvr2": _finetune(_PB_FT, "nlvr2", 86_373, "NLVR2 train statements"),
        "pixelbert/pixelbert_r50_snli_ve": _finetune(_PB_FT, "snli_ve", 529_527, "SNLI-VE train pairs"),
    }
)

_PIXELLM = dict(
    gpus=8,
    global_batch=160,
    epochs=10,
    steps=5000,
    lr="3e-4",
    schedule="warm-up 100 steps from 0, linear decay to 0 (WarmupDecayLR)",
    precision="bf16 (DeepSpeed)",
    items={"train": 80_000},
    item="samples_per_epoch x GPUs (the released meaning: per GPU)",
    source="released train_ds.py defaults (reference pixellm.md)",
    unverified=("gpus",),
)
PAPERS.update(
    {
        "pixellm/muse": Paper(**_PIXELLM, notes={"schedule": "same"}),
        "pixellm/refcoco": Paper(**_PIXELLM, notes={"schedule": "same"}),
    }
)

_VQA_ITEMS = {"train": 443_757 + 214_354 + 1_445_322}
_MCAN = dict(
    gpus=None,
    global_batch=64,
    epochs=13,
    steps=None,
    lr="5e-5 (MCAN-large)",
    schedule="warm-up 3 epochs (1/4, 2/4, 3/4), x0.2 at epochs [10, 12]",
    precision="fp32",
    source="MCAN recipe (reference soho_pixelbert_vqa.md §3); the entry's own is [unverified]",
    unverified=("lr", "schedule"),
)
_MCAN_NOTES = {
    "gpus": "MCAN's batch 64 fits one GPU",
    "steps": "depends on the VG QA subset MCAN keeps (not stated)",
    "lr": "plus BERT at its own lr (the entry's BERT question encoder) [unverified]",
    "schedule": "linear warm-up over 3 epochs",
    "precision": "bf16-mixed instead of fp32",
}
PAPERS.update(
    {
        name: Paper(
            **_MCAN,
            items=_VQA_ITEMS if not name.endswith("_train") else {"train": 443_757},
            item=(
                "VQA v2 train + val questions + VG QA (VG count [unverified])"
                if not name.endswith("_train")
                else "VQA v2 train2014 questions"
            ),
            notes=_MCAN_NOTES,
        )
        for name in (
            "vqa_ensemble/vqa2_mcan_large_x101",
            "vqa_ensemble/vqa2_mcan_large_x101_train",
            "vqa_ensemble/vqa2_mcan_large_x152",
            "vqa_ensemble/vqa2_mcan_large_x152_train",
            "vqa_ensemble/vqa2_mcan_large_x152_grid",
            "vqa_ensemble/vqa2_mcan_large_x152_grid_train",
        )
    }
)
_DETECTOR = dict(
    gpus=8,
    global_batch=16,
    epochs=None,
    lr="0.02",
    schedule="warm-up 1000 steps, step decay",
    precision="fp32",
    items={},
    item="Visual Genome train images (iterations fixed: max_steps)",
    unverified=("gpus", "global_batch", "steps", "lr", "schedule"),
)
PAPERS.update(
    {
        "vqa_ensemble/detector_r101_c4_vg": Paper(
            **_DETECTOR, steps=380_000, source="bottom-up-attention's Caffe solver (reference §3) [unverified]"
        ),
        "vqa_ensemble/detector_x101_fpn_vg": Paper(
            **_DETECTOR, steps=180_000, source="Detectron-style VG schedule (reference §3) [unverified]"
        ),
        "vqa_ensemble/detector_x152_fpn_vg": Paper(
            **_DETECTOR, steps=180_000, source="Detectron-style VG schedule (reference §3) [unverified]"
        ),
    }
)


def main(argv: list[str] | None = None) -> None:
    """Print the recipe table of each `--config`, or a package's README block."""
    parser = argparse.ArgumentParser(prog="python -m vislang.shared.recipe", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", default=[], help="a paper config (repeatable)")
    parser.add_argument("--package", help="print the README 'Recipes' block of this package")
    parser.add_argument("--write", action="store_true", help="with --package: replace the block in its README.md")
    args = parser.parse_args(argv)
    if not args.config and not args.package:
        parser.error("give --config packages/<name>/configs/<dataset>.yaml or --package <name>")
    for config in args.config:
        if _key(Path(config)) not in PAPERS:
            parser.error(f"{config}: no paper recipe (demos and the ensemble weight fitting train nothing)")
        print(recipe_table(config) + "\n")
    if args.package and args.write:
        readme = REPO / "packages" / args.package / "README.md"
        text = readme.read_text()
        begin, end = BEGIN.format(args.package), END
        if begin not in text or end not in text:
            parser.error(f"{readme}: no recipes block; add the two marker lines {begin!r} and {end!r}")
        head, rest = text.split(begin, 1)
        readme.write_text(head + readme_block(args.package) + rest.split(end, 1)[1])
    elif args.package:
        print(readme_block(args.package))


if __name__ == "__main__":
    main()
