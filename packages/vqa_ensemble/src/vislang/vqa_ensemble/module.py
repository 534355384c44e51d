"""LightningModules of the entry: the feature detector, one BERT + MCAN member, and the ensemble.

* ``DetectorModule`` trains the torchvision Faster R-CNN + FPN whose boxes and backbone give the features.
* ``VQAModule`` trains one member (MCAN recipe: Adam (0.9, 0.98), warm-up then step decay; BERT gets its
  own learning rate) and evaluates it with the official 2021 VQA accuracy.
* ``VQAEnsemble`` loads member checkpoints, fits averaging weights on the validation split
  (``lightning validate``) and evaluates / predicts like a single model (``lightning test|predict``).

Members and ensemble read their data module through ``data.VQAData`` and its batches as ``data.VQABatch``.
``validate``/``test`` with ``results_dir`` write the EvalAI results file and the metrics (``results.py``).
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningModule, Trainer
from torch import Tensor, nn

from vislang.shared.checkpoint import load_checkpoint
from vislang.shared.metrics.vqa import VQAAccuracy, aggregate_vqa, vqa_accuracy
from vislang.shared.schedules import epoch_step_decay, step_schedule, warmup_cosine
from vislang.shared.text import load_text_model, load_tokenizer, tiny_bert_config
from vislang.vqa_ensemble.checks import check_member_features, check_no_leak
from vislang.vqa_ensemble.data import DetectionBatch, VQABatch, VQAData
from vislang.vqa_ensemble.detector import Backbone, Head, Norm, build_detector, detector_hparams
from vislang.vqa_ensemble.ensemble import (
    PRIORS,
    OfficialScorer,
    combine,
    cross_validate_prior,
    fit_ensemble_weights,
    gain_over_equal,
)
from vislang.vqa_ensemble.model import MCAN, PRESETS, Preset
from vislang.vqa_ensemble.results import Stage, split_question_ids, write_metrics, write_results

__all__ = ["CollectedQuestion", "DetectorModule", "VQAEnsemble", "VQAModule", "load_member", "vqa_data"]

MetricVersion = Literal["2021", "2017"]
"""Official VQA accuracy versions (``vislang.shared.metrics.vqa``): EvalAI's since 2021, and LAVIS / MCAN's."""


def vqa_data(trainer: Trainer | None) -> VQAData | None:
    """The trainer's data module as what members and ensemble read (``data.VQAData``), or None without one."""
    dm = trainer.datamodule if trainer is not None else None
    if dm is None:
        return None
    if not isinstance(dm, VQAData):
        raise TypeError(
            f"{type(dm).__name__} is not a VQA data module: vislang.vqa_ensemble.data.VQAData needs answers, "
            "splits, use_answer_vocab() and feature_store() (vislang.vqa_ensemble.data.VQADataModule has them)"
        )
    return dm


# ---- detector ---------------------------------------------------------------------------------------


