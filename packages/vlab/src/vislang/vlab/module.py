"""VLABModule: training and evaluation of VLAB for retrieval, captioning and open-ended video QA.

Batches carry raw strings; the module owns both tokenizers (CLIP's BPE for the contrastive text
tower, a BERT WordPiece for the decoder), so a checkpoint and its tokenizers always travel together
and the inference calls (`rank_captions`, `answer`) take plain text.

Training batches arrive as a dict of task → batch (Lightning's CombinedLoader), evaluation loaders
one per task; `vislang.vlab.data.VLABDataModule` builds both.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from vislang.shared.checkpoint import load_state_dict
from vislang.shared.losses import symmetric_info_nce
from vislang.shared.metrics import CaptionMetric, RetrievalMetric, SampleMetric, first_occurrence
from vislang.shared.text import load_tokenizer
from vislang.vlab.model import VLAB, build_vlab, load_clip_state_dict

Task = Literal["retrieval", "caption", "qa"]

__all__ = ["VLABModule"]


class VLABModule(LightningModule):
    """VLAB in Lightning.

    Args:
        preset: model size (`tiny`, `vlab_b32`, `vlab_b16`, `vlab_l14`).
        loss_weights: weight of each task's loss in the sum (default 1 each). The tasks themselves
            are the data module's: `retrieval` (contrastive), `caption` (decoder LM), `qa` (the
            decoder generates the answer after the question, scored by exact match).
        decoder_tokenizer: local HF-format directory or hub name of the decoder's WordPiece
            tokenizer (`bert-base-uncased` for the paper-size presets).
        clip_weights: open_clip CLIP checkpoint (.safetensors/.pt/.bin) loaded into both streams
            and the text tower; None keeps random initialisation.
        init_weights: a VLAB checkpoint (e.g. after pre-training) to fine-tune from. Loaded into the
            model, hyper-parameters stay the config's (unlike `--ckpt_path`, which resumes a run).
        freeze: parameter-name prefixes to keep frozen, e.g. `[clip.visual]` for a frozen image stream.
        lr: learning rate of everything that is not CLIP (adapters, blending, decoder).
        clip_lr: learning rate of the CLIP towers (both streams and text), far lower so CLIP's
            features are adapted rather than overwritten (CLIP4Clip, VALOR).
        weight_decay: AdamW weight decay (not applied to biases, norms, embeddings and gates).
        warmup_ratio: linear warm-up over this fraction of the steps, then cosine decay to 0.
        gradient_checkpointing: recompute the ViT blocks' activations in the backward pass.
        dual_softmax: re-weight retrieval similarities by dual softmax at evaluation (a
            transductive trick; report it separately from plain numbers).
        max_answer_tokens: generation length for QA.
        max_caption_tokens: generation length for captioning, and truncation of training captions.
        results_dir: where `test` writes its results JSON; None = the logger's directory.
        compile: `torch.compile` the model (in place, so checkpoint keys stay unchanged).
    """

    def __init__(
        self,
        preset: str = "vlab_b16",
        loss_weights: dict[str, float] | None = None,
        decoder_tokenizer: str = "bert-base-uncased",
        clip_weights: str | None = None,
        init_weights: str | None = None,
        freeze: list[str] | None = None,
        lr: float = 1e-4,
        clip_lr: float = 1e-6,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        gradient_checkpointing: bool = False,
        dual_softmax: bool = False,
        max_answer_tokens: int = 8,
        max_caption_tokens: int = 24,
        results_dir: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        unknown = set(loss_weights or {}) - {"retrieval", "caption", "qa"}
        if unknown:
            raise ValueError(f"loss_weights: unknown tasks {sorted(unknown)}; choose from retrieval, caption, qa")
        self.loss_weights = {"retrieval": 1.0, "caption": 1.0, "qa": 1.0, **(loss_weights or {})}

        self.tokenizer = load_tokenizer(decoder_tokenizer)
        self.model: VLAB = build_vlab(preset, len(self.tokenizer), self.tokenizer.pad_token_id)
        self.clip_tokenizer = open_clip.get_tokenizer(
            self.model.config.clip_arch, context_length=self.model.clip.context_length
        )
        if clip_weights:
            missing, unexpected = load_clip_state_dict(self.model, load_state_dict(clip_weights))
            if unexpected:
                raise ValueError(f"{clip_weights}: not an open_clip CLIP checkpoint (unexpected keys {unexpected[:5]})")
        if init_weights:
            state = load_state_dict(init_weights)
            state = {k.removeprefix("model."): v for k, v in state.items()}
            self.model.load_state_dict(state)
        for name, parameter in self.model.named_parameters():
            if any(name.startswith(prefix) for prefix in freeze or []):
                parameter.requires_grad_(False)
        if gradient_checkpointing:
            self.model.clip.visual.set_grad_checkpointing(True)
            self.model.video_visual.set_grad_checkpointing(True)
        if compile:
            self.model.compile()
        self.retrieval_metric = RetrievalMetric()
        self.qa_metric = ExactMatchAccuracy()
        self.caption_metric = CaptionMetric()
        self.last_scores: dict[str, dict[str, float]] = {}

    # ---- text helpers -----------------------------------------------------------------------

    def _clip_ids(self, texts: list[str]) -> Tensor:
        return self.clip_tokenizer(texts).to(self.device)

    def _decoder_batch(self, prompts: list[str], targets: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """`[CLS] prompt [SEP] target [SEP]` with labels only on the target (and its end token)."""
        encoded = self.tokenizer(prompts, targets, padding=True, truncation=True,
                                 max_length=self.model.decoder.config.max_position_embeddings,
                                 return_tensors="pt", return_token_type_ids=True)  # fmt: skip
        labels = encoded["input_ids"].clone()
        labels[encoded["token_type_ids"] == 0] = -100  # prompt tokens: conditioning, not predicted
        labels[encoded["attention_mask"] == 0] = -100
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device), labels.to(self.device)

    def _prompt_batch(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded `[CLS] prompt [SEP]` so generation continues every row at the same position."""
        self.tokenizer.padding_side = "left"
        try:
            encoded = self.tokenizer(prompts, padding=True, return_tensors="pt")
        finally:
            self.tokenizer.padding_side = "right"
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)

    def _caption_prompt(self, count: int) -> list[str]:
        return [""] * count

    # ---- training ---------------------------------------------------------------------------

    def _task_loss(self, task: str, batch: dict[str, Any]) -> Tensor:
        video_embedding, tokens = self.model.encode_video(batch["video"])
        if task == "retrieval":
            text_embedding = self.model.encode_text(self._clip_ids(batch["caption"]))
            # symmetric InfoNCE over the global batch (keys gathered from every process), CLIP §2.3
            return symmetric_info_nce(video_embedding, text_embedding, temperature=1.0 / self.model.logit_scale())
        memory = self.model.decoder_memory(tokens)
        if task == "caption":
            ids, mask, labels = self._decoder_batch(self._caption_prompt(len(batch["caption"])), batch["caption"])
        else:
            ids, mask, labels = self._decoder_batch(batch["question"], batch["answer"])
        return self.model.decoder_loss(memory, ids, mask, labels)

    def training_step(self, batch: dict[str, dict[str, Any]], batch_idx: int) -> Tensor:
        total = torch.zeros((), device=self.device)
        for task, task_batch in batch.items():
            if task_batch is None:  # a shorter task loader that has run out in this epoch
                continue
            loss = self._task_loss(task, task_batch)
            self.log(f"train/{task}_loss", loss, batch_size=len(task_batch["video"]))
            total = total + self.loss_weights[task] * loss
        self.log("train/loss", total, prog_bar=True)
        self.log("train/logit_scale", self.model.logit_scale(), on_step=True)
        return total

    # ---- evaluation -------------------------------------------------------------------------

    def _eval_task(self, dataloader_idx: int) -> str:
        return self.trainer.datamodule.eval_tasks[dataloader_idx]

    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        task = self._eval_task(dataloader_idx)
        video_embedding, tokens = self.model.encode_video(batch["video"])
        index = batch["index"]
        if task == "retrieval":
            # an evaluation item is a video with all its captions; each caption keeps its video's key
            captions = [c for caps in batch["captions"] for c in caps]
            owner = torch.tensor([int(i) for i, caps in zip(index, batch["captions"], strict=True) for _ in caps])
            caption_number = torch.tensor([j for caps in batch["captions"] for j in range(len(caps))])
            self.retrieval_metric.update(
                self.model.encode_text(self._clip_ids(captions)).float(),
                text_key=owner,
                index=owner * _MAX_CAPTIONS_PER_VIDEO + caption_number,
                visual_emb=video_embedding.float(),
                visual_key=index,
            )
            return
        prompts = batch["question"] if task == "qa" else self._caption_prompt(len(batch["video"]))
        texts = self._generate(tokens, prompts, task)
        if task == "qa":
            self.qa_metric.update(texts, batch["answer"], index)
        else:
            self.caption_metric.update(texts, batch["captions"], index)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.last_scores = self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        results = self._finish_evaluation("test")
        if self.trainer.is_global_zero and results:
            directory = Path(self.hparams.results_dir or self.trainer.log_dir or ".")
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / "vlab_test_results.json"
            path.write_text(json.dumps(results, indent=2))
            print(format_scores(results))
            print(f"results written to {path}")

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and getattr(self, "last_scores", None):
            print("\nheld-out scores after training (validation split):")
            print(format_scores(self.last_scores))

    def _finish_evaluation(self, split: str) -> dict[str, dict[str, float]]:
        """Compute each task's metrics over the whole split (every sample once, under DDP too) and log them."""
        results: dict[str, dict[str, float]] = {}
        for task in self.trainer.datamodule.eval_tasks:
            metric = {"retrieval": self.retrieval_metric, "qa": self.qa_metric, "caption": self.caption_metric}[task]
            if not metric.update_called:
                continue
            if task == "retrieval" and self.hparams.dual_softmax:
                metric.dual_softmax_temperature = float(1.0 / self.model.logit_scale())
            scores = metric.compute()
            if task == "retrieval":  # a random ranking finds the one right video of N with probability 1/N
                scores["chance/R@1"] = 100.0 / first_occurrence(metric._state("visual_key").long()).numel()
            metric.reset()
            results[task] = scores
            self.log_dict({f"{split}/{task}/{name}": value for name, value in scores.items()}, sync_dist=False)
        return results

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per item: the clip embedding (retrieval) or the generated text (qa, caption)."""
        task = self._eval_task(dataloader_idx)
        video_embedding, tokens = self.model.encode_video(batch["video"])
        if task == "retrieval":
            return [
                {"index": int(i), "video_embedding": e.float().cpu()}
                for i, e in zip(batch["index"], video_embedding, strict=True)
            ]
        prompts = batch["question"] if task == "qa" else self._caption_prompt(len(batch["video"]))
        texts = self._generate(tokens, prompts, task)
        return [{"index": int(i), "prediction": t} for i, t in zip(batch["index"], texts, strict=True)]

    # ---- inference from Python ----------------------------------------------------------------

    @torch.no_grad()
    def rank_captions(self, video: str | Path, captions: list[str], num_frames: int = 8) -> list[tuple[str, float]]:
        """Rank `captions` for one video file, best first, with their cosine similarities."""
        clip = self._load_video(video, num_frames)
        video_embedding, _ = self.model.encode_video(clip)
        scores = (self.model.encode_text(self._clip_ids(captions)) @ video_embedding[0]).tolist()
        return sorted(zip(captions, scores, strict=True), key=lambda pair: -pair[1])

    @torch.no_grad()
    def answer(self, video: str | Path, question: str, num_frames: int = 8) -> str:
        """Answer an open-ended question about one video file (greedy decoding)."""
        _, tokens = self.model.encode_video(self._load_video(video, num_frames))
        return self._generate(tokens, [question], "qa")[0]

    @torch.no_grad()
    def caption(self, video: str | Path, num_frames: int = 8) -> str:
        """Describe one video file (greedy decoding)."""
        _, tokens = self.model.encode_video(self._load_video(video, num_frames))
        return self._generate(tokens, self._caption_prompt(1), "caption")[0]

    def _load_video(self, video: str | Path, num_frames: int) -> Tensor:
        from vislang.vlab.data import load_clip

        self.eval()
        image_size = self.model.clip.visual.image_size
        size = image_size[0] if isinstance(image_size, tuple) else image_size
        return load_clip(video, num_frames, size).unsqueeze(0).to(self.device)

    def _generate(self, tokens: Tensor, prompts: list[str], task: str) -> list[str]:
        memory = self.model.decoder_memory(tokens)
        ids, mask = self._prompt_batch(prompts)
        limit = self.hparams.max_answer_tokens if task == "qa" else self.hparams.max_caption_tokens
        generated = self.model.generate(memory, ids, mask, limit, self.tokenizer.sep_token_id)
        return [t.strip() for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    # ---- optimisation -----------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        groups: dict[tuple[bool, bool], list[Tensor]] = {}
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            is_clip = name.startswith(("clip.", "video_visual.")) and ".temporal_adapter." not in name
            no_decay = parameter.ndim < 2 or "embedding" in name or name.endswith("_gate")
            groups.setdefault((is_clip, no_decay), []).append(parameter)
        param_groups = [
            {
                "params": params,
                "lr": self.hparams.clip_lr if is_clip else self.hparams.lr,
                "weight_decay": 0.0 if no_decay else self.hparams.weight_decay,
            }
            for (is_clip, no_decay), params in groups.items()
        ]
        # AdamW with VALOR's betas (0.9, 0.98)
        optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.98))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * self.hparams.warmup_ratio)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


_MAX_CAPTIONS_PER_VIDEO = 10_000  # caption ids are video index x this + caption number


def _normalise_answer(answer: str) -> str:
    # exact match after the decoder tokenizer's own normalisation (lower case, single spaces)
    return " ".join(answer.lower().split())


class ExactMatchAccuracy(SampleMetric):
    """Open-ended QA accuracy: generated answer == ground truth (VALOR/COSA's `validate_qa`), in percent,
    beside the majority-answer baseline of the same questions (the chance level of open-ended QA).
    Exact under DDP: samples are kept once by dataset index."""

    def __init__(self) -> None:
        super().__init__()
        self._add_string_state("prediction")
        self._add_string_state("answer")

    def update(self, predictions: list[str], answers: list[str], index: Tensor) -> None:
        self._append_index(index, len(predictions))
        self._append_strings("prediction", [_normalise_answer(p) for p in predictions])
        self._append_strings("answer", [_normalise_answer(a) for a in answers])

    def compute(self) -> dict[str, float]:
        keep = self._kept()
        predictions = self._gathered_strings("prediction", keep)
        answers = self._gathered_strings("answer", keep)
        correct = sum(p == a for p, a in zip(predictions, answers, strict=True))
        majority = Counter(answers).most_common(1)[0][1]
        return {"accuracy": 100.0 * correct / len(answers), "chance/majority_answer": 100.0 * majority / len(answers),
                "count": float(len(answers))}  # fmt: skip


def format_scores(results: dict[str, dict[str, float]]) -> str:
    """A small table: one block per task, each score beside its chance level where one exists."""
    lines = []
    for task, scores in results.items():
        lines.append(f"[{task}]")
        lines.extend(f"  {name:>24}: {value:8.2f}" for name, value in scores.items())
    return "\n".join(lines)
