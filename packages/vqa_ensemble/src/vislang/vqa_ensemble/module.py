"""LightningModules of the entry: the feature detector, one BERT + MCAN member, and the ensemble.

* ``DetectorModule`` trains the torchvision Faster R-CNN + FPN whose boxes and backbone give the features.
* ``VQAModule`` trains one member (MCAN recipe: Adam (0.9, 0.98), warm-up then step decay; BERT gets its
  own learning rate) and evaluates it with the official 2021 VQA accuracy.
* ``VQAEnsemble`` loads member checkpoints, fits averaging weights on the validation split
  (``lightning validate``) and evaluates / predicts like a single model (``lightning test|predict``).

``validate``/``test`` with ``results_dir`` write the EvalAI results file
(``[{"question_id", "answer"}]``, every question of the split exactly once) with
``vislang.shared.metrics.write_vqa_results``.
"""

from __future__ import annotations

import contextvars
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from torch import Tensor, nn

from vislang.shared.metrics.vqa import VQAAccuracy, aggregate_vqa, vqa_accuracy, write_vqa_results
from vislang.shared.predictions import replace_text
from vislang.shared.text import load_text_model, load_tokenizer, tiny_bert_config
from vislang.vqa_ensemble.detector import build_detector
from vislang.vqa_ensemble.ensemble import (
    PRIORS,
    OfficialScorer,
    combine,
    cross_validate_prior,
    fit_ensemble_weights,
    gain_over_equal,
)
from vislang.vqa_ensemble.features import check_spec
from vislang.vqa_ensemble.model import MCAN, PRESETS

__all__ = ["DetectorModule", "LeakError", "VQAEnsemble", "VQAModule", "check_no_leak", "load_member"]


# ---- detector ---------------------------------------------------------------------------------------


