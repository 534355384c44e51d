"""SingleStreamModule: the Lightning side shared by SOHO and Pixel-BERT.

One module trains every phase and task of a single-stream model: batches carry their ``task`` (``pretrain``,
``vqa``, ``retrieval``, ``nlvr2``, ``snli_ve``; see ``vislang.singlestream.data``), so a run can pre-train for
some epochs and then fine-tune. What a paper adds arrives as one typed argument, ``paper`` (a
``SingleStreamPaper``: its preset and visual embedding); a paper package subclasses the module only to name
that type (``paper_type``) and, when it has extra pre-training losses (SOHO's MVM), to add them in
``extra_pretrain_losses``.

Optimisation (``OptimiserRecipe``) follows SOHO's ``AdamwSGD``: the CNN is trained with SGD (lr 1e-2,
momentum 0.9, wd 1e-4), everything else with AdamW (lr 1e-4, wd 0.01); linear warm-up from lr/3, step decay
at epoch milestones, gradient-norm clipping. Two optimisers need Lightning's manual optimisation (set here,
not in the config).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from vislang.shared.checkpoint import load_into, load_state_dict, strip_prefix
from vislang.shared.losses import IGNORE_INDEX, MaskingIds, mask_tokens
from vislang.shared.metrics import NLVR2Metric, SNLIVEAccuracy, VQAAccuracy, vqa_prior_baselines
from vislang.shared.metrics.ddp import SampleMetric
from vislang.shared.predictions import gather_objects, write_json_lines
from vislang.shared.schedules import linear_warmup_then_milestones, step_schedule
from vislang.shared.text import load_tokenizer
from vislang.singlestream.data import SingleStreamData, Task
from vislang.singlestream.metrics import ITMRetrievalMetric, format_table
from vislang.singlestream.model import SingleStreamPaper, VisualTokens, itm_loss, mlm_loss, vqa_loss

__all__ = ["OptimiserRecipe", "SingleStreamModule"]


@dataclass(frozen=True)
class OptimiserRecipe:
    """SOHO's ``AdamwSGD`` with mmcv's step policy (Pixel-BERT follows it): SGD on the CNN, AdamW on the rest.

    Args:
        lr: AdamW learning rate of the Transformer, embedder and heads (SOHO 1e-4).
        cnn_lr: Learning rate of the CNN (SOHO: SGD at 100 x lr = 1e-2).
        cnn_optimizer: ``sgd`` (SOHO, Pixel-BERT) or ``adamw``.
        weight_decay: AdamW weight decay (SOHO 0.01); biases and norms get none.
        cnn_weight_decay: Weight decay of the CNN's optimiser (1e-4).
        momentum: SGD momentum (0.9).
        warmup_steps: Linear warm-up iterations (SOHO 1000), from ``warmup_start`` x lr.
        warmup_start: Starting fraction of the warm-up (SOHO 1/3).
        lr_milestones: Epochs at which both learning rates are multiplied by ``lr_gamma`` (SOHO [25, 35]).
        lr_gamma: Step-decay factor.
        grad_clip: Gradient-norm clip (SOHO: 10 pre-training, 4 VQA); 0 = off.
    """

    lr: float = 1e-4
    cnn_lr: float = 1e-2
    cnn_optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: float = 0.01
    cnn_weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_steps: int = 1000
    warmup_start: float = 1 / 3
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    grad_clip: float = 10.0


class SingleStreamModule(LightningModule):
    """Pre-training (MLM + ITM [+ the paper's extras]) and VQA / retrieval / NLVR2 / SNLI-VE fine-tuning.

    The arguments are documented on ``__init__``, which the paper packages' subclasses inherit.
    """

    paper_type: ClassVar[type[SingleStreamPaper]] = SingleStreamPaper
    """The ``paper`` argument's class (a paper package's module names its own)."""

    def __init__(
        self,
        paper: SingleStreamPaper,
        tokenizer: str = "bert-base-uncased",
        num_answers: int = 3129,
        init_weights: str | None = None,
        cnn_weights: str | None = None,
        text_weights: str | None = None,
        max_text_len: int = 16,
        mlm_probability: float = 0.15,
        optimiser: OptimiserRecipe = OptimiserRecipe(),
        eval_text_chunk: int = 256,
        vqa_version: Literal["2021", "2017"] = "2021",
        results_dir: str | None = None,
    ) -> None:
        """The single-stream module of the paper ``paper`` describes.

        Args:
            paper: The paper's part: its preset and visual embedding (``paper_type`` of the subclass).
            tokenizer: Local Hugging Face tokenizer directory or hub name (``bert-base-uncased``).
            num_answers: VQA answer-vocabulary size of the head (3129); the data's vocabulary must fit.
            init_weights: A checkpoint of this model (e.g. after pre-training) to start from; the config's
                hyper-parameters stay in force (unlike ``--ckpt_path``, which resumes a run).
            cnn_weights: ImageNet weights of the preset's CNN, as both papers start (torchvision or timm
                ResNet / ResNeXt state dict; ``vislang.singlestream.convert``). Applied before ``init_weights``.
            text_weights: BERT weights in the Hugging Face ``bert-base-uncased`` layout, as both papers start.
            max_text_len: Token limit of captions and questions, [CLS]/[SEP] included (SOHO: 16, Pixel-BERT: 40).
            mlm_probability: Fraction of text tokens chosen for MLM (BERT: 0.15, then 80/10/10).
            optimiser: Optimisers, learning-rate schedule and clipping.
            eval_text_chunk: Texts scored per fused batch in cross-encoder retrieval evaluation.
            vqa_version: Official VQA metric version, ``2021`` (current) or ``2017``.
            results_dir: Where ``lightning predict`` writes ``<paper>_predictions_<task>.jsonl`` (None: the
                logger's directory).
        """
        super().__init__()
        if isinstance(paper, Mapping):  # read back from a checkpoint's hyper-parameters (see _plain)
            paper = self.paper_type(**paper)
        if isinstance(optimiser, Mapping):
            optimiser = OptimiserRecipe(**optimiser)
        if not isinstance(paper, self.paper_type):
            raise TypeError(f"{type(self).__name__} needs a {self.paper_type.__name__} as paper, got {type(paper)}")
        self.save_hyperparameters()
        for name, value in (("paper", paper), ("optimiser", optimiser)):
            if not isinstance(self.hparams[name], Mapping):  # outside the CLI, which stores its config dump
                self.hparams[name] = _plain(value)
        self.paper, self.optimiser = paper, optimiser
        self.automatic_optimization = False  # SGD for the CNN + AdamW for the rest (SOHO's AdamwSGD)
        self.tokenizer = load_tokenizer(tokenizer)
        self.masking = MaskingIds.from_tokenizer(self.tokenizer)
        self.model = paper.build(self.tokenizer, num_answers)
        self._load_starts(cnn_weights, text_weights, init_weights)
        self.answers: list[str] = []
        self.metrics: dict[str, SampleMetric] = {}
        self.scores: dict[str, dict[str, float]] = {}
        self.baselines: dict[str, dict[str, float]] = {}

    def _load_starts(self, cnn_weights: str | None, text_weights: str | None, init_weights: str | None) -> None:
        """ImageNet CNN and BERT weights, then the paper's released weights, then ``init_weights`` (each optional)."""
        from vislang.singlestream.convert import load_cnn_weights, load_text_weights

        if cnn_weights:
            load_cnn_weights(self.model.encoder.trunk, cnn_weights)
        if text_weights:
            load_text_weights(self.model, text_weights)
        self.paper.load_official(self.model)
        if init_weights:  # a Lightning checkpoint of this module or the model's own state dict
            report = load_into(self.model, strip_prefix(load_state_dict(init_weights), "model."))
            if report.missing or report.unexpected or report.mismatched:
                raise ValueError(
                    f"{init_weights}: not a checkpoint of this model and preset (missing {report.missing[:5]}, "
                    f"unexpected {report.unexpected[:5]}, shape-mismatched {[k for k, *_ in report.mismatched[:5]]})"
                )

    def extra_pretrain_losses(self, hidden: Tensor, visual: VisualTokens, text_len: int) -> dict[str, Tensor]:
        """Paper-specific pre-training losses/metrics from the fused states (SOHO: MVM); keys ``loss_*`` are summed."""
        return {}

    # -- text --------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.hparams.max_text_len, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    # -- set-up ------------------------------------------------------------------------------------------
    def _data(self) -> SingleStreamData | None:
        """The trainer's data module, when it is a single-stream one (None without a trainer or data module)."""
        data = getattr(self._trainer, "datamodule", None)
        return data if isinstance(data, SingleStreamData) else None

    def setup(self, stage: str) -> None:
        """The answer vocabulary and one metric per evaluation split the data module holds."""
        data = self._data()
        if data is None:
            return
        if data.answers:
            if len(data.answers) > self.hparams.num_answers:
                raise ValueError(
                    f"the data has {len(data.answers)} answers but the VQA head has "
                    f"num_answers={self.hparams.num_answers}"
                )
            self.answers = list(data.answers)
        held_out, version = data.held_out, self.hparams.vqa_version
        if held_out.vqa is not None:
            self.metrics["vqa"] = VQAAccuracy(version).to(self.device)
            self.baselines["vqa"] = vqa_prior_baselines(held_out.vqa_train, held_out.vqa.examples, version)
        if held_out.retrieval is not None:
            self.metrics["retrieval"] = ITMRetrievalMetric(held_out.retrieval.text_image).to(self.device)
            self.retrieval_texts = held_out.retrieval.texts
        if held_out.nlvr2 is not None:
            self.metrics["nlvr2"] = NLVR2Metric().to(self.device)
        if held_out.snli_ve is not None:
            self.metrics["snli_ve"] = SNLIVEAccuracy().to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["answers"] = self.answers  # label -> answer, needed to answer questions from a checkpoint

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.answers = list(checkpoint.get("answers", []))

    # -- training ----------------------------------------------------------------------------------------
    def pretrain_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """MLM + ITM in one pass over (masked caption, image) pairs, plus the paper's extras."""
        ids, text_mask = self.tokenize(batch["text"])
        masked, labels = mask_tokens(ids, self.masking, self.hparams.mlm_probability)
        matched = batch["matched"].to(self.device)
        if not self.paper.mlm_on_negatives:
            labels[~matched.bool()] = IGNORE_INDEX
        hidden, visual = self.model(masked, text_mask, batch["image"], batch["pixel_mask"], pretraining=True)
        length = ids.shape[1]
        out = {}
        out["loss_mlm"], out["acc_mlm"] = mlm_loss(self.model.mlm_head(hidden[:, :length]), labels)
        out["loss_itm"], out["acc_itm"] = itm_loss(self.model.itm_head(hidden[:, 0]), matched)
        out.update(self.extra_pretrain_losses(hidden, visual, length))
        return out

    def _cls(self, images: Tensor, pixel_mask: Tensor, texts: list[str]) -> Tensor:
        ids, text_mask = self.tokenize(texts)
        hidden, _ = self.model(ids, text_mask, images, pixel_mask)
        return hidden[:, 0]

    def _nlvr2_logits(self, batch: dict[str, Any]) -> Tensor:
        left = self._cls(batch["image_left"], batch["pixel_mask_left"], batch["text"])
        right = self._cls(batch["image_right"], batch["pixel_mask_right"], batch["text"])
        return self.model.nlvr2_head(left, right)

    def task_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The losses (``loss_*``, summed) and training metrics of the batch's task."""
        task: Literal["pretrain"] | Task = batch["task"][0]
        match task:
            case "pretrain":
                return self.pretrain_losses(batch)
            case "retrieval":
                # Pixel-BERT Sec. 2.5 (ViLT's irtr): softmax over the ITM scores of the positive (first) and the
                # sampled negatives of each image; the CNN runs once per image.
                scores = self.pair_scores(batch["image"], batch["pixel_mask"], batch["texts"])
                target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
                loss = torch.nn.functional.cross_entropy(scores.float(), target)
                return {"loss_rank": loss, "acc_rank": (scores.argmax(1) == 0).float().mean()}
            case "vqa":
                logits = self.model.vqa_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
                target = batch["target"]  # the data's vocabulary: the first len(vocab) of the head's outputs
                return {"loss_vqa": vqa_loss(logits[:, : target.shape[1]], target)}
            case "nlvr2":
                return {"loss_nlvr2": torch.nn.functional.cross_entropy(self._nlvr2_logits(batch), batch["label"])}
            case "snli_ve":
                logits = self.model.snli_ve_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
                return {"loss_snli_ve": torch.nn.functional.cross_entropy(logits, batch["label"])}
        raise ValueError(f"unknown task {task!r} in batch")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.task_losses(batch)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in optimizers:
            opt.step()  # Lightning's precision plugin unscales, calls on_before_optimizer_step (the clip), steps
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if scheduler is not None:
                scheduler.step()
        size = len(batch["task"])
        task = batch["task"][0]
        self.log(f"train/{task}/loss", loss, prog_bar=True, batch_size=size)
        for key, value in out.items():
            self.log(f"train/{task}/{key}", value, batch_size=size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradient norm here: Lightning calls this hook inside ``opt.step()`` *after* a mixed-precision
        plugin has unscaled the gradients (clipping in ``training_step`` would see them times the loss scale)."""
        if self.optimiser.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.optimiser.grad_clip, gradient_clip_algorithm="norm")

    # -- evaluation --------------------------------------------------------------------------------------
    def _evaluate_now(self, task: Task) -> bool:
        """Each task is scored in its own epochs; ITM retrieval, when it is not a task, in pre-training."""
        data = self._data()
        if data is None:
            return True
        phase = data.phase(self.current_epoch)
        if task == "retrieval" and "retrieval" not in data.tasks:
            return phase == "pretrain"
        return phase == task

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        task: Task = batch["task"][0]
        if not self._evaluate_now(task):
            return
        match task:
            case "vqa":
                logits = self.model.vqa_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
                logits = logits[:, : len(self.answers)]
                predictions = [self.answers[i] for i in logits.argmax(-1).tolist()]
                self.metrics["vqa"].update(
                    predictions, batch["answers"], batch["index"], batch["answer_type"], batch["question_type"]
                )
            case "retrieval":
                data = self._data()
                pretraining = data is not None and data.phase(self.current_epoch) == "pretrain"
                scores = self.itm_scores(batch["image"], batch["pixel_mask"], pretraining=pretraining)
                self.metrics["retrieval"].update(scores, batch["index"])
            case "nlvr2":
                predictions = self._nlvr2_logits(batch).argmax(-1)
                self.metrics["nlvr2"].update(predictions, batch["label"], batch["identifier"], batch["index"])
            case "snli_ve":
                logits = self.model.snli_ve_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
                self.metrics["snli_ve"].update(logits.argmax(-1), batch["label"], batch["index"])

    def pair_scores(
        self, images: Tensor, pixel_mask: Tensor, texts: list[list[str]], pretraining: bool = False
    ) -> Tensor:
        """ITM scores (B, K) of image b against each of its K texts ``texts[b]``; the CNN runs once per image.

        ``pretraining`` picks the visual embedding's pre-training path (the one ITM was trained on in
        pre-training); fine-tuned retrieval uses the downstream path.
        """
        k = len(texts[0])
        if any(len(group) != k for group in texts):
            raise ValueError("pair_scores needs the same number of texts for every image")
        grid, valid = self.model.encode_image(images, pixel_mask)
        visual = self.model.embed_visual(grid, valid, pretraining=pretraining)
        tokens = VisualTokens(visual.tokens.repeat_interleave(k, 0), visual.mask.repeat_interleave(k, 0))
        ids, text_mask = self.tokenize([t for group in texts for t in group])
        return self.model.itm_head.score(self.model.fuse(ids, text_mask, tokens)[:, 0]).view(-1, k)

    @torch.no_grad()
    def itm_scores(self, images: Tensor, pixel_mask: Tensor, pretraining: bool = False) -> Tensor:
        """ITM match scores of each image against every evaluation text: (B, T). The CNN runs once per image."""
        grid, valid = self.model.encode_image(images, pixel_mask)
        visual = self.model.embed_visual(grid, valid, pretraining=pretraining)
        rows = []
        chunk = self.hparams.eval_text_chunk
        for b in range(images.shape[0]):
            row = []
            for start in range(0, len(self.retrieval_texts), chunk):
                ids, text_mask = self.tokenize(self.retrieval_texts[start : start + chunk])
                n = ids.shape[0]
                tokens = VisualTokens(visual.tokens[b : b + 1].expand(n, -1, -1), visual.mask[b : b + 1].expand(n, -1))
                hidden = self.model.fuse(ids, text_mask, tokens)
                row.append(self.model.itm_head.score(hidden[:, 0]))
            rows.append(torch.cat(row))
        return torch.stack(rows)

    def on_validation_epoch_end(self) -> None:
        for task, metric in self.metrics.items():
            if not metric.update_called:
                continue
            scores = metric.compute()
            metric.reset()
            self.scores[task] = {k: float(v) for k, v in scores.items()}
            self.scores[task]["epoch"] = self.current_epoch
            for key, value in scores.items():
                if "question_type/" not in key:
                    self.log(f"val/{task}/{key}", float(value), sync_dist=False)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and self.scores:
            print("\nheld-out scores (validation splits):")
            print(format_table(self.scores, self.baselines))

    # -- prediction (`lightning predict`) ---------------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._predictions: dict[str, list[dict[str, Any]]] = {}

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per item of an evaluation split: VQA's answer (with the top 5 and their sigmoid scores), each
        retrieval image's 10 best captions by ITM score, NLVR2's true/false, SNLI-VE's label."""
        task: Task = batch["task"][0]
        index = [int(i) for i in batch["index"]]
        match task:
            case "vqa":
                rows = self._predict_vqa(batch, index)
            case "retrieval":
                rows = self._predict_retrieval(batch, index)
            case "nlvr2":
                labels = self._nlvr2_logits(batch).argmax(-1).tolist()
                rows = [
                    {"index": i, "identifier": d, "sentence": t, "prediction": bool(y)}
                    for i, d, t, y in zip(index, batch["identifier"], batch["text"], labels, strict=True)
                ]
            case "snli_ve":
                from vislang.shared.data.vl import SNLI_VE_LABELS

                logits = self.model.snli_ve_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
                rows = [
                    {"index": i, "hypothesis": t, "prediction": SNLI_VE_LABELS[int(y)]}
                    for i, t, y in zip(index, batch["text"], logits.argmax(-1).tolist(), strict=True)
                ]
            case _:
                raise ValueError(f"no prediction for task {task!r}; predict runs on the evaluation splits")
        self._predictions.setdefault(task, []).extend(rows)
        return rows

    def _predict_vqa(self, batch: dict[str, Any], index: list[int]) -> list[dict[str, Any]]:
        logits = self.model.vqa_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
        top = logits[:, : len(self.answers)].float().sigmoid().topk(min(5, len(self.answers)), dim=-1)
        return [
            {
                "index": i,
                "question_id": int(q),
                "question": t,
                "answer": self.answers[int(a[0])],
                "top5": [[self.answers[int(k)], round(float(v), 4)] for k, v in zip(a, p, strict=True)],
            }
            for i, q, t, a, p in zip(index, batch["question_id"], batch["text"], top.indices, top.values, strict=True)
        ]

    def _predict_retrieval(self, batch: dict[str, Any], index: list[int]) -> list[dict[str, Any]]:
        data = self._data()
        pretraining = data is not None and "retrieval" not in data.tasks
        scores = self.itm_scores(batch["image"], batch["pixel_mask"], pretraining=pretraining).float()
        top = scores.topk(min(10, scores.shape[1]), dim=-1)
        return [
            {
                "index": i,
                "captions": [[self.retrieval_texts[int(k)], round(float(v), 4)] for k, v in zip(ks, vs, strict=True)],
            }
            for i, ks, vs in zip(index, top.indices, top.values, strict=True)
        ]

    def on_predict_epoch_end(self) -> None:
        """Write ``<paper>_predictions_<task>.jsonl`` (in ``results_dir``, or the logger's directory), one row
        per item in split order, replacing an earlier run's file (written under a temporary name, then
        renamed). An item the robust loader repeated in place of an unreadable image is written once; the
        image's own items are absent. Every rank's items under DDP."""
        gathered = gather_objects(self._predictions)
        if not self.trainer.is_global_zero:
            return
        directory = Path(self.hparams.results_dir or self.trainer.log_dir or self.trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        data = self._data()
        paper = type(self).__name__.removesuffix("Module").lower()
        for task in sorted({t for part in gathered for t in part}):
            rows = {row["index"]: row for part in gathered for row in part.get(task, [])}
            images = data.held_out.item_images if data is not None else lambda task, index: {}
            lines = [{**images(task, i), **rows[i]} for i in sorted(rows)]
            path = write_json_lines(directory / f"{paper}_predictions_{task}.jsonl", lines)
            print(f"{len(lines)} {task} predictions written to {path}")

    # -- inference ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, image: Any, question: str, image_size: int = 600, max_size: int = 1000) -> str:
        """Answer one question about one image with the VQA head (needs a VQA-trained checkpoint).

        ``image``: a path, a PIL image or an H x W, H x W x 1/3/4 array (uint8, or float in [0, 1]); anything
        else is refused in one line (``vislang.shared.data.images.as_rgb``).
        """
        from vislang.shared.data.images import as_rgb
        from vislang.singlestream.data import ImageTransform, pad_images

        if not self.answers:
            raise RuntimeError("this module has no answer vocabulary: train or load a VQA checkpoint first")
        picture = as_rgb(image)
        was_training = self.training
        self.eval()
        images, mask = pad_images([ImageTransform(image_size, max_size)(picture)])
        logits = self.model.vqa_head(self._cls(images.to(self.device), mask.to(self.device), [question]))
        self.train(was_training)
        return self.answers[int(logits[0, : len(self.answers)].argmax())]

    # -- optimisation ------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """AdamW on everything but the CNN (no decay on biases and norms), SGD (or AdamW) on the CNN; both
        follow mmcv's linear warm-up and the epoch milestones (``vislang.shared.schedules``)."""
        o = self.optimiser
        cnn = [p for p in self.model.encoder.trunk.parameters() if p.requires_grad]
        cnn_ids = {id(p) for p in cnn}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in cnn_ids]
        groups = [
            {"params": [p for p in rest if p.ndim >= 2], "weight_decay": o.weight_decay},
            {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=o.lr)]
        if cnn and o.cnn_optimizer == "sgd":
            optimizers.append(torch.optim.SGD(cnn, lr=o.cnn_lr, momentum=o.momentum, weight_decay=o.cnn_weight_decay))
        elif cnn:
            optimizers.append(torch.optim.AdamW(cnn, lr=o.cnn_lr, weight_decay=o.cnn_weight_decay))
        schedule = linear_warmup_then_milestones(
            o.warmup_steps, o.warmup_start, o.lr_gamma, o.lr_milestones, epoch=lambda: self.current_epoch
        )
        return step_schedule(optimizers, schedule)


def _plain(spec: Any) -> dict[str, Any]:
    """A spec dataclass (the paper's part, the optimiser recipe) as plain data, its fields, as LightningCLI stores
    it in the hyper-parameters (a checkpoint is read with ``weights_only``, which refuses other classes); tuples
    as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
