"""SingleStreamModule: the Lightning side shared by SOHO and Pixel-BERT.

One module trains every phase and task of a single-stream model: batches carry their ``task``
(``pretrain``, ``vqa``, ``retrieval``, ``nlvr2``, ``snli_ve``; see ``SingleStreamDataModule``), so a run
can pre-train for some epochs and then fine-tune. A paper package subclasses it and implements
``build_model`` (its visual embedder and presets) and, when it has extra pre-training losses (SOHO's
MVM), ``extra_pretrain_losses``.

Optimisation follows SOHO's ``AdamwSGD``: the CNN is trained with SGD (lr 1e-2, momentum 0.9, wd 1e-4),
everything else with AdamW (lr 1e-4, wd 0.01); linear warm-up from lr/3, step decay at epoch milestones,
gradient-norm clipping. Two optimisers need Lightning's manual optimisation (set here, not in the config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from vislang.shared.checkpoint import load_state_dict
from vislang.shared.losses import IGNORE_INDEX, MaskingIds, mask_tokens
from vislang.shared.metrics import (
    NLVR2Metric,
    SNLIVEAccuracy,
    VQAAccuracy,
    retrieval_metrics,
    transpose_positives,
    vqa_prior_baselines,
)
from vislang.shared.metrics.ddp import SampleMetric
from vislang.shared.predictions import gather_objects, write_json_lines
from vislang.singlestream.model import SingleStreamModel, VisualTokens, itm_loss, mlm_loss, vqa_loss
from vislang.shared.text import load_tokenizer

__all__ = ["ITMRetrievalMetric", "SingleStreamModule", "format_table"]

PRETRAIN_TASKS = ("pretrain",)


class ITMRetrievalMetric(SampleMetric):
    """Cross-encoder retrieval: each update adds images' ITM scores against *all* texts (exact under DDP).

    ``text_image[t]`` is the position of text ``t``'s image. ``compute`` gives image->text (TR, best of an
    image's captions) and text->image (IR) R@1/5/10 with pessimistic ties (``vislang.shared.metrics``),
    plus their chance levels for a random ranking.
    """

    def __init__(self, text_image: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text_image = list(text_image)
        self._add_states("scores")

    def update(self, scores: Tensor, index: Tensor) -> None:
        self.scores.append(scores.detach().float())
        self._append_index(index, scores.shape[0])

    def compute(self) -> dict[str, float]:
        keep = self._kept()
        sim = self._gathered("scores", keep)  # (images, texts), images in dataset order
        index = self._gathered("index", keep).tolist()
        image_texts: dict[int, list[int]] = {}
        for t, i in enumerate(self.text_image):
            image_texts.setdefault(i, []).append(t)
        tr = retrieval_metrics(sim, [image_texts.get(i, []) for i in index])
        row_of = {i: r for r, i in enumerate(index)}
        # text->image over the texts whose image was scored (all of them, unless evaluation was cut short)
        scored = [t for t, i in enumerate(self.text_image) if i in row_of]
        column = {t: c for c, t in enumerate(scored)}
        positives = [[column[t] for t in image_texts.get(i, [])] for i in index]
        ir = retrieval_metrics(sim[:, scored].T, transpose_positives(positives, len(scored)))
        out = {f"tr/{k}": v for k, v in tr.items()}
        out.update({f"ir/{k}": v for k, v in ir.items()})
        out["rsum"] = sum(v for k, v in out.items() if "/R@" in k)
        per_image = [len(image_texts.get(i, [])) for i in row_of]
        out["tr/chance_R@1"] = 100.0 * sum(per_image) / len(per_image) / sim.shape[1]
        out["ir/chance_R@1"] = 100.0 / sim.shape[0]
        return out


class SingleStreamModule(LightningModule):
    """Pre-training (MLM + ITM [+ the paper's extras]) and VQA / retrieval / NLVR2 / SNLI-VE fine-tuning.

    Args:
        tokenizer: Local Hugging Face tokenizer directory or hub name (``bert-base-uncased``).
        num_answers: VQA answer-vocabulary size of the head (3129); the data's vocabulary must fit.
        init_weights: A checkpoint of this model (e.g. after pre-training) to start from; the config's
            hyper-parameters stay in force (unlike ``--ckpt_path``, which resumes a run).
        cnn_weights: ImageNet weights of the preset's CNN, as both papers start (torchvision or timm
            ResNet / ResNeXt state dict; ``vislang.singlestream.convert``). Applied before ``init_weights``.
        text_weights: BERT weights in the Hugging Face ``bert-base-uncased`` layout, as both papers start.
        max_text_len: Token limit of captions and questions, [CLS]/[SEP] included (SOHO: 16).
        mlm_probability: Fraction of text tokens chosen for MLM (BERT: 0.15, then 80/10/10).
        mlm_on_negatives: Also train MLM on ITM-negative captions (official SOHO code: True; UNITER/ViLT
            style: False).
        lr: AdamW learning rate of the Transformer, embedder and heads (SOHO 1e-4).
        cnn_lr: Learning rate of the CNN (SOHO: SGD at 100 x lr = 1e-2).
        cnn_optimizer: ``sgd`` (SOHO, Pixel-BERT) or ``adamw``.
        weight_decay: AdamW weight decay (SOHO 0.01).
        cnn_weight_decay: SGD weight decay (1e-4).
        momentum: SGD momentum (0.9).
        warmup_steps: Linear warm-up iterations (SOHO 1000), from ``warmup_start`` x lr.
        warmup_start: Starting fraction of the warm-up (SOHO 1/3).
        lr_milestones: Epochs at which both learning rates are multiplied by ``lr_gamma`` (SOHO [25, 35]).
        lr_gamma: Step-decay factor.
        grad_clip: Gradient-norm clip (SOHO: 10 pre-training, 4 VQA); 0 = off.
        eval_text_chunk: Texts scored per fused batch in cross-encoder retrieval evaluation.
        vqa_version: Official VQA metric version, ``2021`` (current) or ``2017``.
        results_dir: Where ``lightning predict`` writes ``<paper>_predictions_<task>.jsonl`` (None: the
            logger's directory).
    """

    def __init__(
        self,
        tokenizer: str = "bert-base-uncased",
        num_answers: int = 3129,
        init_weights: str | None = None,
        cnn_weights: str | None = None,
        text_weights: str | None = None,
        max_text_len: int = 16,
        mlm_probability: float = 0.15,
        mlm_on_negatives: bool = True,
        lr: float = 1e-4,
        cnn_lr: float = 1e-2,
        cnn_optimizer: str = "sgd",
        weight_decay: float = 0.01,
        cnn_weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_steps: int = 1000,
        warmup_start: float = 1 / 3,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        grad_clip: float = 10.0,
        eval_text_chunk: int = 256,
        vqa_version: str = "2021",
        results_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False  # SGD for the CNN + AdamW for the rest (SOHO's AdamwSGD)
        if cnn_optimizer not in ("sgd", "adamw"):
            raise ValueError(f"cnn_optimizer must be 'sgd' or 'adamw', got {cnn_optimizer!r}")
        self.tokenizer = load_tokenizer(tokenizer)
        self.masking = MaskingIds.from_tokenizer(self.tokenizer)
        self.model: SingleStreamModel  # set by the paper's subclass, which then calls load_init_weights
        self.answers: list[str] = []
        self.metrics: dict[str, SampleMetric] = {}
        self.scores: dict[str, dict[str, float]] = {}
        self.baselines: dict[str, dict[str, float]] = {}

    # -- for the paper packages ------------------------------------------------------------------------
    def load_pretrained_starts(self) -> None:
        """Load ``cnn_weights`` into the CNN trunk and ``text_weights`` into BERT (each optional)."""
        from vislang.singlestream.convert import load_cnn_weights, load_text_weights

        if self.hparams.cnn_weights:
            load_cnn_weights(self.model.encoder.trunk, self.hparams.cnn_weights)
        if self.hparams.text_weights:
            load_text_weights(self.model, self.hparams.text_weights)

    def load_init_weights(self, path: str | None) -> None:
        """Load a checkpoint of this model (Lightning ``.ckpt`` or a state dict) into ``self.model``."""
        if not path:
            return
        state = {k.removeprefix("model."): v for k, v in load_state_dict(path).items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path}: not a checkpoint of this model and preset (missing {missing[:5]}, unexpected {unexpected[:5]})"
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
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        datasets = getattr(dm, "datasets", {})
        answers = getattr(dm, "answers", [])
        if answers:
            if len(answers) > self.hparams.num_answers:
                raise ValueError(
                    f"the data has {len(answers)} answers but the VQA head has num_answers={self.hparams.num_answers}"
                )
            self.answers = list(answers)
        if "val/vqa" in datasets:
            self.metrics["vqa"] = VQAAccuracy(self.hparams.vqa_version).to(self.device)
            self.baselines["vqa"] = vqa_prior_baselines(
                datasets["vqa"].examples, datasets["val/vqa"].examples, self.hparams.vqa_version
            )
        if "val/retrieval" in datasets:
            self.metrics["retrieval"] = ITMRetrievalMetric(datasets["val/retrieval"].text_image).to(self.device)
            self.retrieval_texts = datasets["val/retrieval"].texts
        if "val/nlvr2" in datasets:
            self.metrics["nlvr2"] = NLVR2Metric().to(self.device)
        if "val/snli_ve" in datasets:
            self.metrics["snli_ve"] = SNLIVEAccuracy().to(self.device)
        self.val_tasks = [k.removeprefix("val/") for k in getattr(dm, "val_tasks", [])]

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
        if not self.hparams.mlm_on_negatives:
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

    def task_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        task = batch["task"][0]
        if task == "pretrain":
            return self.pretrain_losses(batch)
        if task == "retrieval":
            # Pixel-BERT Sec. 2.5 (ViLT's irtr): softmax over the ITM scores of the positive (first) and the
            # sampled negatives of each image; the CNN runs once per image.
            scores = self.pair_scores(batch["image"], batch["pixel_mask"], batch["texts"])
            target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
            loss = torch.nn.functional.cross_entropy(scores.float(), target)
            return {"loss_rank": loss, "acc_rank": (scores.argmax(1) == 0).float().mean()}
        if task == "vqa":
            logits = self.model.vqa_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
            target = batch["target"]  # the data's vocabulary: the first len(vocab) of the head's outputs
            return {"loss_vqa": vqa_loss(logits[:, : target.shape[1]], target)}
        if task == "nlvr2":
            left = self._cls(batch["image_left"], batch["pixel_mask_left"], batch["text"])
            right = self._cls(batch["image_right"], batch["pixel_mask_right"], batch["text"])
            logits = self.model.nlvr2_head(left, right)
            return {"loss_nlvr2": torch.nn.functional.cross_entropy(logits, batch["label"])}
        if task == "snli_ve":
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
        if self.hparams.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    # -- evaluation --------------------------------------------------------------------------------------
    def _phase(self) -> str | None:
        """The data module's phase of this epoch (``pretrain`` or a task); None without a phased data module."""
        dm = getattr(self.trainer, "datamodule", None)
        return dm.phase(self.current_epoch) if hasattr(dm, "phase") else None

    def _evaluate_now(self, task: str) -> bool:
        """Each task is scored in its own epochs; ITM retrieval, when it is not a task, in pre-training."""
        phase = self._phase()
        if phase is None:
            return True
        if task == "retrieval" and "retrieval" not in self.trainer.datamodule.tasks:
            return phase == "pretrain"
        return phase == task

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        task = batch["task"][0]
        if not self._evaluate_now(task):
            return
        if task == "vqa":
            logits = self.model.vqa_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
            logits = logits[:, : len(self.answers)]
            predictions = [self.answers[i] for i in logits.argmax(-1).tolist()]
            self.metrics["vqa"].update(
                predictions, batch["answers"], batch["index"], batch["answer_type"], batch["question_type"]
            )
        elif task == "retrieval":
            scores = self.itm_scores(batch["image"], batch["pixel_mask"], pretraining=self._phase() == "pretrain")
            self.metrics["retrieval"].update(scores, batch["index"])
        elif task == "nlvr2":
            left = self._cls(batch["image_left"], batch["pixel_mask_left"], batch["text"])
            right = self._cls(batch["image_right"], batch["pixel_mask_right"], batch["text"])
            logits = self.model.nlvr2_head(left, right)
            self.metrics["nlvr2"].update(logits.argmax(-1), batch["label"], batch["identifier"], batch["index"])
        elif task == "snli_ve":
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
        task = batch["task"][0]
        index = [int(i) for i in batch["index"]]
        if task == "vqa":
            logits = self.model.vqa_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
            top = logits[:, : len(self.answers)].float().sigmoid().topk(min(5, len(self.answers)), dim=-1)
            rows = [
                {
                    "index": i,
                    "question_id": int(q),
                    "question": t,
                    "answer": self.answers[int(a[0])],
                    "top5": [[self.answers[int(k)], round(float(v), 4)] for k, v in zip(a, p, strict=True)],
                }
                for i, q, t, a, p in zip(
                    index, batch["question_id"], batch["text"], top.indices, top.values, strict=True
                )
            ]
        elif task == "retrieval":
            pretraining = "retrieval" not in getattr(self.trainer.datamodule, "tasks", ["retrieval"])
            scores = self.itm_scores(batch["image"], batch["pixel_mask"], pretraining=pretraining).float()
            top = scores.topk(min(10, scores.shape[1]), dim=-1)
            rows = [
                {
                    "index": i,
                    "captions": [
                        [self.retrieval_texts[int(k)], round(float(v), 4)] for k, v in zip(ks, vs, strict=True)
                    ],
                }
                for i, ks, vs in zip(index, top.indices, top.values, strict=True)
            ]
        elif task == "nlvr2":
            left = self._cls(batch["image_left"], batch["pixel_mask_left"], batch["text"])
            right = self._cls(batch["image_right"], batch["pixel_mask_right"], batch["text"])
            labels = self.model.nlvr2_head(left, right).argmax(-1).tolist()
            rows = [
                {"index": i, "identifier": d, "sentence": t, "prediction": bool(y)}
                for i, d, t, y in zip(index, batch["identifier"], batch["text"], labels, strict=True)
            ]
        elif task == "snli_ve":
            from vislang.shared.data.vl import SNLI_VE_LABELS

            labels = self.model.snli_ve_head(self._cls(batch["image"], batch["pixel_mask"], batch["text"]))
            rows = [
                {"index": i, "hypothesis": t, "prediction": SNLI_VE_LABELS[int(y)]}
                for i, t, y in zip(index, batch["text"], labels.argmax(-1).tolist(), strict=True)
            ]
        else:
            raise ValueError(f"no prediction for task {task!r}; predict runs on the evaluation splits")
        self._predictions.setdefault(task, []).extend(rows)
        return rows

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
        datasets = getattr(self.trainer.datamodule, "datasets", {})
        paper = type(self).__name__.removesuffix("Module").lower()
        for task in sorted({t for part in gathered for t in part}):
            rows = {row["index"]: row for part in gathered for row in part.get(task, [])}
            lines = [{**_item_images(datasets.get(f"val/{task}"), i), **rows[i]} for i in sorted(rows)]
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
        from vislang.singlestream.data import ImageTransform, _pad_images

        if not self.answers:
            raise RuntimeError("this module has no answer vocabulary: train or load a VQA checkpoint first")
        picture = as_rgb(image)
        was_training = self.training
        self.eval()
        images, mask = _pad_images([ImageTransform(image_size, max_size)(picture)])
        logits = self.model.vqa_head(self._cls(images.to(self.device), mask.to(self.device), [question]))
        self.train(was_training)
        return self.answers[int(logits[0, : len(self.answers)].argmax())]

    # -- optimisation ------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        h = self.hparams
        cnn = [p for p in self.model.encoder.trunk.parameters() if p.requires_grad]
        cnn_ids = {id(p) for p in cnn}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in cnn_ids]
        decay = [p for p in rest if p.ndim >= 2]
        no_decay = [p for p in rest if p.ndim < 2]
        adamw = torch.optim.AdamW(
            [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=h.lr
        )
        if h.cnn_optimizer == "sgd":
            cnn_opt = torch.optim.SGD(cnn, lr=h.cnn_lr, momentum=h.momentum, weight_decay=h.cnn_weight_decay)
        else:
            cnn_opt = torch.optim.AdamW(cnn, lr=h.cnn_lr, weight_decay=h.cnn_weight_decay)
        milestones = sorted(h.lr_milestones or [])

        def factor(step: int) -> float:
            warm = (
                1.0 if step >= h.warmup_steps else h.warmup_start + (1 - h.warmup_start) * step / max(h.warmup_steps, 1)
            )
            passed = sum(self.current_epoch >= m for m in milestones)
            return warm * h.lr_gamma**passed

        optimizers = [adamw, cnn_opt] if cnn else [adamw]
        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]
        return optimizers, schedulers


def _item_images(dataset: Any, index: int) -> dict[str, str]:
    """The image file(s) of evaluation item ``index`` (for the prediction rows)."""
    if dataset is None:
        return {}
    if hasattr(dataset, "examples"):
        example = dataset.examples[index]
        if hasattr(example, "left_image"):
            return {"image_left": str(example.left_image), "image_right": str(example.right_image)}
        return {"image": str(example.image_path)}
    if hasattr(dataset, "images"):
        return {"image": str(dataset.images[index].image_path)}
    return {}


def format_table(scores: dict[str, dict[str, float]], baselines: dict[str, dict[str, Any]]) -> str:
    """A small table: each headline score beside its chance / majority baseline."""
    rows = [("task", "metric", "score", "baseline")]
    if "vqa" in scores:
        base = baselines.get("vqa", {})
        rows.append(
            (
                "VQA",
                "accuracy (official, 2021)",
                f"{scores['vqa']['overall']:.2f}",
                f"{base.get('majority', float('nan')):.2f} (always '{base.get('answer', '?')}')",
            )
        )
        if "per_question_type" in base:
            rows.append(("VQA", "", "", f"{base['per_question_type']:.2f} (question-type prior)"))
        for key in sorted(k for k in scores["vqa"] if k.startswith("answer_type/")):
            rows.append(("VQA", f"  {key.split('/', 1)[1]}", f"{scores['vqa'][key]:.2f}", ""))
    if "retrieval" in scores:
        s = scores["retrieval"]
        rows.append(("retrieval", "image->text R@1 (ITM)", f"{s['tr/R@1']:.2f}", f"{s['tr/chance_R@1']:.2f} (chance)"))
        rows.append(("retrieval", "text->image R@1 (ITM)", f"{s['ir/R@1']:.2f}", f"{s['ir/chance_R@1']:.2f} (chance)"))
        rows.append(("retrieval", "image->text R@5 / R@10", f"{s['tr/R@5']:.1f} / {s['tr/R@10']:.1f}", ""))
        rows.append(("retrieval", "text->image R@5 / R@10", f"{s['ir/R@5']:.1f} / {s['ir/R@10']:.1f}", ""))
    if "nlvr2" in scores:
        rows.append(("NLVR2", "accuracy", f"{scores['nlvr2'].get('accuracy', float('nan')):.2f}", "50.00 (chance)"))
    if "snli_ve" in scores:
        rows.append(("SNLI-VE", "accuracy", f"{scores['snli_ve'].get('accuracy', float('nan')):.2f}", "33.33 (chance)"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