class DetectorModule(LightningModule):
    """Faster R-CNN training (torchvision losses: RPN objectness/box + Fast R-CNN class/box) in any of the
    ``detector.HEADS`` layouts; validation reports the COCO box mAP (pycocotools) when the data has a val split.

    An attribute head is not trained here (no attribute loss): import one with ``convert.py``.

    Args:
        backbone: See ``detector.BACKBONES``.
        num_classes: Object classes + background (1600 VG objects + 1 in bottom-up-attention).
        min_size: Shorter-side sizes; several values = multi-scale training, one drawn per batch (entry §1).
        max_size: Longer-side cap.
        anchor_sizes: ``fpn``: one size per level P2..P6; ``c4`` / ``c5``: every size on the one level.
        representation_size: Width of the two-FC box head (``fpn``, ``c5``); the ``c4`` head's width is res5's.
        norm: ``frozen_bn`` (the released detectors) or ``bn``; see ``detector.build_backbone``.
        rpn_batch_size_per_image: Anchors sampled per image for the RPN losses.
        box_batch_size_per_image: RoIs sampled per image for the box-head losses.
        rpn_proposals: Proposals kept after NMS per image.
        head: ``fpn`` (the entry), ``c4`` (bottom-up attention), ``c5`` (grid-feats-vqa).
        stride_in_1x1: Downsample in each stage's first 1x1 conv (MSRA / Caffe ResNets), not in the 3x3.
        res5_dilation: Dilation of res5's 3x3 convs (bottom-up Caffe model and grid-feats: 2).
        rpn_channels: Hidden width of the single-level RPN head (bottom-up attention: 512; None = input width).
        lr: SGD learning rate.
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay.
        warmup_steps: Linear warm-up steps before the cosine decay.
    """

    def __init__(
        self,
        backbone: Backbone = "resnext152_32x8d",
        num_classes: int = 1601,
        min_size: list[int] = [600],  # noqa: B006
        max_size: int = 1000,
        anchor_sizes: list[int] = [32, 64, 128, 256, 512],  # noqa: B006
        representation_size: int = 1024,
        norm: Norm = "frozen_bn",
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        rpn_proposals: int = 1000,
        head: Head = "fpn",
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
        self.detector = build_detector(**detector_hparams(self.hparams))  # no attribute head (num_attributes 0)

    def training_step(self, batch: DetectionBatch, batch_idx: int) -> Tensor:
        losses = self.detector(batch["images"], batch["targets"])
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(batch["images"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
        return loss

    def validation_step(self, batch: DetectionBatch, batch_idx: int) -> None:
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
        return step_schedule(opt, warmup_cosine(total, h.warmup_steps))


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
        tiny_bert_layers: Transformer layers of the ``tiny`` BERT.
        tiny_bert_hidden: Hidden width of the ``tiny`` BERT.
        use_boxes: Add a box-geometry embedding to each visual feature.
        lr: Co-attention learning rate (MCAN: 1e-4 small, 5e-5 large).
        bert_lr: BERT's learning rate (fine-tuned at its own rate).
        warmup_epochs: MCAN warm-up: lr x (e+1)/(warmup_epochs+1) in epoch e < warmup_epochs.
        decay_epochs: Epochs at which the step decay multiplies the rate (MCAN: 10 and 12).
        decay_factor: The step decay's factor (MCAN: 0.2).
        weight_decay: AdamW decoupled weight decay (MCAN: 0 with Adam).
        metric_version: Official accuracy version (``2021`` = EvalAI since 2021).
        results_dir: Write ``{split}_results.json`` (EvalAI format) and the metrics here on validate/test.
    """

    def __init__(
        self,
        preset: Preset = "large",
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
        metric_version: MetricVersion = "2021",
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
        data = vqa_data(self._trainer)
        if data is None:
            return
        if self.model is None:
            store = data.feature_store(self.hparams.feature_set)
            self.build(data.answers, store.feature_dim, store.spec)
        data.use_answer_vocab(self.answers)  # targets in this model's label order
        check_member_features(self, data)
        if stage == "fit":  # recorded in the checkpoint: an ensemble refuses to fit weights on these questions
            ids = sorted({i.question_id for i in data.splits["train"].items if i.source == "vqa"})
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
        data = vqa_data(self._trainer)
        if data is not None:
            data.use_answer_vocab(self.answers)
            check_member_features(self, data)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, batch: VQABatch) -> Tensor:
        if self.model is None:
            raise RuntimeError("VQAModule is not built: run it with a data module or load a checkpoint")
        v = batch["visual"][self.hparams.feature_set]
        return self.model(batch["input_ids"], batch["attention_mask"], v["features"], v["mask"], v["boxes"])

    def training_step(self, batch: VQABatch, batch_idx: int) -> Tensor:
        logits = self(batch)
        # Sigmoid + soft scores (MCAN eq. 9), summed over answers, mean over the batch (BAN / ViLT scale).
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["targets"], reduction="sum") / len(logits)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def _predict(self, batch: VQABatch) -> list[str]:
        """The top answer of each question, remembered for the results file."""
        preds = [self.answers[i] for i in self(batch).argmax(-1).tolist()]
        self._predictions.update({int(q): p for q, p in zip(batch["question_id"], preds, strict=True)})
        return preds

    def _evaluate(self, batch: VQABatch, metric: VQAAccuracy) -> None:
        preds = self._predict(batch)
        if batch["answers"][0]:
            metric.update(preds, batch["answers"], batch["index"], batch["answer_type"], batch["question_type"])

    def on_validation_epoch_start(self) -> None:
        self._predictions = {}

    on_test_epoch_start = on_validation_epoch_start
    on_predict_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: VQABatch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def test_step(self, batch: VQABatch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metric)

    def predict_step(self, batch: VQABatch, batch_idx: int) -> list[dict[str, Any]]:
        preds = self._predict(batch)
        return [{"question_id": int(q), "answer": p} for q, p in zip(batch["question_id"], preds, strict=True)]

    def _finish(self, stage: Stage, metric: VQAAccuracy | None) -> None:
        scores = metric.compute() if metric is not None and metric.update_count else {}
        if metric is not None:
            metric.reset()
        if scores:
            self.log(f"{stage}/vqa_acc", scores["overall"], prog_bar=True)
            for k, v in scores.items():
                if k.startswith("answer_type/"):
                    self.log(f"{stage}/{k}", v)
        results_dir = self.hparams.results_dir
        if not results_dir or not self._predictions or self.trainer.world_size > 1:
            return
        out = Path(results_dir)
        write_results(self._predictions, out / f"{stage}_results.json", split_question_ids(self.trainer, stage))
        if scores:
            write_metrics(out / f"{stage}_metrics.json", scores)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._finish("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._finish("test", self.test_metric)

    def on_predict_epoch_end(self) -> None:
        self._finish("predict", None)

    def configure_optimizers(self) -> dict[str, Any]:
        assert self.model is not None
        h = self.hparams
        groups = [
            {"params": self.model.co_attention_parameters(), "lr": h.lr},
            {"params": list(self.model.bert.parameters()), "lr": h.bert_lr},  # BERT fine-tuned at its own lr
        ]
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-9, weight_decay=h.weight_decay)
        steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs or 1))
        # MCAN: 1/4, 2/4, 3/4 of the base rate in epochs 1-3, then x decay_factor at each of decay_epochs
        return step_schedule(opt, epoch_step_decay(steps_per_epoch, h.warmup_epochs, h.decay_epochs, h.decay_factor))


def load_member(path: str | Path, overrides: Mapping[str, Any] | None = None) -> VQAModule:
    """A trained member from its Lightning checkpoint (read by ``vislang.shared.checkpoint``: no code runs).

    ``overrides`` replace recorded hyper-parameters, e.g. a tokenizer path recorded relative to where the
    training run started (the web app resolves those from its own working directory).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: member checkpoint not found")
    checkpoint = load_checkpoint(path)
    for key in ("hyper_parameters", "state_dict", "vqa_member"):
        if not isinstance(checkpoint, dict) or key not in checkpoint:
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


@dataclass(frozen=True)
class CollectedQuestion:
    """What the ensemble keeps of one evaluated question until the epoch ends (weights are fitted and
    accuracy is scored over the whole split at once)."""

    index: int  # position in the split's dataset: orders the questions, drops the sampler's padding repeats
    question_id: int
    answers: tuple[str, ...]  # the ten human answers; empty on a split without annotations
    answer_type: str
    question_type: str
    probabilities: Tensor  # (M, A) each member's sigmoid scores over the ensemble's answers


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
        metric_version: MetricVersion = "2021",
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
        self._collected: list[CollectedQuestion] = []
        self.fitted: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        data = vqa_data(self._trainer)
        for member in self.members:
            check_member_features(member, data)
        split = "val" if stage == "validate" else "test"
        if data is not None and split in data.splits:
            check_no_leak(self.members, self.hparams.members, [i.question_id for i in data.splits[split].items], split)
        if self.weights is None and stage != "validate":
            path = self.hparams.weights_path
            if not path or not Path(path).is_file():
                raise FileNotFoundError(
                    f"{path}: no fitted ensemble weights; run `lightning validate` with this config first "
                    "(or set model.init_args.weights)"
                )
            self.weights = json.loads(Path(path).read_text(encoding="utf-8"))["weights"]

    def member_probabilities(self, batch: VQABatch) -> Tensor:
        """(M, B, A_union) sigmoid answer scores, zero where a member's vocabulary lacks an answer."""
        out = []
        for k, m in enumerate(self.members):
            p = torch.sigmoid(m(batch))
            full = p.new_zeros(p.shape[0], len(self.answers))
            full[:, getattr(self, f"_map{k}")] = p
            out.append(full)
        return torch.stack(out)

    def _collect(self, batch: VQABatch) -> Tensor:
        """Keep each question's member probabilities for the epoch's end; returns them (M, B, A)."""
        probs = self.member_probabilities(batch)
        on_cpu = probs.cpu()
        for j, q in enumerate(batch["question_id"]):
            self._collected.append(
                CollectedQuestion(
                    index=int(batch["index"][j]),
                    question_id=int(q),
                    answers=tuple(batch["answers"][j]),
                    answer_type=batch["answer_type"][j],
                    question_type=batch["question_type"][j],
                    probabilities=on_cpu[:, j],
                )
            )
        return probs

    def on_validation_epoch_start(self) -> None:
        self._collected = []

    on_test_epoch_start = on_validation_epoch_start
    on_predict_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: VQABatch, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: VQABatch, batch_idx: int) -> None:
        self._collect(batch)

    def predict_step(self, batch: VQABatch, batch_idx: int) -> list[dict[str, Any]]:
        probs = self._collect(batch)
        assert self.weights is not None
        labels = combine(probs, self.weights).argmax(-1).tolist()
        return [
            {"question_id": int(q), "answer": self.answers[a]}
            for q, a in zip(batch["question_id"], labels, strict=True)
        ]

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def on_predict_epoch_end(self) -> None:
        self._report("predict")

    def configure_optimizers(self) -> None:  # nothing to train: the members are fixed
        return None

    # -- the epoch's end: fit (validate), score, write -----------------------------------------------
    def _report(self, stage: Stage) -> dict[str, Any]:
        """Fit the weights (``validate`` without fixed weights), then score and write the results of the
        ensemble and of each member over the questions collected; the report is kept in ``fitted[stage]``."""
        questions = sorted({q.index: q for q in self._collected}.values(), key=lambda q: q.index)
        probs = torch.stack([q.probabilities for q in questions], dim=1)  # (M, N, A)
        report: dict[str, Any] = {}
        if stage == "val" and self.hparams.weights is None:
            report.update(self._fit(probs, questions))
        assert self.weights is not None
        report["weights"] = list(self.weights)
        scored = bool(questions and questions[0].answers)
        for name, labels in self._top_answers(probs).items():
            if scored:
                report[name] = self._score(stage, name, questions, labels)
            self._write_results(stage, name, questions, labels)
        if self._writes_files():
            write_metrics(Path(self.hparams.results_dir) / f"{stage}_metrics.json", report)
        self.fitted[stage] = report
        return report

    def _top_answers(self, probs: Tensor) -> dict[str, list[int]]:
        """The ensemble's and each member's top answer (ensemble label) per question."""
        return {
            "ensemble": combine(probs, self.weights).argmax(-1).tolist(),
            **{f"member{k}": probs[k].argmax(-1).tolist() for k in range(len(self.members))},
        }

    def _score(self, stage: Stage, name: str, questions: list[CollectedQuestion], labels: list[int]) -> dict:
        """Official accuracy of one answer list, overall and per answer type (logged as ``{stage}/{name}/vqa_acc``)."""
        accs = [
            vqa_accuracy(self.answers[a], list(q.answers), self.hparams.metric_version)
            for q, a in zip(questions, labels, strict=True)
        ]
        agg = aggregate_vqa(accs, [q.answer_type for q in questions], [q.question_type for q in questions])
        self.log(f"{stage}/{name}/vqa_acc", agg["overall"])
        return {"overall": agg["overall"], **{f"answer_type/{t}": v for t, v in agg["perAnswerType"].items()}}

    def _writes_files(self) -> bool:
        return bool(self.hparams.results_dir) and self.trainer.world_size == 1

    def _write_results(self, stage: Stage, name: str, questions: list[CollectedQuestion], labels: list[int]) -> None:
        """``{stage}_{name}_results.json``, checked against the split's question list, not the questions
        collected: a question lost on the way (a dropped batch, a feature-store gap) stops here."""
        if not self._writes_files():
            return
        answers = {q.question_id: self.answers[a] for q, a in zip(questions, labels, strict=True)}
        path = Path(self.hparams.results_dir) / f"{stage}_{name}_results.json"
        write_results(answers, path, split_question_ids(self.trainer, stage))

    def _fit(self, probs: Tensor, questions: list[CollectedQuestion]) -> dict[str, Any]:
        """Fit the weights on the validation questions; write them (with how they were chosen) to ``weights_path``."""
        h = self.hparams
        scorer = OfficialScorer([q.answers for q in questions], self.answers, h.metric_version)
        items = self.trainer.datamodule.splits["val"].items
        images = [items[q.index].image_id for q in questions]  # questions about one image stand or fall together
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
            "fit_questions": len(questions),
            "leak_check": "no question the weights were fitted on is in any member's training questions",
        }
        if h.weights_path:
            path = Path(h.weights_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(fit, indent=1))
        return {k: fit[k] for k in ("fitted_weights", "prior", "cv_accuracy_by_prior", "gain_over_equal")}
