"""Lightning modules: CMAE / CMAE-V pre-training, and fine-tuning / linear probing.

* ``CMAEPretrainModule`` -- the recipe of the official configs: AdamW (0.9, 0.95), wd 0.05 except norms,
  biases, position embeddings, cls and mask tokens; linear warm-up then cosine, per step; EMA of the target
  branch after every optimiser step (constant 0.996, or the cosine ramp when ``end_momentum`` > base);
  reconstructions (original | masked | reconstruction) logged as image grids.
* ``CMAEClassificationModule`` -- MAE/CMAE fine-tuning: mean-pooled patch tokens + ``fc_norm``, layer-wise
  lr decay (timm's ``param_groups_layer_decay``), drop path, mixup/cutmix and label smoothing (timm),
  multi-view video testing; ``linear_probe=True`` freezes the encoder (MAE's BN + linear head).

The callbacks that evaluate a pre-trained encoder (``FewLabelEvaluation``, ``LinearProbeCallback``) are in
``vislang.cmae.evaluation``; what the modules read from their data modules is typed in ``vislang.cmae.data``
(``PretrainBatch``, ``ClassificationBatch``, ``PredictionData``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from vislang.cmae.convert import load_classifier, load_cmae
from vislang.cmae.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationBatch,
    InputData,
    PredictionData,
    PretrainBatch,
)
from vislang.cmae.model import (
    CMAE,
    CMAEClassifier,
    CMAEConfig,
    PresetName,
    cosine_momentum,
    get_config,
    patchify,
    unpatchify,
)
from vislang.shared.metrics.classification import TopKAccuracy
from vislang.shared.predictions import gather_objects, write_json_lines
from vislang.shared.schedules import step_schedule, warmup_cosine

__all__ = ["CMAEClassificationModule", "CMAEPretrainModule"]

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def _cpu_full_precision_matmuls(module: LightningModule) -> None:
    """Undo ``set_float32_matmul_precision("high")`` (set by the CLI for TF32 GPUs) when training on the CPU.

    On CPU (torch 2.14, oneDNN) "high" selects a reduced-precision emulation path that made the tiny
    demo's step ~15x slower (0.45 s -> 6.9 s, measured); plain fp32 is both faster and exact there.
    """
    if module.trainer.strategy.root_device.type == "cpu":
        torch.set_float32_matmul_precision("highest")


def _inputs(video: bool, size: int, frames: int) -> str:
    return f"clips of {frames} frames of {size} px" if video else f"images of {size} px"


def _check_inputs(module: LightningModule, config: CMAEConfig) -> None:
    """The data module must feed what the preset is built for: images of its side, or clips of its length."""
    data = module.trainer.datamodule
    if not isinstance(data, InputData):
        return
    wanted = _inputs(config.is_video, config.img_size, config.num_frames)
    fed = _inputs(data.is_video, data.image_size, data.num_frames)
    if fed != wanted:
        raise ValueError(
            f"the model's preset takes {wanted}; the data module feeds {fed}: set data.init_args.image_size, "
            "num_frames or dataset to match model.init_args.preset"
        )


def _warmup_cosine_per_step(
    module: LightningModule, optimizer: torch.optim.Optimizer, warmup_epochs: float, min_lr: float, lr: float
) -> dict[str, Any]:
    """MAE's ``adjust_learning_rate``, per optimiser step: linear warm-up over ``warmup_epochs``, then a cosine
    to ``min_lr`` at the run's last step."""
    total = int(module.trainer.estimated_stepping_batches)
    epochs = max(module.trainer.max_epochs or 1, 1)
    warmup = int(round(warmup_epochs * total / epochs))
    return step_schedule(optimizer, warmup_cosine(total, warmup, min_ratio=min_lr / lr if lr > 0 else 0.0))


