"""What a pre-trained encoder is worth: few-label fine-tuning, a kNN probe and a linear probe, each beside the
same evaluation of a randomly initialised encoder.

* ``finetune_accuracy`` -- MAE/CMAE-style end-to-end fine-tuning (mean-pooled patch tokens + ``fc_norm`` +
  head, layer-wise lr decay, label smoothing, warm-up + cosine) on a labelled subset, for a fixed number
  of steps, so every encoder gets the same budget. Pre-training methods like MAE are judged this way in
  their papers: their features are weak under a frozen linear probe and strong once fine-tuned.
* ``knn_accuracy`` -- a weighted k-nearest-neighbour vote on frozen, L2-normalised features (the kNN
  monitor of InstDisc / DINO: k neighbours by cosine similarity, each voting ``exp(similarity / T)``).
* ``train_linear_probe`` -- MAE's linear probe (BatchNorm without affine + linear layer) on frozen features.
* ``FewLabelEvaluation`` -- a Lightning callback that runs all three after ``fit``, on the pre-trained
  online encoder and on a random-init one, and prints and saves the table (``evaluation.json``).
* ``LinearProbeCallback`` -- the linear probe alone, with optional probes of synthetic-world attributes.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn
from torchvision.transforms import v2
from tqdm.auto import tqdm

from vislang.cmae.data import CMAEPretrainDataModule, ProbeData
from vislang.cmae.model import CMAEClassifier, CMAEConfig, build_encoder
from vislang.shared.schedules import warmup_cosine

__all__ = [
    "FewLabelEvaluation",
    "LinearProbeCallback",
    "encoder_features",
    "few_label_indices",
    "finetune_accuracy",
    "format_evaluation",
    "format_linear_probe",
    "knn_accuracy",
    "labelled_tensors",
    "train_linear_probe",
]


# ---- data as tensors ------------------------------------------------------------------------------


@torch.no_grad()
def labelled_tensors(loader: Any, desc: str = "images") -> tuple[Tensor, Tensor]:
    """Every ``(input, label)`` of an evaluation loader, stacked (the demo's images are small)."""
    inputs, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        x = batch["input"]
        inputs.append(x[:, 0] if x.ndim == 6 else x)  # multi-view videos: the first view
        labels.append(batch["label"])
    return torch.cat(inputs), torch.cat(labels)


@torch.no_grad()
def encoder_features(encoder: nn.Module, inputs: Tensor, batch_size: int = 256) -> Tensor:
    """Frozen features: the mean of the encoder's final-normed patch tokens (MAE's ``global_pool``)."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    feats = []
    for start in range(0, len(inputs), batch_size):
        tokens = encoder(inputs[start : start + batch_size].to(device))
        feats.append(tokens[:, encoder.num_prefix_tokens :].mean(dim=1).float().cpu())
    encoder.train(was_training)
    return torch.cat(feats)


def few_label_indices(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """A class-balanced random subset: ``round(fraction * count)`` (at least one) samples of every class."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


# ---- probes ---------------------------------------------------------------------------------------


def knn_accuracy(
    train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, k: int = 20, temperature: float = 0.07
) -> float:
    """Top-1 % of a weighted kNN vote on cosine similarity (InstDisc / DINO's ``knn_classifier``)."""
    train_x, val_x = F.normalize(train_x.float(), dim=1), F.normalize(val_x.float(), dim=1)
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    similarity, neighbours = (val_x @ train_x.T).topk(min(k, len(train_x)), dim=1)
    votes = torch.zeros(len(val_x), num_classes).scatter_add_(1, train_y[neighbours], (similarity / temperature).exp())
    return float((votes.argmax(1) == val_y).float().mean() * 100)


def train_linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.01,
    seed: int = 0,
) -> float:
    """MAE's linear probe on frozen features: BatchNorm without affine + linear layer, full-batch AdamW.

    Returns the validation top-1 accuracy in percent.
    """
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True) + 1e-6  # = BN(affine=False) at eval
    xt, xv = (train_x - mean) / std, (val_x - mean) / std
    head = nn.Linear(train_x.shape[1], num_classes)
    nn.init.normal_(head.weight, std=0.01, generator=generator)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(head(xt), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return float((head(xv).argmax(1) == val_y).float().mean() * 100)


# ---- fine-tuning ----------------------------------------------------------------------------------


def finetune_accuracy(
    config: CMAEConfig,
    encoder_state: dict[str, Tensor] | None,
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    layer_decay: float = 0.75,
    weight_decay: float = 0.05,
    drop_path_rate: float = 0.1,
    label_smoothing: float = 0.1,
    crop_scale: tuple[float, float] = (0.6, 1.0),
    seed: int = 0,
) -> float:
    """Top-1 % on ``val`` after fine-tuning an encoder end to end on ``(train_x, train_y)`` for ``steps`` steps.

    The recipe is MAE's / CMAE's fine-tuning shrunk to a few hundred steps: ``CMAEClassifier`` (mean of patch
    tokens -> ``fc_norm`` -> head), AdamW with timm's layer-wise lr decay, 10 % linear warm-up then cosine,
    drop path, label smoothing, random-resized crops and flips of the (already normalised) images.
    ``encoder_state`` is the pre-trained encoder's ``state_dict``; ``None`` fine-tunes a random-init encoder
    (the same seed draws the same head, batches and augmentations for both).
    """
    if steps < 1:
        raise ValueError(f"fine-tuning steps must be >= 1, got {steps}")
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CMAEClassifier(replace(config, drop_path_rate=drop_path_rate), num_classes)
        if encoder_state is not None:
            # the pre-trained encoder's final norm is replaced by fc_norm after pooling (MAE's global_pool)
            state = {k: v for k, v in encoder_state.items() if not k.startswith("norm.")}
            model.encoder.load_state_dict(state, strict=True)
        groups = param_groups_layer_decay(model, weight_decay, model.no_weight_decay(), layer_decay=layer_decay)
        for group in groups:
            group["lr"] = lr * group.pop("lr_scale", 1.0)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, max(steps // 10, 1)))
        size = train_x.shape[-1]
        augment = v2.Compose([v2.RandomResizedCrop(size, scale=crop_scale, antialias=True), v2.RandomHorizontalFlip()])
        model.train()
        for _ in range(steps):
            batch = torch.randint(len(train_x), (min(batch_size, len(train_x)),), generator=generator)
            x = torch.stack([augment(image) for image in train_x[batch]])
            loss = F.cross_entropy(model(x), train_y[batch], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            predictions = torch.cat([model(val_x[s : s + 256]).argmax(1) for s in range(0, len(val_x), 256)])
    return float((predictions == val_y).float().mean() * 100)


# ---- callbacks --------------------------------------------------------------------------------------


def _random_encoder(config: CMAEConfig, seed: int, device: torch.device) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_encoder(config).to(device)


def _run_seed(seed: int | None) -> int:
    """An explicit seed, else the run's ``seed_everything`` (Lightning exports it), else 0."""
    if seed is not None:
        return seed
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def _write_json(trainer: Trainer, name: str, results: dict[str, Any]) -> None:
    for logger in trainer.loggers:
        if getattr(logger, "log_dir", None):
            Path(logger.log_dir).mkdir(parents=True, exist_ok=True)
            (Path(logger.log_dir) / name).write_text(json.dumps(results, indent=2))


class FewLabelEvaluation(Callback):
    """After ``fit``: few-label fine-tuning, kNN and linear probes of the pre-trained encoder vs random init.

    A class-balanced ``label_fraction`` of the training images keeps its labels. On it, each encoder is
    fine-tuned end to end for ``finetune_steps`` steps (``finetune_accuracy``), and its frozen mean-pooled
    features are probed by a weighted kNN vote and by MAE's linear probe; all are scored on the held-out
    split. The random-init encoder gets exactly the same evaluation (same subset, steps, head, batches and
    augmentations). Results are printed, logged as ``eval/<metric>/<encoder>`` and written to
    ``<log dir>/evaluation.json``.

    Args:
        label_fraction: share of the training labels used (0.1).
        finetune_steps: optimiser steps of the fine-tuning, the same for every encoder (300).
        finetune_lr: peak learning rate of the fine-tuning (1e-3).
        layer_decay: layer-wise lr decay of the fine-tuning (0.75).
        batch_size: fine-tuning batch size (64).
        knn_k: neighbours of the kNN probe (20).
        knn_temperature: vote temperature of the kNN probe (0.07).
        probe_epochs: full-batch AdamW steps of the linear probe (300).
        probe_lr: learning rate of the linear probe (0.01).
        random_init: also evaluate a random-init encoder (off when another run already measured it).
        seed: of the subset, the random-init encoder, heads and batches; default the run's ``seed_everything``.
    """

    def __init__(
        self,
        label_fraction: float = 0.1,
        finetune_steps: int = 300,
        finetune_lr: float = 1e-3,
        layer_decay: float = 0.75,
        batch_size: int = 64,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        probe_epochs: int = 300,
        probe_lr: float = 0.01,
        random_init: bool = True,
        seed: int | None = None,
    ) -> None:
        if not 0 < label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
        self.label_fraction, self.finetune_steps, self.finetune_lr = label_fraction, finetune_steps, finetune_lr
        self.layer_decay, self.batch_size = layer_decay, batch_size
        self.knn_k, self.knn_temperature = knn_k, knn_temperature
        self.probe_epochs, self.probe_lr = probe_epochs, probe_lr
        self.random_init, self.seed = random_init, seed
        self.results: dict[str, Any] = {}

    def evaluate(
        self,
        config: CMAEConfig,
        encoders: dict[str, nn.Module],
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        seed: int,
    ) -> dict[str, Any]:
        """The three evaluations of every encoder on ``train``'s labelled subset, scored on ``val``."""
        (train_x, train_y), (val_x, val_y) = train, val
        subset = few_label_indices(train_y, self.label_fraction, seed)
        few_x, few_y = train_x[subset], train_y[subset]
        num_classes = int(max(train_y.max(), val_y.max())) + 1
        results: dict[str, Any] = {"finetune": {}, "knn": {}, "linear_probe": {}}
        for name, encoder in encoders.items():
            feats_train, feats_val = encoder_features(encoder, few_x), encoder_features(encoder, val_x)
            results["knn"][name] = knn_accuracy(feats_train, few_y, feats_val, val_y, self.knn_k, self.knn_temperature)
            results["linear_probe"][name] = train_linear_probe(
                feats_train, few_y, feats_val, val_y, num_classes, self.probe_epochs, self.probe_lr, seed
            )
            state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
            results["finetune"][name] = finetune_accuracy(
                config,
                state if name != "random_init" else None,
                few_x,
                few_y,
                val_x,
                val_y,
                steps=self.finetune_steps,
                batch_size=self.batch_size,
                lr=self.finetune_lr,
                layer_decay=self.layer_decay,
                seed=seed,
            )
        counts = torch.bincount(val_y, minlength=num_classes).float()
        results["majority_class"] = float(counts.max() / counts.sum() * 100)
        results["labels"] = {"train": len(few_y), "of": len(train_y), "val": len(val_y)}
        results["seed"] = seed
        return results

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or not isinstance(datamodule, ProbeData):
            return
        seed = _run_seed(self.seed)
        train_loader, val_loader = datamodule.probe_dataloaders()
        train = labelled_tensors(train_loader, "labelled train images")
        val = labelled_tensors(val_loader, "labelled val images")
        config = pl_module.model.config
        encoders = {"pretrained": pl_module.model.encoder}
        if self.random_init:
            encoders["random_init"] = _random_encoder(config, seed, pl_module.device)
        self.results = results = self.evaluate(config, encoders, train, val, seed)
        for logger in trainer.loggers:
            logger.log_metrics(
                {
                    f"eval/{metric}/{name}": v
                    for metric in ("finetune", "knn", "linear_probe")
                    for name, v in results[metric].items()
                },
                step=trainer.global_step,
            )
        _write_json(trainer, "evaluation.json", results)
        print(format_evaluation(results, datamodule.classes), flush=True)


def format_evaluation(results: dict[str, Any], classes: list[str] | None = None) -> str:
    """``FewLabelEvaluation``'s table: one row per evaluation, one column per encoder."""
    names = list(results["finetune"])
    labels = results["labels"]
    what = f"class ({', '.join(classes)})" if classes else "class"
    lines = [
        f"\nTop-1 % on {labels['val']} held-out images, {what}; {labels['train']} of {labels['of']} training "
        f"labels (seed {results['seed']}); majority class {results['majority_class']:.1f}",
        f"  {'evaluation':<44}" + "".join(f"{n:>13}" for n in names),
    ]
    rows = {
        "finetune": "fine-tuning (end to end)",
        "knn": "kNN probe (frozen features)",
        "linear_probe": "linear probe (frozen features)",
    }
    for key, label in rows.items():
        lines.append(f"  {label:<44}" + "".join(f"{results[key][n]:>13.1f}" for n in names))
    return "\n".join(lines) + "\n"


# ---- linear probe of a pre-training run (streams features from the loaders) -------------------


@torch.no_grad()
def _features(encoder: nn.Module, loader: Any, device: torch.device, desc: str) -> tuple[Tensor, Tensor]:
    encoder.eval()
    feats, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        x = batch["input"].to(device)
        if x.ndim == 6:
            x = x[:, 0]
        tokens = encoder(x)
        feats.append(tokens[:, encoder.num_prefix_tokens :].mean(dim=1).float().cpu())
        labels.append(batch["label"])
    return torch.cat(feats), torch.cat(labels)


def _synthetic_attribute_labels(datamodule: CMAEPretrainDataModule, split: str, attribute: str) -> Tensor:
    """Labels of a synthetic-world attribute (``background``, ``shape``) for the probe split's images.

    The synthetic writers name files ``<class>_<world index>.png``; the scene is re-rendered from the data
    module's world settings to read the attribute.
    """
    from vislang.shared.data.synthetic import BACKGROUNDS, SHAPES, SyntheticWorld

    values = {"background": BACKGROUNDS, "shape": SHAPES}
    if attribute not in values:
        raise ValueError(f"synthetic probe attribute must be one of {sorted(values)}, got {attribute!r}")
    if datamodule.synthetic_style != "scenes":
        raise ValueError(
            f"synthetic probe attributes need scene images; data.synthetic_style is {datamodule.synthetic_style!r}"
        )
    world = SyntheticWorld(
        seed=datamodule.seed, image_size=max(datamodule.image_size, 24), max_objects=datamodule.synthetic_max_objects
    )
    labels = []
    for item in datamodule.probe_items(split):
        scene = world.scene(int(item.path.stem.rsplit("_", 1)[1]))
        labels.append(values[attribute].index(scene.background if attribute == "background" else scene.label_name))
    return torch.tensor(labels)


class LinearProbeCallback(Callback):
    """After ``fit``: linear-probe accuracy of the pre-trained online encoder vs a random-init encoder.

    Features are the mean of the encoder's final-normed patch tokens on un-augmented images; both encoders
    get exactly the same probe (same data, epochs, lr, seed). The first task is the dataset's class label;
    ``synthetic_attributes`` adds probes of other synthetic-world scene attributes (``background``) on the
    same features. The table is printed and written to ``<log dir>/linear_probe.json``; the numbers are
    logged as ``probe/<task>/<encoder>_top1``.

    Args:
        epochs: full-batch AdamW steps of the probe.
        lr: learning rate of the probe.
        seed: seed of the random-init encoder and of the probe head.
        synthetic_attributes: extra label sets read from the synthetic world (only for synthetic data).
    """

    def __init__(
        self,
        epochs: int = 300,
        lr: float = 0.01,
        seed: int = 0,
        synthetic_attributes: list[Literal["background", "shape"]] | None = None,
    ) -> None:
        self.epochs, self.lr, self.seed = epochs, lr, seed
        self.synthetic_attributes = list(synthetic_attributes or [])
        self.results: dict[str, dict[str, float]] = {}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or not isinstance(datamodule, ProbeData):
            return
        train_loader, val_loader = datamodule.probe_dataloaders()
        device = pl_module.device
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            random_encoder = build_encoder(pl_module.model.config).to(device)
        features = {}
        for name, encoder in (("pretrained", pl_module.model.encoder), ("random_init", random_encoder)):
            features[name] = (
                _features(encoder, train_loader, device, f"probe features ({name}, train)"),
                _features(encoder, val_loader, device, f"probe features ({name}, val)"),
            )
        (_, train_y), (_, val_y) = features["pretrained"]
        tasks = {"class": (train_y, val_y, len(datamodule.classes))}
        for attribute in self.synthetic_attributes:
            train_a = _synthetic_attribute_labels(datamodule, "train", attribute)
            val_a = _synthetic_attribute_labels(datamodule, "val", attribute)
            tasks[attribute] = (train_a, val_a, int(max(train_a.max(), val_a.max())) + 1)
        results: dict[str, dict[str, float]] = {}
        for task, (ty, vy, num_classes) in tasks.items():
            results[task] = {}
            for name, ((tx, _), (vx, _)) in features.items():
                results[task][name] = train_linear_probe(tx, ty, vx, vy, num_classes, self.epochs, self.lr, self.seed)
            counts = torch.bincount(vy, minlength=num_classes).float()
            results[task]["majority_class"] = float(counts.max() / counts.sum() * 100)
        self.results = results
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"probe/{task}/{name}_top1": v for task, row in results.items() for name, v in row.items()},
                step=trainer.global_step,
            )
            if getattr(logger, "log_dir", None):
                Path(logger.log_dir).mkdir(parents=True, exist_ok=True)
                (Path(logger.log_dir) / "linear_probe.json").write_text(json.dumps(results, indent=2))
        print(format_linear_probe(results, datamodule.classes, len(train_y), len(val_y)), flush=True)


def format_linear_probe(results: dict[str, dict[str, float]], classes: list[str], train: int, val: int) -> str:
    """``LinearProbeCallback``'s table: one row per probe task (pre-trained, random init, majority class)."""
    names = {"class": f"class ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"}
    lines = [f"  {'probe task':<48}{'pre-trained':>12}{'random init':>12}{'majority':>10}"]
    for task, row in results.items():
        label = names.get(task, f"{task} (synthetic scene attribute)")
        lines.append(
            f"  {label:<48}{row['pretrained']:>12.1f}{row['random_init']:>12.1f}{row['majority_class']:>10.1f}"
        )
    return (
        "\nLinear probe, top-1 % on held-out images "
        f"({train} train / {val} val; frozen mean-pooled features; same probe for both encoders)\n"
        + "\n".join(lines)
        + "\n"
    )