class DetectorModule(LightningModule):
    """Faster R-CNN training (torchvision losses: RPN objectness/box + Fast R-CNN class/box) in any of the
    ``detector.HEADS`` layouts; validation reports the COCO box mAP (pycocotools) when the data has a val split.

    Args mirror ``build_detector``; ``min_size`` with several values is multi-scale training (entry §1).
    An attribute head is not trained here (no attribute loss): import one with ``convert.py``.
    Optimiser: SGD momentum 0.9 with linear warm-up and cosine decay.
    """

    def __init__(
        self,
        backbone: str = "resnext152_32x8d",
        num_classes: int = 1601,
        min_size: list[int] = [600],  # noqa: B006
        max_size: int = 1000,
        anchor_sizes: list[int] = [32, 64, 128, 256, 512],  # noqa: B006
        representation_size: int = 1024,
        norm: str = "frozen_bn",
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        rpn_proposals: int = 1000,
        head: str = "fpn",
        stride_in_1x1: bool = False,
        res5_dilation: int = 1,
        rpn_channels: int | None = None,
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_steps: int = 500,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.detector = build_detector(
            backbone,
            num_classes,
            min_size,
            max_size,
            anchor_sizes,
            representation_size,
            norm,
            rpn_batch_size_per_image,
            box_batch_size_per_image,
            rpn_proposals,
            head,
            0,
            stride_in_1x1,
            res5_dilation,
            rpn_channels,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.detector(batch["images"], batch["targets"])
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(batch["images"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.detector.train()  # torchvision returns losses only in training mode
        with torch.no_grad():
            losses = self.detector(batch["images"], batch["targets"])
        self.detector.eval()
        self.log("val/loss", sum(losses.values()), prog_bar=True, batch_size=len(batch["images"]))

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def factor(step: int) -> float:
            if step < h.warmup_steps:
                return (step + 1) / h.warmup_steps
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - h.warmup_steps) / max(1, total - h.warmup_steps))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---- one member -------------------------------------------------------------------------------------


def _build_text_encoder(text_model: str, tokenizer: str, tiny_layers: int, tiny_hidden: int) -> nn.Module:
    if text_model == "tiny":  # a small BERT from scratch on the synthetic tokenizer (demo, tests)
        from transformers import BertModel

        return BertModel(
            tiny_bert_config(load_tokenizer(tokenizer), hidden=tiny_hidden, layers=tiny_layers), add_pooling_layer=False
        )
    return load_text_model(text_model, add_pooling_layer=False)


class VQAModule(LightningModule):
    """One ensemble member: BERT + MCAN on one feature set, soft-score BCE, official VQA accuracy.

    The answer vocabulary and the visual feature dimension come from the data module at set-up (its
    vocabulary built from the training annotations, its feature store's spec) and are saved in the
    checkpoint, so a trained member evaluates on any split with its own vocabulary.

    Args:
        preset: MCAN size (``tiny``, ``small``, ``large``; see ``model.PRESETS``).
        feature_set: Name of the data module's feature set this member reads (``region``, ``grid``, ...).
        text_model: ``bert-base-uncased`` / ``bert-large-uncased`` / a local directory, or ``tiny``.
        tokenizer: Tokenizer of ``text_model`` (used to size the ``tiny`` BERT's embeddings).
        tiny_bert_layers / tiny_bert_hidden: Size of the ``tiny`` BERT.
        use_boxes: Add a box-geometry embedding to each visual feature.
        lr: Co-attention learning rate (MCAN: 1e-4 small, 5e-5 large). bert_lr: BERT's learning rate.
        warmup_epochs: MCAN warm-up: lr x (e+1)/(warmup_epochs+1) in epoch e < warmup_epochs.
        decay_epochs / decay_factor: Step decay (MCAN: x0.2 at epochs 10 and 12).
        weight_decay: AdamW decoupled weight decay (MCAN: 0 with Adam).
        metric_version: Official accuracy version (``2021`` = EvalAI since 2021).
        results_dir: Write ``{split}_results.json`` (EvalAI format) and the metrics here on validate/test.
    """

    def __init__(
        self,
        preset: str = "large",
        feature_set: str = "region",
        text_model: str = "bert-base-uncased",
        tokenizer: str = "bert-base-uncased",
        tiny_bert_layers: int = 2,
        tiny_bert_hidden: int = 64,
        use_boxes: bool = True,
        lr: float = 5e-5,
        bert_lr: float = 1e-5,
        warmup_epochs: int = 3,
        decay_epochs: list[int] = [10, 12],  # noqa: B006
        decay_factor: float = 0.2,
        weight_decay: float = 0.0,
        metric_version: str = "2021",
        results_dir: str | None = None,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        self.save_hyperparameters()
        self.model: MCAN | None = None
        self.answers: list[str] = []
        self.visual_dim = 0
        self.feature_spec: dict[str, Any] = {}
        self.train_question_ids: Tensor | None = None  # VQA question ids trained on (checked by the ensemble)
        self.val_metric = VQAAccuracy(metric_version)
        self.test_metric = VQAAccuracy(metric_version)
        self._predictions: dict[int, str] = {}

    # -- building ------------------------------------------------------------------------------------
    def build(self, answers: list[str], visual_dim: int, feature_spec: dict[str, Any] | None = None) -> None:
        """Create the network for a vocabulary and feature dimension (idempotent for the same ones)."""
        if self.model is not None:
            return
        h = self.hparams
        self.answers, self.visual_dim, self.feature_spec = list(answers), int(visual_dim), dict(feature_spec or {})
        text = _build_text_encoder(h.text_model, h.tokenizer, h.tiny_bert_layers, h.tiny_bert_hidden)
        self.model = MCAN(text, len(self.answers), self.visual_dim, PRESETS[h.preset], h.use_boxes)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None:
            return
        if self.model is None:
            store = dm.feature_store(self.hparams.feature_set)
            self.build(dm.answers, store.feature_dim, store.spec)
        dm.use_answer_vocab(self.answers)  # targets in this model's label order
        check_member_features(self, dm)
        if stage == "fit":  # recorded in the checkpoint: an ensemble refuses to fit weights on these questions
            ids = sorted({i.question_id for i in dm.splits["train"].items if i.source == "vqa"})
            self.train_question_ids = torch.tensor(ids, dtype=torch.long)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vqa_member"] = {
            "answers": self.answers,
            "visual_dim": self.visual_dim,
            "feature_spec": self.feature_spec,
            "train_question_ids": self.train_question_ids,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("vqa_member")
        if info is None:
            raise KeyError("checkpoint has no 'vqa_member' entry (answers, visual_dim): not a VQAModule checkpoint")
        if self.model is not None and (self.answers != list(info["answers"]) or self.visual_dim != info["visual_dim"]):
            # Built at set-up from the data module's vocabulary (e.g. `--ckpt_path` on other splits): the
            # checkpoint's vocabulary and feature size win, and the data module adopts them for its targets.
            self.model = None
        self.build(info["answers"], info["visual_dim"], info["feature_spec"])
        if info.get("train_question_ids") is not None:  # resumed on other data: it trained on both
            seen = [info["train_question_ids"]] + (
                [self.train_question_ids] if self.train_question_ids is not None else []
            )
            self.train_question_ids = torch.cat(seen).unique()
        dm = self._trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "use_answer_vocab"):
            dm.use_answer_vocab(self.answers)
            check_member_features(self, dm)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Tensor:
        if self.model is None:
            raise RuntimeError("VQAModule is not built: run it with a data module or load a checkpoint")
        v = batch["visual"][self.hparams.feature_set]
        return self.model(batch["input_ids"], batch["attention_mask"], v["features"], v["mask"], v["boxes"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch)
        # Sigmoid + soft scores (MCAN eq. 9), summed over answers, mean over the batch (BAN / ViLT scale).
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["targets"], reduction="sum") / len(logits)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def _evaluate(self, batch: dict[str, Any], metric: VQAAccuracy) -> list[str]:
        preds = [self.answers[i] for i in self(batch).argmax(-1).tolist()]
        for q, p in zip(batch["question_id"], preds, strict=True):
            self._predictions[int(q)] = p
        if batch["answers"][0]:
            metric.update(preds, batch["answers"], batch["index"], batch["answer_type"], batch["question_type"])
        return preds

    def on_validation_epoch_start(self) -> None:
        self._predictions = {}

    on_test_epoch_start = on_validation_epoch_start
    on_predict_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metric)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        preds = [self.answers[i] for i in self(batch).argmax(-1).tolist()]
        self._predictions.update({int(q): p for q, p in zip(batch["question_id"], preds, strict=True)})
        return [{"question_id": int(q), "answer": p} for q, p in zip(batch["question_id"], preds, strict=True)]

    def _finish(self, split: str, metric: VQAAccuracy) -> None:
        scores = metric.compute() if metric.update_count else {}
        metric.reset()
        if scores:
            self.log(f"{split}/vqa_acc", scores["overall"], prog_bar=True)
            for k, v in scores.items():
                if k.startswith("answer_type/"):
                    self.log(f"{split}/{k}", v)
        _write_outputs(self, split, self._predictions, scores)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._finish("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._finish("test", self.test_metric)

    def on_predict_epoch_end(self) -> None:
        _write_outputs(self, "predict", self._predictions, {})

    def configure_optimizers(self) -> dict[str, Any]:
        assert self.model is not None
        h = self.hparams
        groups = [
            {"params": self.model.co_attention_parameters(), "lr": h.lr},
            {"params": list(self.model.bert.parameters()), "lr": h.bert_lr},  # BERT fine-tuned at its own lr
        ]
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-9, weight_decay=h.weight_decay)
        steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs or 1))

        def factor(step: int) -> float:
            epoch = step // steps_per_epoch
            if epoch < h.warmup_epochs:  # MCAN: 1/4, 2/4, 3/4 of the base lr in epochs 1-3
                return (epoch + 1) / (h.warmup_epochs + 1)
            return h.decay_factor ** sum(epoch >= e for e in h.decay_epochs)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _write_outputs(module: LightningModule, split: str, predictions: dict[int, str], scores: dict[str, Any]) -> None:
    """Write the EvalAI results file (every question of the split exactly once) and the metrics."""
    results_dir = module.hparams.get("results_dir")
    if not results_dir or not predictions or module.trainer.world_size > 1:
        return
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    _replace_results(predictions, out / f"{split}_results.json", _split_question_ids(module, split))
    if scores:
        replace_text(out / f"{split}_metrics.json", json.dumps(scores, indent=1))


