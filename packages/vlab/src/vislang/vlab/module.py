"""VLABModule: training and evaluation of VLAB for retrieval, captioning and open-ended video QA.

Batches carry raw strings; the module owns both tokenizers (CLIP's BPE for the contrastive text
tower, a BERT WordPiece for the decoder), so a checkpoint and its tokenizers always travel together
and the inference calls (`rank_captions`, `answer`) take plain text.

Training batches arrive as a dict of task → batch (Lightning's CombinedLoader), evaluation loaders
one per task; the module reads the tasks from its data module through `vislang.vlab.data.VideoTextData`,
which `vislang.vlab.data.VLABDataModule` implements.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from vislang.shared.checkpoint import StateDictMismatchError, load_into, load_state_dict, strip_prefix
from vislang.shared.losses import symmetric_info_nce
from vislang.shared.metrics import CaptionMetric, RetrievalMetric, SampleMetric
from vislang.shared.predictions import gather_objects, write_json_lines
from vislang.shared.preflight import Missing, PreflightContext, check_path, check_tokenizer
from vislang.shared.schedules import step_schedule, warmup_cosine
from vislang.shared.text import load_tokenizer
from vislang.vlab.data import TASKS, Task, VideoTextData, load_clip
from vislang.vlab.metrics import ExactMatchAccuracy, format_scores, rerank_top_k
from vislang.vlab.model import VLAB, Preset, build_vlab, load_bert_decoder, load_clip_state_dict

__all__ = ["VLABModule"]

_DECODER_PARTS = ("decoder.", "visual_to_decoder.", "itm_head.")
# the image stream feeds the blending with its tokens only: CLIP's own pooling head is unused
_IMAGE_STREAM_HEAD = (
    "clip.visual.ln_post",
    "clip.visual.proj",
    "clip.visual.head.",
    "clip.visual.trunk.norm.",
    "clip.visual.trunk.fc_norm",
    "clip.visual.trunk.head",
)
# CLIP's text tower, temperature and the video stream's output projection serve only retrieval
_RETRIEVAL_PARTS = (
    "clip.token_embedding",
    "clip.positional_embedding",
    "clip.transformer.",
    "clip.ln_final",
    "clip.text_projection",
    "clip.logit_scale",
    "video_visual.proj",
    "video_visual.head.",
)
_MAX_CAPTIONS_PER_VIDEO = 10_000  # caption ids are video index x this + caption number


class VLABModule(LightningModule):
    """VLAB in Lightning.

    Args:
        preset: model size (`tiny`, `vlab_b32`, `vlab_b16`, `vlab_l14`; EVA-CLIP: `vlab_eva02_b16`,
            `vlab_eva02_l14`, `vlab_eva01_g14`).
        loss_weights: weight of each task's loss in the sum (default 1 each). The tasks themselves
            are the data module's: `retrieval` (contrastive), `caption` (decoder LM), `qa` (the
            decoder generates the answer after the question, scored by exact match).
        decoder_tokenizer: local HF-format directory or hub name of the decoder's WordPiece
            tokenizer (`bert-base-uncased` for the paper-size presets); None builds no decoder and
            no ITM head (retrieval only: nothing to load or train for them).
        decoder_weights: Hugging Face BERT weights (a `bert-base-uncased`-style directory or weights
            file) to initialise the decoder from, as VALOR/COSA do; cross-attention starts new.
            None starts the decoder from random weights.
        clip_weights: open_clip CLIP checkpoint (.safetensors/.pt/.bin) loaded into both streams
            and the text tower; None keeps random initialisation.
        clip_tag: open_clip pretrained tag of `clip_weights` (`openai`, `laion2b_s34b_b88k`, ...): the
            towers are built with open_clip's settings for that tag (QuickGELU for `openai`). None
            builds the architecture's plain config (right for weights trained with GELU).
        init_weights: a VLAB checkpoint (e.g. after pre-training) to fine-tune from. Loaded into the
            model, hyper-parameters stay the config's (unlike `--ckpt_path`, which resumes a run).
        freeze: parameter-name prefixes to keep frozen, e.g. `[clip.text_projection]`.
        freeze_image_stream: keep the image stream (CLIP's per-frame ViT that the blending reads)
            frozen at its pretrained weights; False trains it at `clip_lr` (an assumption: the
            abstract does not say).
        lr: learning rate of everything that is not CLIP (adapters, blending, decoder).
        clip_lr: learning rate of the CLIP towers (both streams and text), far lower so CLIP's
            features are adapted rather than overwritten (CLIP4Clip, VALOR).
        weight_decay: AdamW weight decay (not applied to biases, norms, embeddings and gates).
        warmup_ratio: linear warm-up over this fraction of the steps, then cosine decay to 0.
        gradient_checkpointing: recompute the ViT blocks' activations in the backward pass.
        dual_softmax: re-weight retrieval similarities by dual softmax at evaluation (a
            transductive trick; report it separately from plain numbers).
        itm_weight: weight of the video-text matching loss added to every retrieval batch (ALBEF
            §3.2: the batch's pairs plus one softmax-sampled hard negative text per video and video
            per text); 0 = no ITM training.
        video_to_text: how video-to-text retrieval ranks when a video has several captions:
            `captions` ranks every caption and scores the best-ranked of the video's own (ALBEF);
            `groups` ranks videos' caption groups, each scored by its best caption (CLIP4Clip's
            multi-sentence evaluation). Identical with one caption per video (MSRVTT 1k-A).
        itm_rerank_k: at evaluation, re-score each text's top-k videos (and each video's top-k texts)
            of the contrastive ranking with the ITM head (UMT's `k_test`); 0 = off. Keeps every
            evaluation video's decoder memory, T·(1+N)·H numbers per video, on the CPU until the
            epoch ends (MSRVTT 1k-A, ViT-B/16, 8 frames: about 4.8 GB in fp32); under DDP every rank
            gathers all of it (`all_gather_object`) and re-ranks the whole matrix itself.
        max_answer_tokens: generation length for QA.
        max_caption_tokens: generation length for captioning, and truncation of training captions.
        results_dir: where `test` writes its results JSON; None = the logger's directory.
        compile: `torch.compile` the model (in place, so checkpoint keys stay unchanged).
    """

    def __init__(
        self,
        preset: Preset = "vlab_b16",
        loss_weights: dict[Task, float] | None = None,
        decoder_tokenizer: str | None = "bert-base-uncased",
        decoder_weights: str | None = None,
        clip_weights: str | None = None,
        clip_tag: str | None = None,
        init_weights: str | None = None,
        freeze: list[str] | None = None,
        freeze_image_stream: bool = False,
        lr: float = 1e-4,
        clip_lr: float = 1e-6,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        gradient_checkpointing: bool = False,
        dual_softmax: bool = False,
        video_to_text: Literal["captions", "groups"] = "captions",
        itm_weight: float = 0.0,
        itm_rerank_k: int = 0,
        max_answer_tokens: int = 8,
        max_caption_tokens: int = 24,
        results_dir: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_arguments(loss_weights, decoder_tokenizer, decoder_weights, itm_weight, itm_rerank_k)
        # the weight of each loss in the sum: one per task, and ITM's on retrieval batches
        self.loss_weights: dict[str, float] = {**dict.fromkeys(TASKS, 1.0), **(loss_weights or {}), "itm": itm_weight}
        self.tokenizer = load_tokenizer(decoder_tokenizer) if decoder_tokenizer is not None else None
        self.model: VLAB = build_vlab(
            preset,
            len(self.tokenizer) if self.tokenizer is not None else None,
            self.tokenizer.pad_token_id if self.tokenizer is not None else 0,
            clip_tag=clip_tag,
        )
        self.clip_tokenizer = open_clip.get_tokenizer(
            self.model.config.clip_arch, context_length=self.model.clip.context_length
        )
        self._load_initial_weights(clip_weights, decoder_weights, init_weights)
        self._freeze([*(freeze or []), *(["clip.visual."] if freeze_image_stream else [])])
        if gradient_checkpointing:
            self.model.clip.visual.set_grad_checkpointing(True)
            self.model.video_visual.set_grad_checkpointing(True)
        if compile:
            self.model.compile()
        self.retrieval_metric = RetrievalMetric(video_to_text=video_to_text)
        self.qa_metric = ExactMatchAccuracy()
        self.caption_metric = CaptionMetric()
        self.last_scores: dict[str, dict[str, float]] = {}
        # ITM re-ranking keeps, per evaluation epoch, each video's decoder memory and each caption
        self._rerank_memory: dict[int, Tensor] = {}
        self._rerank_text: dict[int, str] = {}

    @classmethod
    def preflight(cls, init_args: dict[str, Any], context: PreflightContext) -> list[Missing]:
        """What the model needs before it is built: the weights it names, and a decoder tokenizer when the
        data module's tasks (or ITM) use the decoder; a retrieval-only config needs none."""
        fix = "`python -m vislang.vlab.prepare weights` fetches them into pretrained/ (or point the key at your copy)"
        tasks = set(context.data.get("tasks") or ["retrieval"])
        itm = init_args.get("itm_weight", 0) > 0 or init_args.get("itm_rerank_k", 0) > 0
        found: list[Missing] = []
        if init_args.get("decoder_tokenizer") is None and (tasks & {"caption", "qa"} or itm):
            found.append(
                Missing(
                    "model.decoder_tokenizer",
                    f"null, but the tasks {sorted(tasks)} (or ITM) need the decoder",
                    f"set it to pretrained/bert-base-uncased; {fix}",
                )
            )
        found += check_tokenizer("model.decoder_tokenizer", init_args.get("decoder_tokenizer"), fix)
        for key in ("clip_weights", "decoder_weights", "init_weights"):
            found += check_path(f"model.{key}", init_args.get(key), fix)
        return found

    # ---- initial weights and frozen parts ------------------------------------------------------

    def _load_initial_weights(
        self, clip_weights: str | None, decoder_weights: str | None, init_weights: str | None
    ) -> None:
        """CLIP into both streams and the text tower, BERT into the decoder, then a whole VLAB checkpoint."""
        if clip_weights:
            _, unexpected = load_clip_state_dict(self.model, load_state_dict(clip_weights))
            if unexpected:
                raise ValueError(f"{clip_weights}: not an open_clip CLIP checkpoint (unexpected keys {unexpected[:5]})")
        if decoder_weights:
            load_bert_decoder(self.model, decoder_weights)
        if init_weights:
            self._load_vlab_checkpoint(init_weights)

    def _load_vlab_checkpoint(self, path: str) -> None:
        """`init_weights`: a VLABModule checkpoint (keys `model.*`) or the bare model's weights."""
        state = strip_prefix(load_state_dict(path), "model.")
        if self.model.decoder is None:  # a retrieval-only model fine-tuned from a full one
            state = {k: v for k, v in state.items() if not k.startswith(_DECODER_PARTS)}
        try:
            # a checkpoint from before the ITM head (or pre-trained without it) may lack only that
            load_into(self.model, state, strict=True, allowed_missing=[r"itm_head\..*"])
        except StateDictMismatchError as err:
            raise ValueError(f"{path}: not a VLAB checkpoint of this preset ({err.report})") from None

    def _freeze(self, prefixes: list[str]) -> None:
        for name, parameter in self.model.named_parameters():
            if name.startswith(tuple(prefixes)):
                parameter.requires_grad_(False)

    def setup(self, stage: str) -> None:
        """Freeze the parts the data module's tasks never use, before DDP wraps the model.

        DDP fails on trainable parameters that get no gradient (a retrieval-only run never touches the
        decoder; a QA-only run never touches the text tower), and such parameters would only
        carry weight decay. What stays trainable is exactly what the losses reach, which a test checks.
        """
        if stage != "fit" or self.trainer is None or self.trainer.datamodule is None:
            return
        tasks = set(self._data().tasks)
        if self.model.decoder is None and tasks & {"caption", "qa"}:
            raise ValueError(
                f"data.tasks {sorted(tasks)} need the generative decoder, but model.decoder_tokenizer is null; "
                "set it (e.g. bert-base-uncased)"
            )
        self._freeze(_unused_parameters(tasks, itm=self.hparams.itm_weight > 0 and "retrieval" in tasks))

    def _data(self) -> VideoTextData:
        """The trainer's data module, read through the contract VLAB needs (tasks, evaluation order, items)."""
        data = self.trainer.datamodule
        if not isinstance(data, VideoTextData):
            raise TypeError(
                f"VLABModule reads tasks, eval_tasks and dataset_items from its data module "
                f"(vislang.vlab.data.VideoTextData); {type(data).__name__} has not all of them"
            )
        return data

    # ---- text helpers -----------------------------------------------------------------------

    def _clip_ids(self, texts: list[str]) -> Tensor:
        return self.clip_tokenizer(texts).to(self.device)

    def _decoder_batch(self, prompts: list[str], targets: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """`[CLS] prompt [SEP] target [SEP]` with labels only on the target (and its end token)."""
        encoded = self.tokenizer(
            prompts,
            targets,
            padding=True,
            truncation=True,
            max_length=self.model.decoder.config.max_position_embeddings,
            return_tensors="pt",
            return_token_type_ids=True,
        )
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

    def _itm_text(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Right-padded `[CLS] caption [SEP]` for the ITM head, which reads the last non-pad token."""
        encoded = self.tokenizer(
            captions,
            padding=True,
            truncation=True,
            max_length=self.model.decoder.config.max_position_embeddings,
            return_tensors="pt",
        )
        return encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)

    # ---- training ---------------------------------------------------------------------------

    def _task_losses(self, task: Task, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The task's loss, and on retrieval batches also `itm` when `itm_weight` > 0."""
        video_embedding, tokens = self.model.encode_video(batch["video"])
        if task == "retrieval":
            return self._retrieval_losses(batch["caption"], video_embedding, tokens)
        memory = self.model.decoder_memory(tokens)
        if task == "caption":
            ids, mask, labels = self._decoder_batch(self._caption_prompt(len(batch["caption"])), batch["caption"])
        else:
            ids, mask, labels = self._decoder_batch(batch["question"], batch["answer"])
        return {task: self.model.decoder_loss(memory, ids, mask, labels)}

    def _retrieval_losses(self, captions: list[str], video_embedding: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        text_embedding = self.model.encode_text(self._clip_ids(captions))
        # symmetric InfoNCE over the global batch (keys gathered from every process), CLIP §2.3
        scale = self.model.logit_scale()
        losses = {"retrieval": symmetric_info_nce(video_embedding, text_embedding, temperature=1.0 / scale)}
        if self.hparams.itm_weight > 0 and len(captions) > 1:
            # ALBEF §3.2: hard negatives drawn from this process's batch similarities; a text equal
            # to the positive caption is never a negative
            same = torch.tensor([[a == b for b in captions] for a in captions], device=self.device)
            ids, mask = self._itm_text(captions)
            similarity = scale * video_embedding @ text_embedding.t()
            losses["itm"] = self.model.itm_loss(self.model.decoder_memory(tokens), ids, mask, similarity, same)
        return losses

    def training_step(self, batch: dict[Task, dict[str, Any] | None], batch_idx: int) -> Tensor:
        total = torch.zeros((), device=self.device)
        for task, task_batch in batch.items():
            if task_batch is None:  # a shorter task loader that has run out in this epoch
                continue
            for name, loss in self._task_losses(task, task_batch).items():
                self.log(f"train/{name}_loss", loss, batch_size=len(task_batch["video"]))
                total = total + self.loss_weights[name] * loss
        self.log("train/loss", total, prog_bar=True)
        self.log("train/logit_scale", self.model.logit_scale(), on_step=True)
        return total

    # ---- evaluation -------------------------------------------------------------------------

    def _eval_task(self, dataloader_idx: int) -> Task:
        return self._data().eval_tasks[dataloader_idx]

    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        task = self._eval_task(dataloader_idx)
        video_embedding, tokens = self.model.encode_video(batch["video"])
        if task == "retrieval":
            self._update_retrieval(batch, video_embedding, tokens)
            return
        prompts = batch["question"] if task == "qa" else self._caption_prompt(len(batch["video"]))
        texts = self._generate(tokens, prompts, task)
        if task == "qa":
            self.qa_metric.update(texts, batch["answer"], batch["index"])
        else:
            self.caption_metric.update(texts, batch["captions"], batch["index"])

    def _update_retrieval(self, batch: dict[str, Any], video_embedding: Tensor, tokens: Tensor) -> None:
        """An evaluation item is a video with all its captions; each caption keeps its video's key."""
        index = batch["index"]
        captions = [c for caps in batch["captions"] for c in caps]
        owner = torch.tensor([int(i) for i, caps in zip(index, batch["captions"], strict=True) for _ in caps])
        caption_number = torch.tensor([j for caps in batch["captions"] for j in range(len(caps))])
        text_index = owner * _MAX_CAPTIONS_PER_VIDEO + caption_number
        self.retrieval_metric.update(
            self.model.encode_text(self._clip_ids(captions)).float(),
            text_key=owner,
            index=text_index,
            visual_emb=video_embedding.float(),
            visual_key=index,
        )
        if self.hparams.itm_rerank_k > 0:  # kept for the ITM re-ranking at the epoch's end
            memory = self.model.decoder_memory(tokens).float().cpu()
            self._rerank_memory.update({int(key): m for key, m in zip(index, memory, strict=True)})
            self._rerank_text.update(dict(zip(text_index.tolist(), captions, strict=True)))

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

    def _finish_evaluation(self, split: Literal["val", "test"]) -> dict[str, dict[str, float]]:
        """Compute each task's metrics over the whole split (every sample once, under DDP too) and log them."""
        metrics: dict[Task, SampleMetric] = {
            "retrieval": self.retrieval_metric,
            "qa": self.qa_metric,
            "caption": self.caption_metric,
        }
        results: dict[str, dict[str, float]] = {}
        for task in self._data().eval_tasks:
            metric = metrics[task]
            if not metric.update_called:
                continue
            scores = self._retrieval_scores() if task == "retrieval" else metric.compute()
            metric.reset()
            results[task] = scores
            # every rank holds the same, already gathered scores: sync_dist averages identical values
            self.log_dict({f"{split}/{task}/{name}": value for name, value in scores.items()}, sync_dist=True)
        return results

    def _retrieval_scores(self) -> dict[str, float]:
        """Both directions' recalls: contrastive (optionally dual-softmaxed), or ITM re-ranked."""
        if self.hparams.dual_softmax:
            self.retrieval_metric.dual_softmax_temperature = float(1.0 / self.model.logit_scale())
        rerank = self.hparams.itm_rerank_k > 0
        scores = self._reranked_retrieval_scores() if rerank else self.retrieval_metric.compute()
        # a random ranking finds the one right video of N with probability 1/N
        scores["chance/R@1"] = 100.0 / scores["num_visual"]
        return scores

    @torch.no_grad()
    def _reranked_retrieval_scores(self) -> dict[str, float]:
        """`RetrievalMetric`'s scores with each direction's contrastive top-k re-scored by ITM (UMT's `k_test`)."""
        similarities = self.retrieval_metric.similarities()  # every rank's embeddings, as `compute` sees them
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank gathers every video's memory and caption and re-ranks the whole matrix itself
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (self._rerank_memory, self._rerank_text))
            for memory, texts in gathered:
                self._rerank_memory.update(memory)
                self._rerank_text.update(texts)
        text_index, video_key = similarities.text_index.tolist(), similarities.visual_key.tolist()
        k = self.hparams.itm_rerank_k

        def t2v_scores(rows: Tensor, cols: Tensor) -> Tensor:
            return self._itm_pair_scores([text_index[r] for r in rows.tolist()], [video_key[c] for c in cols.tolist()])

        def v2t_scores(rows: Tensor, cols: Tensor) -> Tensor:
            return self._itm_pair_scores([text_index[c] for c in cols.tolist()], [video_key[r] for r in rows.tolist()])

        reranked = replace(
            similarities,
            text_to_visual=rerank_top_k(similarities.text_to_visual, k, t2v_scores),
            visual_to_text=rerank_top_k(similarities.visual_to_text.contiguous(), k, v2t_scores),
        )
        self._rerank_memory, self._rerank_text = {}, {}
        return self.retrieval_metric.score(reranked)

    @torch.no_grad()
    def _itm_pair_scores(self, text_indices: list[int], video_keys: list[int], batch_size: int = 64) -> Tensor:
        """ITM log-odds of match, log p(match) − log p(no match), of each (text, video) pair kept for re-ranking."""
        scores = []
        for start in range(0, len(text_indices), batch_size):
            texts = [self._rerank_text[i] for i in text_indices[start : start + batch_size]]
            keys = video_keys[start : start + batch_size]
            memory = torch.stack([self._rerank_memory[key] for key in keys]).to(self.device)
            ids, mask = self._itm_text(texts)
            logits = self.model.itm_logits(memory.to(self.model.visual_to_decoder.weight.dtype), ids, mask).float()
            scores.append((logits[:, 1] - logits[:, 0]).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per item: the clip and caption embeddings (retrieval) or the generated text (qa, caption).

        The items are also kept, so that `on_predict_epoch_end` writes them as JSON lines.
        """
        task = self._eval_task(dataloader_idx)
        video_embedding, tokens = self.model.encode_video(batch["video"])
        if task == "retrieval":
            rows = [
                {
                    "index": int(i),
                    "video_embedding": e.float().cpu(),
                    "captions": caps,
                    "caption_embeddings": self.model.encode_text(self._clip_ids(caps)).float().cpu(),
                }
                for i, e, caps in zip(batch["index"], video_embedding, batch["captions"], strict=True)
            ]
        else:
            prompts = batch["question"] if task == "qa" else self._caption_prompt(len(batch["video"]))
            texts = self._generate(tokens, prompts, task)
            rows = [{"index": int(i), "prediction": t} for i, t in zip(batch["index"], texts, strict=True)]
            for position, row in enumerate(rows):
                if task == "qa":
                    row.update(question=batch["question"][position], answer=batch["answer"][position])
                else:
                    row["captions"] = batch["captions"][position]
        self._predictions.setdefault(task, []).extend(rows)
        return rows

    def on_predict_epoch_start(self) -> None:
        self._predictions: dict[Task, list[dict[str, Any]]] = {}

    def on_predict_epoch_end(self) -> None:
        """Write `vlab_predictions_<task>.jsonl` (in `results_dir`, or the logger's directory), replacing any
        earlier file: answers and captions per video; for retrieval, each caption's ranking of the videos
        (top 10, with cosine scores) and each video's ranking of the captions. Every item once under DDP."""
        gathered = gather_objects(self._predictions)
        if not self.trainer.is_global_zero:
            return
        directory = Path(self.hparams.results_dir or self.trainer.log_dir or ".")
        directory.mkdir(parents=True, exist_ok=True)
        for task in self._data().eval_tasks:
            rows = {row["index"]: row for part in gathered for row in part.get(task, [])}
            items = self._data().dataset_items(task, "test")
            ordered = [rows[index] for index in sorted(rows)]
            lines = (
                _retrieval_rankings(ordered, items)
                if task == "retrieval"
                else [
                    {"video": str(items[row["index"]].video), **{k: v for k, v in row.items() if k != "index"}}
                    for row in ordered
                ]
            )
            path = write_json_lines(directory / f"vlab_predictions_{task}.jsonl", lines)  # replaced per run
            print(f"{len(lines)} {task} predictions written to {path}")

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
        self.eval()
        image_size = self.model.clip.visual.image_size
        size = image_size[0] if isinstance(image_size, tuple) else image_size
        return load_clip(video, num_frames, size).unsqueeze(0).to(self.device)

    def _generate(self, tokens: Tensor, prompts: list[str], task: Task) -> list[str]:
        if self.model.decoder is None:
            raise ValueError(
                "this VLAB was built for retrieval only (decoder_tokenizer: null): it has no decoder "
                "to generate captions or answers"
            )
        memory = self.model.decoder_memory(tokens)
        ids, mask = self._prompt_batch(prompts)
        limit = self.hparams.max_answer_tokens if task == "qa" else self.hparams.max_caption_tokens
        generated = self.model.generate(memory, ids, mask, limit, self.tokenizer.sep_token_id)
        return [t.strip() for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    # ---- optimisation -----------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        # AdamW with VALOR's betas (0.9, 0.98); linear warm-up over `warmup_ratio` of the steps, then cosine to 0
        optimizer = torch.optim.AdamW(self._parameter_groups(), betas=(0.9, 0.98))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return step_schedule(optimizer, warmup_cosine(total, int(total * self.hparams.warmup_ratio)))

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """CLIP's towers at `clip_lr`, the rest at `lr`; no weight decay on biases, norms, embeddings and gates."""
        groups: dict[tuple[bool, bool], list[Tensor]] = {}
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            is_clip = name.startswith(("clip.", "video_visual.")) and ".temporal_adapter." not in name
            no_decay = parameter.ndim < 2 or "embedding" in name or name.endswith("_gate")
            groups.setdefault((is_clip, no_decay), []).append(parameter)
        return [
            {
                "params": params,
                "lr": self.hparams.clip_lr if is_clip else self.hparams.lr,
                "weight_decay": 0.0 if no_decay else self.hparams.weight_decay,
            }
            for (is_clip, no_decay), params in groups.items()
        ]


def _check_arguments(
    loss_weights: dict[Task, float] | None,
    decoder_tokenizer: str | None,
    decoder_weights: str | None,
    itm_weight: float,
    itm_rerank_k: int,
) -> None:
    unknown = set(loss_weights or {}) - set(TASKS)
    if unknown:
        raise ValueError(f"loss_weights: unknown tasks {sorted(unknown)}; choose from {', '.join(TASKS)}")
    if itm_weight < 0 or itm_rerank_k < 0:
        raise ValueError(f"itm_weight and itm_rerank_k must be >= 0, got {itm_weight} and {itm_rerank_k}")
    if decoder_tokenizer is None and (itm_weight > 0 or itm_rerank_k > 0 or decoder_weights):
        raise ValueError(
            "decoder_tokenizer: null builds no decoder, but itm_weight/itm_rerank_k/decoder_weights need one; "
            "set decoder_tokenizer (e.g. bert-base-uncased)"
        )


def _unused_parameters(tasks: set[Task], itm: bool) -> list[str]:
    """Parameter-name prefixes that no loss of `tasks` (and ITM, if `itm`) reaches."""
    unused = list(_IMAGE_STREAM_HEAD)
    if not tasks & {"caption", "qa"}:
        unused += ["decoder.cls."] if itm else ["decoder.", "visual_to_decoder."]
    if not itm:
        unused.append("itm_head.")
    if "retrieval" not in tasks:
        unused += _RETRIEVAL_PARTS
    return unused


def _retrieval_rankings(rows: list[dict[str, Any]], items: Any, top: int = 10) -> list[dict[str, Any]]:
    """JSON lines of retrieval predictions: each caption ranks the videos, each video ranks the captions."""
    videos = [str(items[row["index"]].video) for row in rows]
    video_embeddings = torch.stack([row["video_embedding"] for row in rows])
    captions = [(caption, videos[v]) for v, row in enumerate(rows) for caption in row["captions"]]
    caption_embeddings = torch.cat([row["caption_embeddings"] for row in rows])
    similarity = caption_embeddings @ video_embeddings.t()  # (captions, videos), cosine
    lines = []
    for (caption, own), scores in zip(captions, similarity, strict=True):
        best = scores.topk(min(top, len(videos)))
        lines.append(
            {
                "query": "text_to_video",
                "caption": caption,
                "video": own,
                "ranking": [{"video": videos[j], "score": round(float(s), 6)} for s, j in zip(*best, strict=True)],
            }
        )
    for v, scores in enumerate(similarity.t()):
        best = scores.topk(min(top, len(captions)))
        lines.append(
            {
                "query": "video_to_text",
                "video": videos[v],
                "ranking": [
                    {"caption": captions[j][0], "score": round(float(s), 6)} for s, j in zip(*best, strict=True)
                ],
            }
        )
    return lines
