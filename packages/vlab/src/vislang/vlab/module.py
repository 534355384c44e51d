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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from vislang.shared.checkpoint import load_state_dict
from vislang.shared.losses import symmetric_info_nce
from vislang.shared.metrics import (
    CaptionMetric,
    RetrievalMetric,
    SampleMetric,
    blockwise_similarity,
    dual_softmax,
    first_occurrence,
    positives_from_keys,
    retrieval_metrics,
    video_to_text_metrics,
)
from vislang.shared.predictions import gather_objects, write_json_lines
from vislang.shared.preflight import Missing, PreflightContext, check_path, check_tokenizer
from vislang.shared.text import load_tokenizer
from vislang.vlab.model import VLAB, build_vlab, load_bert_decoder, load_clip_state_dict

Task = Literal["retrieval", "caption", "qa"]
_DECODER_PARTS = ("decoder.", "visual_to_decoder.", "itm_head.")

__all__ = ["VLABModule", "rerank_top_k"]


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
        preset: str = "vlab_b16",
        loss_weights: dict[str, float] | None = None,
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
        unknown = set(loss_weights or {}) - {"retrieval", "caption", "qa"}
        if unknown:
            raise ValueError(f"loss_weights: unknown tasks {sorted(unknown)}; choose from retrieval, caption, qa")
        self.loss_weights = {"retrieval": 1.0, "caption": 1.0, "qa": 1.0, **(loss_weights or {})}
        if itm_weight < 0 or itm_rerank_k < 0:
            raise ValueError(f"itm_weight and itm_rerank_k must be >= 0, got {itm_weight} and {itm_rerank_k}")
        self.loss_weights["itm"] = itm_weight

        if decoder_tokenizer is None and (itm_weight > 0 or itm_rerank_k > 0 or decoder_weights):
            raise ValueError(
                "decoder_tokenizer: null builds no decoder, but itm_weight/itm_rerank_k/decoder_weights need one; "
                "set decoder_tokenizer (e.g. bert-base-uncased)"
            )
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
        if clip_weights:
            missing, unexpected = load_clip_state_dict(self.model, load_state_dict(clip_weights))
            if unexpected:
                raise ValueError(f"{clip_weights}: not an open_clip CLIP checkpoint (unexpected keys {unexpected[:5]})")
        if decoder_weights:
            load_bert_decoder(self.model, decoder_weights)
        if init_weights:
            state = load_state_dict(init_weights)
            state = {k.removeprefix("model."): v for k, v in state.items()}
            if self.model.decoder is None:  # a retrieval-only model fine-tuned from a full one
                state = {k: v for k, v in state.items() if not k.startswith(_DECODER_PARTS)}
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            # a checkpoint from before the ITM head (or pre-trained without it) may lack only that
            missing = [k for k in missing if not k.startswith("itm_head.")]
            if missing or unexpected:
                raise ValueError(
                    f"{init_weights}: not a VLAB checkpoint of this preset (missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]})"
                )
        frozen = [*(freeze or []), *(["clip.visual."] if freeze_image_stream else [])]
        for name, parameter in self.model.named_parameters():
            if any(name.startswith(prefix) for prefix in frozen):
                parameter.requires_grad_(False)
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

    def setup(self, stage: str) -> None:
        """Freeze the parts the data module's tasks never use, before DDP wraps the model.

        DDP fails on trainable parameters that get no gradient (a retrieval-only run never touches the
        decoder; a QA-only run never touches the text tower), and such parameters would only
        carry weight decay. What stays trainable is exactly what the losses reach, which a test checks.
        """
        if stage != "fit" or self.trainer is None or self.trainer.datamodule is None:
            return
        tasks = set(self.trainer.datamodule.tasks)
        if self.model.decoder is None and tasks & {"caption", "qa"}:
            raise ValueError(
                f"data.tasks {sorted(tasks)} need the generative decoder, but model.decoder_tokenizer is null; "
                "set it (e.g. bert-base-uncased)"
            )
        itm = self.hparams.itm_weight > 0 and "retrieval" in tasks
        # the image stream feeds the blending with its tokens only: CLIP's own pooling head is unused
        unused: list[str] = [
            "clip.visual.ln_post",
            "clip.visual.proj",
            "clip.visual.head.",
            "clip.visual.trunk.norm.",
            "clip.visual.trunk.fc_norm",
            "clip.visual.trunk.head",
        ]
        if not tasks & {"caption", "qa"}:
            unused += ["decoder.cls."] if itm else ["decoder.", "visual_to_decoder."]
        if not itm:
            unused.append("itm_head.")
        if "retrieval" not in tasks:
            # CLIP's text tower, temperature and the video stream's output projection serve only retrieval
            unused += [
                "clip.token_embedding",
                "clip.positional_embedding",
                "clip.transformer.",
                "clip.ln_final",
                "clip.text_projection",
                "clip.logit_scale",
                "video_visual.proj",
                "video_visual.head.",
            ]
        for name, parameter in self.model.named_parameters():
            if name.startswith(tuple(unused)):
                parameter.requires_grad_(False)

    # ---- training ---------------------------------------------------------------------------

    def _task_losses(self, task: str, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The task's loss, and on retrieval batches also `itm` when `itm_weight` > 0."""
        video_embedding, tokens = self.model.encode_video(batch["video"])
        if task == "retrieval":
            text_embedding = self.model.encode_text(self._clip_ids(batch["caption"]))
            # symmetric InfoNCE over the global batch (keys gathered from every process), CLIP §2.3
            scale = self.model.logit_scale()
            losses = {"retrieval": symmetric_info_nce(video_embedding, text_embedding, temperature=1.0 / scale)}
            if self.hparams.itm_weight > 0 and len(batch["caption"]) > 1:
                # ALBEF §3.2: hard negatives drawn from this process's batch similarities; a text equal
                # to the positive caption is never a negative
                captions = batch["caption"]
                same = torch.tensor([[a == b for b in captions] for a in captions], device=self.device)
                ids, mask = self._itm_text(captions)
                similarity = scale * video_embedding @ text_embedding.t()
                losses["itm"] = self.model.itm_loss(self.model.decoder_memory(tokens), ids, mask, similarity, same)
            return losses
        memory = self.model.decoder_memory(tokens)
        if task == "caption":
            ids, mask, labels = self._decoder_batch(self._caption_prompt(len(batch["caption"])), batch["caption"])
        else:
            ids, mask, labels = self._decoder_batch(batch["question"], batch["answer"])
        return {task: self.model.decoder_loss(memory, ids, mask, labels)}

    def training_step(self, batch: dict[str, dict[str, Any]], batch_idx: int) -> Tensor:
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
            if task == "retrieval" and self.hparams.itm_rerank_k > 0:
                scores = self._reranked_retrieval_scores(metric)
            else:
                scores = metric.compute()
            if task == "retrieval":  # a random ranking finds the one right video of N with probability 1/N
                scores["chance/R@1"] = 100.0 / scores["num_visual"]
            metric.reset()
            results[task] = scores
            # every rank holds the same, already gathered scores: sync_dist averages identical values
            self.log_dict({f"{split}/{task}/{name}": value for name, value in scores.items()}, sync_dist=True)
        return results

    @torch.no_grad()
    def _reranked_retrieval_scores(self, metric: RetrievalMetric) -> dict[str, float]:
        with metric.sync_context():  # every rank's embeddings, as `metric.compute` would see them
            return self._rerank(metric)

    def _rerank(self, metric: RetrievalMetric) -> dict[str, float]:
        """`RetrievalMetric.compute` with each direction's contrastive top-k re-scored by ITM (UMT's `k_test`).

        The similarity matrix is built exactly as `RetrievalMetric` builds it (texts deduplicated and
        ordered by index, videos by key, optional dual softmax), then `rerank_top_k` per direction.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank gathers every video's memory and caption and re-ranks the whole matrix itself
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (self._rerank_memory, self._rerank_text))
            for memory, texts in gathered:
                self._rerank_memory.update(memory)
                self._rerank_text.update(texts)
        keep = metric._kept()
        text = metric._gathered("text_emb", keep)
        text_key = metric._gathered("text_key", keep)
        text_index = metric._gathered("index", keep).long().tolist()
        visual_keys_all = metric._state("visual_key").long()
        vkeep = first_occurrence(visual_keys_all)
        visual = metric._state("visual_emb")[vkeep]
        visual_key = visual_keys_all[vkeep].tolist()
        sim = blockwise_similarity(text, visual, metric.block_size)
        positives = positives_from_keys(text_key, visual_key)
        sim_v2t = sim.t().clone()
        if metric.dual_softmax_temperature is not None:
            sim_v2t = dual_softmax(sim.clone(), metric.dual_softmax_temperature, dim=1).t().clone()
            dual_softmax(sim, metric.dual_softmax_temperature, dim=0)
        k = self.hparams.itm_rerank_k

        def t2v_scores(rows: Tensor, cols: Tensor) -> Tensor:
            return self._itm_pair_scores([text_index[r] for r in rows.tolist()], [visual_key[c] for c in cols.tolist()])

        def v2t_scores(rows: Tensor, cols: Tensor) -> Tensor:
            return self._itm_pair_scores([text_index[c] for c in cols.tolist()], [visual_key[r] for r in rows.tolist()])

        sim = rerank_top_k(sim, k, t2v_scores)
        sim_v2t = rerank_top_k(sim_v2t, k, v2t_scores)
        self._rerank_memory, self._rerank_text = {}, {}
        t2v = retrieval_metrics(sim, positives, block_size=metric.block_size)
        v2t = video_to_text_metrics(sim_v2t, positives, text_key, metric.video_to_text, metric.block_size)
        out = {f"t2v/{name}": value for name, value in t2v.items()}
        out.update({f"v2t/{name}": value for name, value in v2t.items()})
        out["rsum"] = sum(value for name, value in out.items() if "/R@" in name)
        out["num_text"], out["num_visual"] = float(text.shape[0]), float(visual.shape[0])
        return out

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
        self._predictions: dict[str, list[dict[str, Any]]] = {}

    def on_predict_epoch_end(self) -> None:
        """Write `vlab_predictions_<task>.jsonl` (in `results_dir`, or the logger's directory), replacing any
        earlier file: answers and captions per video; for retrieval, each caption's ranking of the videos
        (top 10, with cosine scores) and each video's ranking of the captions. Every item once under DDP."""
        gathered = gather_objects(self._predictions)
        if not self.trainer.is_global_zero:
            return
        directory = Path(self.hparams.results_dir or self.trainer.log_dir or ".")
        directory.mkdir(parents=True, exist_ok=True)
        for task in self.trainer.datamodule.eval_tasks:
            rows = {row["index"]: row for part in gathered for row in part.get(task, [])}
            items = self.trainer.datamodule.dataset_items(task, "test")
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
        from vislang.vlab.data import load_clip

        self.eval()
        image_size = self.model.clip.visual.image_size
        size = image_size[0] if isinstance(image_size, tuple) else image_size
        return load_clip(video, num_frames, size).unsqueeze(0).to(self.device)

    def _generate(self, tokens: Tensor, prompts: list[str], task: str) -> list[str]:
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


def rerank_top_k(sim: Tensor, k: int, score_pairs: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Re-score each row's top-k entries of `sim` (queries × targets) with a cross-encoder (UMT's `k_test`).

    `score_pairs(rows, cols)` scores the (query, target) pairs given by two (P,) index tensors. As in
    ALBEF/UMT, only the top-k of a query are candidates: their new scores are shifted above every
    other entry of the matrix, so they rank first among themselves by the cross-encoder's score,
    and the remaining targets keep their contrastive order behind them. Returns a new matrix.
    """
    k = min(k, sim.shape[1])
    if k <= 0:
        return sim.clone()
    top = sim.topk(k, dim=1).indices  # (N, k)
    rows = torch.arange(sim.shape[0], device=sim.device).repeat_interleave(k)
    cols = top.reshape(-1)
    scores = torch.as_tensor(score_pairs(rows.cpu(), cols.cpu()), dtype=torch.float64).reshape(-1)
    # shift the cross-encoder scores above the whole matrix: min(new) > max(old)
    shifted = scores - scores.min() + sim.max().double() + 1.0
    out = sim.double().clone()
    out[rows, cols] = shifted.to(out.device)
    return out


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
        return {
            "accuracy": 100.0 * correct / len(answers),
            "chance/majority_answer": 100.0 * majority / len(answers),
            "count": float(len(answers)),
        }


def format_scores(results: dict[str, dict[str, float]]) -> str:
    """A small table: one block per task, each score beside its chance level where one exists."""
    lines = []
    for task, scores in results.items():
        lines.append(f"[{task}]")
        lines.extend(f"  {name:>24}: {value:8.2f}" for name, value in scores.items())
    return "\n".join(lines)