class CMAEPretrainModule(LightningModule):
    """CMAE / CMAE-V pre-training.

    Args:
        preset: model size (``tiny``, ``vit_base``, ``convvit_base``, ``video_vit_base`` ...).
        mask_ratio: overrides the preset's masked fraction (CMAE 0.65; MAE 0.75; None: the preset's).
        mask_type: overrides the preset's masking: ``block`` (CMAE's 2x2 blocks) or ``random`` (MAE's patches).
        temperature: InfoNCE tau (0.07).
        rc_weight: weight of the reconstruction loss (1).
        ct_weight: weight of the contrastive loss (1; 0 = plain MAE).
        lr: peak learning rate (official: 1.5e-4 x 4096 / 256 = 2.4e-3 at batch 4096; scale linearly).
        min_lr: end of the cosine (0).
        weight_decay: AdamW weight decay (0.05), not applied to norms, biases, position embeddings and tokens.
        betas: AdamW betas ((0.9, 0.95)).
        warmup_epochs: linear warm-up length (40).
        base_momentum: EMA momentum of the target branch at the start (official 0.996).
        end_momentum: EMA momentum at the end, reached by a cosine; equal to ``base_momentum`` = constant
            (official), 1.0 = BYOL's ramp.
        log_images: how many reconstructions to log each validation epoch (0 = none).
        init_weights: weights to start or continue pre-training from: a CMAE runner checkpoint fills every module;
            MAE/ConvMAE/VideoMAE/timm files the encoder (copied into the target) and, if they hold one, the pixel
            decoder (``convert.load_cmae``).
        compile: ``torch.compile`` the model in place.
    """

    def __init__(
        self,
        preset: PresetName = "vit_base",
        mask_ratio: float | None = None,
        mask_type: Literal["block", "random"] | None = None,
        temperature: float = 0.07,
        rc_weight: float = 1.0,
        ct_weight: float = 1.0,
        lr: float = 2.4e-3,
        min_lr: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40.0,
        base_momentum: float = 0.996,
        end_momentum: float = 0.996,
        log_images: int = 8,
        init_weights: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = get_config(
            preset,
            mask_ratio=mask_ratio,
            mask_type=mask_type,
            temperature=temperature,
            rc_weight=rc_weight,
            ct_weight=ct_weight,
        )
        self.model = CMAE(config)
        if init_weights:  # a whole runner checkpoint fills every module; an encoder file the encoder and target
            load_cmae(self.model, init_weights)
        if compile:
            self.model.compile()

    def setup(self, stage: str) -> None:
        _cpu_full_precision_matmuls(self)
        _check_inputs(self, self.model.config)
        if stage == "fit" and type(self.trainer.strategy).__name__.startswith("FSDP"):
            # the EMA target update reads the online encoder's full parameters, which FSDP shards
            raise ValueError(
                "CMAE pre-training does not run under FSDP (the EMA target update needs the online "
                "encoder's full parameters): use trainer.strategy=ddp"
            )

    def on_train_start(self) -> None:
        self._total_steps = int(self.trainer.estimated_stepping_batches)

    def training_step(self, batch: PretrainBatch, batch_idx: int) -> Tensor:
        out = self.model(batch["online"], batch["target"])
        size = batch["online"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=size)
        self.log_dict({"train/loss_rc": out["loss_rc"], "train/loss_ct": out["loss_ct"]}, batch_size=size)
        self.log("train/momentum", self._momentum(), batch_size=size)
        return out["loss"]

    def _momentum(self) -> float:
        """The target's EMA momentum for the optimiser step in progress: BYOL's cosine from base to end."""
        hp = self.hparams
        return cosine_momentum(self.global_step, self._total_steps, hp.base_momentum, hp.end_momentum)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # target <- EMA(online) right after each optimiser step (once per step under gradient accumulation),
        # and inside the step: callbacks' on_train_batch_end (a checkpoint) runs before the module's, and a
        # checkpoint written at the end of the batch must already hold this update for a resume to be exact
        self.model.update_target(self._momentum())

    def validation_step(self, batch: PretrainBatch, batch_idx: int) -> None:
        out = self.model(batch["online"], batch["target"])
        size = batch["online"].shape[0]
        self.log_dict(
            {"val/loss": out["loss"], "val/loss_rc": out["loss_rc"], "val/loss_ct": out["loss_ct"]},
            batch_size=size,
            sync_dist=True,
        )
        if batch_idx == 0 and self.hparams.log_images and self.trainer.is_global_zero:
            self.log_reconstructions(batch["online"][: self.hparams.log_images], out["pred"], out["mask"])

    @torch.no_grad()
    def reconstruction_grid(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """``(3, H', W')`` grid, one row per sample: original | masked | reconstruction (visible patches pasted).

        The prediction is in per-patch-normalised units, so it is de-normalised with the original patch's
        mean and std (as MAE's visualisation does). Videos show their first frame.
        """
        c = self.model.config
        tubelet = c.tubelet_size if c.is_video else 1
        n = images.shape[0]
        patches = patchify(images, c.patch_size, tubelet)  # (B, N, P, C)
        pred = pred[:n].reshape(patches.shape)
        if c.norm_pix_loss:
            dims = (-2,) if c.is_video else (-2, -1)
            mean, var = patches.mean(dims, keepdim=True), patches.var(dims, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        m = mask[:n, :, None, None].to(patches.dtype)
        masked = unpatchify(patches * (1 - m), c.patch_size, c.grid, c.in_chans, tubelet)
        recon = unpatchify(pred * m + patches * (1 - m), c.patch_size, c.grid, c.in_chans, tubelet)
        rows = [images, masked, recon]
        if c.is_video:
            rows = [r[:, :, 0] for r in rows]
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        stacked = torch.stack([(r * std + mean).clamp(0, 1) for r in rows], dim=1).flatten(0, 1)
        return make_grid(stacked.float().cpu(), nrow=3, padding=1)

    def log_reconstructions(self, images: Tensor, pred: Tensor, mask: Tensor) -> None:
        """Send the grid to the configured logger (TensorBoard/W&B image, or a PNG in the CSV logger's dir)."""
        grid = self.reconstruction_grid(images, pred, mask)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image("reconstructions", grid, self.global_step)
            elif hasattr(logger, "log_image"):  # W&B, Neptune, ...
                logger.log_image("reconstructions", [grid])
            elif getattr(logger, "log_dir", None):  # CSV: a PNG next to metrics.csv
                path = Path(logger.log_dir) / "reconstructions" / f"step_{self.global_step:07d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_image(grid, path)

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # official: no decay for norms, biases, pos_embed, cls/mask tokens (BN weights of necks included
            # in the 1-D rule here, as MAE's add_weight_decay does)
            (no_decay if p.ndim <= 1 or name.endswith(_NO_DECAY_NAMES) else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
        )
        return _warmup_cosine_per_step(
            self, optimizer, self.hparams.warmup_epochs, self.hparams.min_lr, self.hparams.lr
        )


class CMAEClassificationModule(LightningModule):
    """Fine-tuning (or linear probing) of a CMAE encoder on a classification dataset.

    Args:
        preset: encoder size.
        num_classes: classes of the dataset (1000 ImageNet, 400 K400, 174 SSv2).
        init_weights: pre-trained encoder (our pre-training checkpoint, CMAE/MAE/VideoMAE/ConvMAE release, timm
            file), or a fine-tuned model (CMAE/MAE/VideoMAE/ConvMAE release, ours) whose ``fc_norm`` and ``head``
            are loaded too (a head of another class count keeps its initialisation).
        linear_probe: freeze the encoder; BN (no affine) + linear head (MAE's linear probing).
        drop_path_rate: stochastic depth (0.1).
        lr: peak learning rate (CMAE fine-tuning: 1e-3 for the 1600-epoch model at batch 1024).
        min_lr: end of the cosine (1e-6).
        weight_decay: AdamW weight decay (0.05).
        betas: AdamW betas ((0.9, 0.999)).
        warmup_epochs: linear warm-up length (5).
        layer_decay: layer-wise lr decay (0.65 images, 0.75 VideoMAE).
        mixup: timm ``Mixup`` alpha (0.8; 0 with ``cutmix`` 0 disables mixing).
        cutmix: timm ``Mixup`` CutMix alpha (1.0).
        mixup_prob: probability of mixing a batch (1.0).
        mixup_switch_prob: probability of CutMix instead of mixup when both are on (0.5).
        label_smoothing: 0.1.
        view_reduction: how multi-view video scores are merged (``softmax`` VideoMAE, or ``logits``).
        results_dir: where ``lightning predict`` writes ``cmae_predictions.jsonl`` (None: the logger's directory).
    """

    def __init__(
        self,
        preset: PresetName = "vit_base",
        num_classes: int = 1000,
        init_weights: str | None = None,
        linear_probe: bool = False,
        drop_path_rate: float = 0.1,
        lr: float = 1e-3,
        min_lr: float = 1e-6,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5.0,
        layer_decay: float = 0.65,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        view_reduction: Literal["softmax", "logits"] = "softmax",
        results_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = get_config(preset, drop_path_rate=0.0 if linear_probe else drop_path_rate)
        self.model = CMAEClassifier(config, num_classes, linear_probe=linear_probe)
        if init_weights:
            # pre-trained file -> encoder; fine-tuned file (official or ours) -> encoder, fc_norm and head too
            load_classifier(self.model, init_weights, strict=True)
        self.mixup = None
        if not linear_probe and (mixup > 0 or cutmix > 0):
            self.mixup = Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            self.train_loss: nn.Module = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.train_loss = LabelSmoothingCrossEntropy(label_smoothing)
        else:
            self.train_loss = nn.CrossEntropyLoss()
        self.accuracy = TopKAccuracy(topk=(1, 5), view_reduction=view_reduction)

    def setup(self, stage: str) -> None:
        _cpu_full_precision_matmuls(self)
        _check_inputs(self, self.model.config)

    def training_step(self, batch: ClassificationBatch, batch_idx: int) -> Tensor:
        x, y = batch["input"], batch["label"]
        if self.mixup is not None:
            if x.ndim == 5:  # timm's cutmix boxes the last two axes: fold time into channels
                b, c, t, h, w = x.shape
                x, y = self.mixup(x.reshape(b, c * t, h, w), y)
                x = x.reshape(b, c, t, h, w)
            else:
                x, y = self.mixup(x, y)
        loss = self.train_loss(self.model(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _scores(self, x: Tensor) -> Tensor:
        if x.ndim == 6:  # (B, views, C, T, H, W): VideoMAE's multi-view testing
            b, v = x.shape[:2]
            return self.model(x.flatten(0, 1)).reshape(b, v, -1).float()
        return self.model(x).float()

    def _evaluate(self, batch: ClassificationBatch) -> None:
        self.accuracy.update(self._scores(batch["input"]), batch["label"], batch["index"])

    def validation_step(self, batch: ClassificationBatch, batch_idx: int) -> None:
        self._evaluate(batch)

    def test_step(self, batch: ClassificationBatch, batch_idx: int) -> None:
        self._evaluate(batch)

    def _log_accuracy(self, stage: str) -> None:
        scores = self.accuracy.compute()
        self.accuracy.reset()
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=True, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def on_predict_epoch_start(self) -> None:
        self._predictions: list[dict[str, Any]] = []

    @torch.no_grad()
    def predict_step(self, batch: ClassificationBatch, batch_idx: int) -> list[dict[str, Any]]:
        """The five most probable classes of each image or video (a video's views' probabilities averaged)."""
        scores = self._scores(batch["input"]).softmax(-1)
        if scores.ndim == 3:
            scores = scores.mean(1)
        top = scores.topk(min(5, scores.shape[-1]), dim=-1)
        rows = [
            {"index": int(i), "top5": p.tolist(), "top5_scores": s.tolist()}
            for i, p, s in zip(batch["index"], top.indices, top.values, strict=True)
        ]
        self._predictions.extend(rows)
        return rows

    def on_predict_epoch_end(self) -> None:
        """Write ``cmae_predictions.jsonl`` (in ``results_dir``, or the logger's directory), one row per file in
        split order — its path, the top-5 class names and probabilities, the labelled class — replacing an
        earlier run's file. Every rank's rows under DDP; an item repeated in place of an unreadable file once."""
        gathered = gather_objects(self._predictions)
        if not self.trainer.is_global_zero:
            return
        datamodule: PredictionData = self.trainer.datamodule
        items, classes = datamodule.predict_items(), datamodule.classes
        rows = {row["index"]: row for part in gathered for row in part}
        lines = [
            {
                "file": str(items[i].path),
                "label": classes[items[i].label],
                "top5": [classes[c] for c in rows[i]["top5"]],
                "top5_scores": rows[i]["top5_scores"],
            }
            for i in sorted(rows)
        ]
        directory = Path(self.hparams.results_dir or self.trainer.log_dir or self.trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = write_json_lines(directory / "cmae_predictions.jsonl", lines)
        print(f"{len(lines)} predictions written to {path}")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.linear_probe:
            groups: list[dict[str, Any]] = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        else:
            # timm: lr scale layer_decay ** (num_layers - layer_id), no decay for 1-D params, pos_embed, cls_token
            groups = param_groups_layer_decay(
                self.model, hp.weight_decay, self.model.no_weight_decay(), layer_decay=hp.layer_decay
            )
            for group in groups:
                group["lr"] = hp.lr * group.pop("lr_scale", 1.0)
        optimizer = torch.optim.AdamW(
            groups, lr=hp.lr, betas=tuple(hp.betas), weight_decay=0.0 if hp.linear_probe else hp.weight_decay
        )
        return _warmup_cosine_per_step(self, optimizer, hp.warmup_epochs, hp.min_lr, hp.lr)