def _replace_results(predictions: dict[int, str], path: Path, question_ids: list[int] | None) -> None:
    """The official results file, written under a temporary name and renamed: a re-run replaces it, an
    interrupted run leaves the previous one whole."""
    partial = path.with_name(f".{path.name}.partial")
    write_vqa_results(predictions, partial, question_ids=question_ids)
    os.replace(partial, path)


FEATURE_IDENTITY = (
    "kind",
    "backbone",
    "head",
    "detector_weights",
    "feature_dim",
    "box_source",
    "grid_size",
    "min_size",
)
"""Extractor settings a member's features must keep between training and evaluation."""


def check_member_features(member: VQAModule, datamodule: Any) -> None:
    """Refuse to evaluate a member on features from another extractor than the one it was trained on."""
    if not member.feature_spec or not hasattr(datamodule, "feature_store"):
        return
    store = datamodule.feature_store(member.hparams.feature_set)
    keys = [k for k in FEATURE_IDENTITY if k in member.feature_spec]
    check_spec(
        {k: member.feature_spec[k] for k in keys},
        {k: store.spec.get(k) for k in keys},
        f"feature set {member.hparams.feature_set!r} ({store.root})",
        ("the member was trained on", "is in this store", ""),
    )


def _split_question_ids(module: LightningModule, split: str) -> list[int] | None:
    """Question ids of the data module's split behind ``split`` (val -> val, test / predict -> test).

    For ``val`` and ``test`` the questions about images that could not be read (skipped and counted by the
    loader's `RobustDataset`) are left out, so one bad image does not stop a run at its results file; a
    ``predict`` file (an EvalAI submission) must hold every question, and is refused without them.
    """
    dm = module.trainer.datamodule
    if dm is None:
        return None
    dataset = dm.splits["val" if split == "val" else "test"]
    loaders = {"val": module.trainer.val_dataloaders, "test": module.trainer.test_dataloaders}.get(split)
    failed = getattr(getattr(loaders, "dataset", None), "failed_files", set)()
    return [
        item.question_id for k, item in enumerate(dataset.items) if not failed or dataset.sample_file(k) not in failed
    ]


class LeakError(ValueError):
    """A member was trained on questions an ensemble would fit its weights on (or be scored on)."""


def check_no_leak(members: list[VQAModule], paths: list[str], question_ids: list[int], split: str) -> None:
    """Refuse questions a member trained on: fitting weights on them rewards memorisation, scoring on them
    flatters the ensemble. Members record their training question ids in their checkpoints."""
    wanted = torch.tensor(sorted(set(question_ids)), dtype=torch.long)
    for member, path in zip(members, paths, strict=True):
        seen = member.train_question_ids
        if seen is None:
            raise LeakError(
                f"{path}: the checkpoint records no training questions, so a leak into the {split} split cannot be "
                "ruled out: retrain the member with this version of vislang"
            )
        shared = wanted[torch.isin(wanted, seen)]
        if shared.numel():
            raise LeakError(
                f"{path} was trained on {shared.numel()} of the {wanted.numel()} {split} questions (e.g. question "
                f"{int(shared[0])}): fit the weights with members trained without them "
                "(vqa2_mcan_large_*_train.yaml + vqa2_ensemble_fit.yaml, README 'Ensemble protocol')"
            )


def load_member(path: str | Path, overrides: Mapping[str, Any] | None = None) -> VQAModule:
    """A trained member from its Lightning checkpoint (read with ``weights_only=True``: no code runs).

    ``overrides`` replace recorded hyper-parameters, e.g. a tokenizer path recorded relative to where the
    training run started (the web app resolves those from its own working directory).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: member checkpoint not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("hyper_parameters", "state_dict", "vqa_member"):
        if key not in checkpoint:
            raise KeyError(f"{path}: missing {key!r}: not a VQAModule checkpoint")
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    hparams.update(overrides or {})
    # A fresh context: under LightningCLI the ensemble's own init args are in a context variable that
    # save_hyperparameters() would otherwise record for the member too.
    member = contextvars.Context().run(VQAModule, **hparams)
    member.on_load_checkpoint(checkpoint)
    member.load_state_dict(checkpoint["state_dict"])
    return member.eval()


# ---- the ensemble ------------------------------------------------------------------------------------


class VQAEnsemble(LightningModule):
    """Weighted average of member answer probabilities (sigmoid scores); evaluates like one model.

    ``lightning validate`` fits the weights on the validation split (grid search on the official accuracy,
    with a prior toward equal weights whose strength is cross-validated, see ``ensemble.py``) and saves them
    to ``weights_path``; ``lightning test|predict`` reads them from there (or ``weights``), so weights fitted
    with train-only members serve the train + val members of the same recipe (README "Ensemble protocol").
    Every stage first checks that no question it fits or scores on is in a member's recorded training
    questions (``check_no_leak``). Members may have different vocabularies: probabilities are mapped onto the
    union by answer string.

    Args:
        members: Member checkpoints (``VQAModule``), each reading its own feature set.
        weights: Fixed weights (one per member); None = fitted on validate / read from ``weights_path``.
        weights_path: JSON where fitted weights are written and read.
        grid_step: Resolution of the weight grid.
        prior: Strength of the pull toward equal weights; None = chosen by ``cv_folds``-fold cross-validation
            on the validation split among ``ensemble.PRIORS``; 0 = plain grid search.
        cv_folds: Folds of that cross-validation (whole images per fold).
        min_gain_se: Keep unequal weights only if they beat equal weights on the validation split by this many
            standard errors (clustered by image); 0 keeps whatever the fit chose.
        metric_version: Official accuracy version.
        results_dir: Write results files and metrics (per member and ensemble) here.
    """

    def __init__(
        self,
        members: list[str],
        weights: list[float] | None = None,
        weights_path: str | None = None,
        grid_step: float = 0.1,
        prior: float | None = None,
        cv_folds: int = 5,
        min_gain_se: float = 2.0,
        metric_version: str = "2021",
        results_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("members: list at least one member checkpoint")
        if weights is not None and len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} members")
        self.save_hyperparameters()
        self.members = nn.ModuleList(load_member(p) for p in members)
        for m in self.members:
            m.requires_grad_(False)
        vocab: dict[str, int] = {}
        for m in self.members:
            for a in m.answers:
                vocab.setdefault(a, len(vocab))
        self.answers = list(vocab)
        for k, m in enumerate(self.members):  # member label -> ensemble label
            self.register_buffer(f"_map{k}", torch.tensor([vocab[a] for a in m.answers]), persistent=False)
        self.weights = list(weights) if weights is not None else None
        self._rows: list[tuple[int, int, tuple[str, ...], str, str, Tensor]] = []
        self.fitted: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        for member in self.members:
            check_member_features(member, dm)
        split = "val" if stage == "validate" else "test"
        if dm is not None and split in getattr(dm, "splits", {}):
            check_no_leak(self.members, self.hparams.members, [i.question_id for i in dm.splits[split].items], split)
        if self.weights is None and stage != "validate":
            path = self.hparams.weights_path
            if path and Path(path).is_file():
                self.weights = json.loads(Path(path).read_text(encoding="utf-8"))["weights"]
            else:
                raise FileNotFoundError(
                    f"{path}: no fitted ensemble weights; run `lightning validate` with this config first "
                    "(or set model.init_args.weights)"
                )

    def member_probabilities(self, batch: dict[str, Any]) -> Tensor:
        """(M, B, A_union) sigmoid answer scores, zero where a member's vocabulary lacks an answer."""
        out = []
        for k, m in enumerate(self.members):
            p = torch.sigmoid(m(batch))
            full = p.new_zeros(p.shape[0], len(self.answers))
            full[:, getattr(self, f"_map{k}")] = p
            out.append(full)
        return torch.stack(out)

    def _collect(self, batch: dict[str, Any]) -> None:
        probs = self.member_probabilities(batch).cpu()
        for j, q in enumerate(batch["question_id"]):
            self._rows.append(
                (
                    int(batch["index"][j]),
                    int(q),
                    tuple(batch["answers"][j]),
                    batch["answer_type"][j],
                    batch["question_type"][j],
                    probs[:, j],
                )
            )

    def on_validation_epoch_start(self) -> None:
        self._rows = []

    on_test_epoch_start = on_validation_epoch_start
    on_predict_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        self._collect(batch)
        assert self.weights is not None
        labels = combine(self.member_probabilities(batch), self.weights).argmax(-1).tolist()
        return [
            {"question_id": int(q), "answer": self.answers[a]}
            for q, a in zip(batch["question_id"], labels, strict=True)
        ]

    def _table(self, split: str) -> dict[str, Any]:
        rows = sorted({r[0]: r for r in self._rows}.values())  # one row per question (sampler padding)
        probs = torch.stack([r[5] for r in rows], dim=1)  # (M, N, A)
        answers = [r[2] for r in rows]
        report: dict[str, Any] = {}
        if split == "val" and self.hparams.weights is None:
            report.update(self._fit(probs, answers, rows))
        assert self.weights is not None
        predictions = {
            "ensemble": combine(probs, self.weights).argmax(-1).tolist(),
            **{f"member{k}": probs[k].argmax(-1).tolist() for k in range(len(self.members))},
        }
        report["weights"] = list(self.weights)
        scored = bool(answers and answers[0])
        for name, labels in predictions.items():
            preds = {r[1]: self.answers[a] for r, a in zip(rows, labels, strict=True)}
            if scored:
                accs = [
                    vqa_accuracy(self.answers[a], list(r[2]), self.hparams.metric_version)
                    for r, a in zip(rows, labels, strict=True)
                ]
                agg = aggregate_vqa(accs, [r[3] for r in rows], [r[4] for r in rows])
                report[name] = {
                    "overall": agg["overall"],
                    **{f"answer_type/{t}": v for t, v in agg["perAnswerType"].items()},
                }
                self.log(f"{split}/{name}/vqa_acc", agg["overall"])
            if self.hparams.results_dir and self.trainer.world_size == 1:
                out = Path(self.hparams.results_dir)
                out.mkdir(parents=True, exist_ok=True)
                # checked against the split's question list, not the rows collected: a question lost on the way
                # (a dropped batch, a feature-store gap) stops here
                _replace_results(preds, out / f"{split}_{name}_results.json", _split_question_ids(self, split))
        if self.hparams.results_dir and self.trainer.world_size == 1:
            replace_text(Path(self.hparams.results_dir) / f"{split}_metrics.json", json.dumps(report, indent=1))
        self.fitted[split] = report
        return report

    def _fit(self, probs: Tensor, answers: list[tuple[str, ...]], rows: list[tuple]) -> dict[str, Any]:
        """Fit the weights on the validation rows; write them (with how they were chosen) to ``weights_path``."""
        h = self.hparams
        scorer = OfficialScorer(answers, self.answers, h.metric_version)
        items = self.trainer.datamodule.splits["val"].items
        images = [items[r[0]].image_id for r in rows]  # questions about one image stand or fall together
        if h.prior is None:
            fitted, prior, cv = cross_validate_prior(probs, scorer, h.grid_step, PRIORS, h.cv_folds, groups=images)
        else:
            (fitted, _), prior, cv = fit_ensemble_weights(probs, scorer, h.grid_step, h.prior), h.prior, {}
        gain, se = gain_over_equal(probs, scorer, fitted, images)
        equal = tuple([1.0 / len(self.members)] * len(self.members))
        self.weights = fitted if gain >= h.min_gain_se * se else equal
        fit = {
            "weights": list(self.weights),
            "fitted_weights": list(fitted),
            "prior": prior,
            "cv_accuracy_by_prior": cv,
            "gain_over_equal": {
                "percent": round(gain, 3),
                "se": round(se, 3),
                "min_gain_se": h.min_gain_se,
                "kept": self.weights == fitted,
            },
            "members": list(h.members),
            "fit_questions": len(rows),
            "leak_check": "no question the weights were fitted on is in any member's training questions",
        }
        if h.weights_path:
            path = Path(h.weights_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(fit, indent=1))
        return {k: fit[k] for k in ("fitted_weights", "prior", "cv_accuracy_by_prior", "gain_over_equal")}

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._table("val")

    def on_test_epoch_end(self) -> None:
        self._table("test")

    def on_predict_epoch_end(self) -> None:
        self._table("predict")

    def configure_optimizers(self) -> None:  # nothing to train: the members are fixed
        return None
