"""PixelLMModule: training, MUSE / refCOCO evaluation and inference of PixelLM.

Batches carry raw strings (question, answer with one `{seg}` per target); the module owns the tokenizer,
renders each `{seg}` as the N·L codebook tokens and builds the llava_v1-style sequence
`<bos> prompt(<image> x g²) answer <eos>` with labels only on the answer. Evaluation generates the answer
(greedy, KV cache), decodes one mask per complete codebook group and scores MUSE-style gIoU / cIoU
(`vislang.shared.metrics.SegmentationIoU`: Hungarian matching for MUSE, answer order for refCOCO).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor

from vislang.pixellm.convert import load_clip_weights, load_llava_weights, load_pixellm_weights
from vislang.pixellm.data import (
    MUSE_QUESTION,
    EvalStage,
    Matching,
    Normalisation,
    PixelLMBatch,
    PixelLMEvalData,
    PromptBatch,
    preprocess_image,
)
from vislang.pixellm.metrics import format_table, matched_pairs
from vislang.pixellm.model import (
    IMAGE_TOKEN,
    GenerationOutput,
    PixelLM,
    PresetName,
    add_codebook_tokens,
    build_pixellm,
    codebook_token_strings,
    preset_config,
)
from vislang.shared.checkpoint import load_weights
from vislang.shared.data.images import as_rgb_array
from vislang.shared.data.synthetic import SEG_PLACEHOLDER
from vislang.shared.losses import IGNORE_INDEX
from vislang.shared.metrics import SegmentationIoU
from vislang.shared.schedules import step_schedule, warmup_linear_decay
from vislang.shared.text import load_tokenizer

__all__ = ["LLAVA_V1_PROMPT", "PixelLMModule", "SegmentationResult"]

LLAVA_V1_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: <im_start><image><im_end>\n{question} ASSISTANT:"
)
"""The llava_v1 conversation template both released PixelLM models use (sep " ", sep2 "</s>"), with the image
wrapped in `<im_start>`/`<im_end>` as the release was trained (`use_mm_start_end`)."""


@dataclass
class SegmentationResult:
    """`segment`'s answer: the text (codebook groups shown as `[SEG]`), one mask per target, confidences."""

    answer: str
    masks: np.ndarray  # (K, H, W) bool at the image's size
    scores: list[float]
    dropped_tokens: int  # codebook tokens of an incomplete trailing group (truncated)


class PixelLMModule(LightningModule):
    """PixelLM in Lightning.

    Args:
        preset: the model's sizes: `pixellm_7b`, `pixellm_13b` (the paper's), `small` (the speed benchmark's),
            `tiny` (the CPU demo's).
        tokenizer: local HF tokenizer directory or hub name (the LLaVA base's for the paper presets).
        prompt_template: the user turn with `{question}` and `<image>`; llava_v1 by default.
        fusion: `weighted` (registered scalars) or `linear` (the paper's projection φ).
        tokens_per_scale: N (official 3).
        ce_weight: λ of the text cross-entropy (official 1.0).
        bce_weight: λ of the (refinement-weighted) mask BCE (official 2.0).
        dice_weight: λ of the mask Dice loss (official 0.5).
        refinement_alpha: α of the target refinement loss on pixels claimed by >= 2 predicted masks; 1.0 =
            plain BCE, the released code (whose refinement loss is commented out).
        train_vision: also train CLIP (the paper freezes it; a from-scratch demo without pretrained weights
            trains it).
        train_llm: also train the LLM base (the paper freezes it, as CLIP; the from-scratch demo trains it).
        llava_weights: local LLaVA checkpoint directory (HF layout) to start from (LLM; CLIP if saved).
        clip_weights: local HF CLIP directory (`openai/clip-vit-large-patch14-336`) for the vision tower
            (a released PixelLM holds none, so loading one needs it).
        clip_positions: how CLIP's 24x24 position grid becomes 32x32 at 448 px: `official` as the released
            model was trained (the last row taken as CLS), `fixed` with CLS at index 0.
        pixellm_weights: local released PixelLM checkpoint directory (HF layout) to start from.
        init_weights: a checkpoint of this module (fine-tuning; hyper-parameters stay the config's).
        lr: AdamW peak learning rate (official 3e-4); linear warm-up, then linear decay to 0.
        weight_decay: AdamW weight decay (official 0).
        betas: AdamW betas (official (0.9, 0.95)).
        warmup_steps: linear warm-up steps (official 100).
        max_new_tokens: generation length at evaluation (official 512).
        model_max_length: training sequences are truncated to this many tokens (official 512).
        eval_num_points: MUSE matching cost on this many random points (official 12,544); None = all pixels.
        empty_pair_iou: IoU of a pair with an empty union (official 1.0; 0.0 or None are strict modes).
        eval_protocol: MUSE scoring. `strict` (default): extra predictions are binarised and count in the union,
            gIoU averages each question's pairs. `official`: the released `ar_validate` exactly (extra
            predictions' raw logits histogrammed over [0, 1], gIoU per image over max(#pred, #gt));
            refCOCO-style sets (ordered matching) always use `strict`.
        evaluate_before_training: score the untrained model on the validation sets when fit starts, to print
            beside the trained numbers.
        results_dir: where `test` writes scores and the per-pair JSON (None: the logger's directory).
        normalisation: image normalisation of `segment` (keep it equal to the data module's).
    """

    def __init__(
        self,
        preset: PresetName = "pixellm_7b",
        tokenizer: str = "liuhaotian/LLaVA-Lightning-7B-delta-v1-1",
        prompt_template: str = LLAVA_V1_PROMPT,
        fusion: Literal["weighted", "linear"] = "weighted",
        tokens_per_scale: int = 3,
        ce_weight: float = 1.0,
        bce_weight: float = 2.0,
        dice_weight: float = 0.5,
        refinement_alpha: float = 2.0,
        train_vision: bool = False,
        train_llm: bool = False,
        llava_weights: str | None = None,
        clip_weights: str | None = None,
        clip_positions: Literal["official", "fixed"] = "official",
        pixellm_weights: str | None = None,
        init_weights: str | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_new_tokens: int = 512,
        model_max_length: int = 512,
        eval_num_points: int | None = 12544,
        empty_pair_iou: float | None = 1.0,
        eval_protocol: Literal["strict", "official"] = "strict",
        evaluate_before_training: bool = False,
        results_dir: str | None = None,
        normalisation: Normalisation = "sam",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = replace(preset_config(preset), fusion=fusion, tokens_per_scale=tokens_per_scale)
        if IMAGE_TOKEN not in prompt_template or "{question}" not in prompt_template:
            raise ValueError(f"prompt_template needs {IMAGE_TOKEN!r} and '{{question}}', got {prompt_template!r}")
        self.tokenizer = load_tokenizer(tokenizer)
        codebook_ids, image_id = add_codebook_tokens(self.tokenizer, config)  # §3.2: the codebook's vocabulary
        self.model: PixelLM = build_pixellm(config, len(self.tokenizer), codebook_ids, image_id)
        self.codebook_text = " ".join(codebook_token_strings(config))
        self.bos_id, self.eos_id, self.pad_id = _special_token_ids(self.tokenizer)
        self._load_initial_weights()
        self.trainable_names = self.model.set_trainable(train_vision, train_llm)
        self._metrics: dict[int, SegmentationIoU] = {}
        self._protocols: dict[str, str] = {}
        self._dump: list[dict[str, Any]] = []
        self.last_scores: dict[str, dict[str, float]] = {}
        self.untrained_scores: dict[str, dict[str, float]] = {}

    def _load_initial_weights(self) -> None:
        """A released PixelLM, else a LLaVA base (+ CLIP), else CLIP alone; then this module's own checkpoint."""
        hp = self.hparams
        if hp.pixellm_weights:  # a release holds no vision tower: CLIP comes from clip_weights
            load_pixellm_weights(
                self.model, hp.pixellm_weights, vision_weights=hp.clip_weights, clip_positions=hp.clip_positions
            )
        elif hp.llava_weights:
            load_llava_weights(
                self.model, hp.llava_weights, clip_directory=hp.clip_weights, clip_positions=hp.clip_positions
            )
        elif hp.clip_weights:
            load_clip_weights(self.model, hp.clip_weights, hp.clip_positions)
        if hp.init_weights:
            report = load_weights(self.model, hp.init_weights, prefix="model.")
            if report.missing or report.unexpected or report.mismatched:
                raise ValueError(f"{hp.init_weights}: not a PixelLM checkpoint of this preset: {report}")

    # ---- text ---------------------------------------------------------------------------------------

    def _prompt_ids(self, question: str) -> list[int]:
        ids = self.tokenizer(self.hparams.prompt_template.format(question=question), add_special_tokens=False).input_ids
        out: list[int] = [self.bos_id]
        grid = self.model.config.llm_grid**2
        for token in ids:  # <image> -> g² image-token slots (LLaVA splices the projected patches there)
            out.extend([token] * grid if token == self.model.image_token_id else [token])
        return out

    def _answer_ids(self, answer: str) -> list[int]:
        text = answer.replace(SEG_PLACEHOLDER, self.codebook_text)
        return self.tokenizer(text, add_special_tokens=False).input_ids + [self.eos_id]

    def _training_batch(self, questions: list[str], answers: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded `<bos> prompt answer <eos>`, labels on the answer only, truncated to whole groups."""
        rows, labels = [], []
        group = self.model.config.group_size
        codes = set(self.model.codebook_ids.tolist())
        for question, answer in zip(questions, answers, strict=True):
            prompt, target = self._prompt_ids(question), self._answer_ids(answer)
            ids = (prompt + target)[: self.hparams.model_max_length]
            # truncation must not cut a codebook group (its mask would have no complete prompt)
            code_positions = [i for i, t in enumerate(ids) if t in codes]
            extra = len(code_positions) % group
            if extra:
                ids = ids[: code_positions[-extra]]
            rows.append(ids)
            labels.append(([IGNORE_INDEX] * len(prompt) + ids[len(prompt) :])[: len(ids)])
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        label_t = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (r, lab) in enumerate(zip(rows, labels, strict=True)):
            input_ids[i, : len(r)], mask[i, : len(r)], label_t[i, : len(lab)] = torch.tensor(r), 1, torch.tensor(lab)
        return input_ids.to(self.device), mask.to(self.device), label_t.to(self.device)

    def _prompt_batch(self, questions: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded prompts, so generation continues every row at the same column."""
        rows = [self._prompt_ids(q) for q in questions]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, length - len(r) :], mask[i, length - len(r) :] = torch.tensor(r), 1
        return input_ids.to(self.device), mask.to(self.device)

    def decode_answer(self, tokens: Tensor) -> str:
        """Generated ids -> text with each complete codebook group shown as `[SEG]`."""
        text = self.tokenizer.decode(tokens.tolist(), skip_special_tokens=False)
        names = codebook_token_strings(self.model.config)
        text = re.sub(r"\s*".join(re.escape(n) for n in names), "[SEG]", text)
        for special in {*names, self.tokenizer.decode([self.eos_id]), self.tokenizer.decode([self.pad_id])}:
            text = text.replace(special, "")
        return " ".join(text.split())

    # ---- training -----------------------------------------------------------------------------------

    def training_step(self, batch: PixelLMBatch, batch_idx: int) -> Tensor:
        ids, mask, labels = self._training_batch(batch["question"], batch["answer"])
        out = self.model(
            batch["pixel_values"],
            batch["patch_mask"],
            ids,
            mask,
            batch["resized_size"],
            batch["original_size"],
            labels=labels,
        )
        gt = [m.to(self.device) for m in batch["masks"]]
        # truncation may have removed trailing targets: pair the first K masks with the K predictions
        gt = [g[: p.shape[0]] for p, g in zip(out["masks"], gt, strict=True)]
        losses = self.model.mask_losses(out["masks"], gt, self.hparams.refinement_alpha)
        hp = self.hparams
        total = hp.ce_weight * out["ce"] + hp.bce_weight * losses["bce"] + hp.dice_weight * losses["dice"]
        size = len(batch["question"])
        self.log_dict(
            {"train/ce": out["ce"], "train/bce": losses["bce"], "train/dice": losses["dice"]}, batch_size=size
        )
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        return total

    # ---- evaluation ---------------------------------------------------------------------------------

    def _generate(self, batch: PromptBatch) -> GenerationOutput:
        ids, mask = self._prompt_batch(batch["question"])
        return self.model.generate(
            batch["pixel_values"],
            batch["patch_mask"],
            ids,
            mask,
            batch["resized_size"],
            batch["original_size"],
            self.hparams.max_new_tokens,
            self.eos_id,
        )

    @property
    def _eval_data(self) -> PixelLMEvalData:
        return self.trainer.datamodule

    def _num_points(self, matching: Matching) -> int | None:
        """MUSE's matching cost on random points (Hungarian matching only)."""
        return self.hparams.eval_num_points if matching == "hungarian" else None

    def _metric(self, dataloader_idx: int, matching: Matching) -> SegmentationIoU:
        if dataloader_idx not in self._metrics:
            protocol = self.hparams.eval_protocol if matching == "hungarian" else "strict"
            self._metrics[dataloader_idx] = SegmentationIoU(
                matching=matching,
                num_points=self._num_points(matching),
                empty_pair_iou=self.hparams.empty_pair_iou,
                protocol=protocol,
            ).to(self.device)
        return self._metrics[dataloader_idx]

    def _eval_step(self, batch: PixelLMBatch, dataloader_idx: int, stage: EvalStage, dump: bool) -> None:
        """Generate the answers, decode their masks and score them (MUSE gIoU / cIoU); `dump` keeps a record of
        each question for `pixellm_test_pairs.json`."""
        eval_set = self._eval_data.eval_sets(stage)[dataloader_idx]
        result = self._generate(batch)
        gt = [m.to(self.device) for m in batch["masks"]]
        metric = self._metric(dataloader_idx, eval_set.matching)
        metric.update(result.masks, gt, batch["index"], image_ids=batch.get("image_id"))
        if dump:
            seeds = [metric.seed + int(i) for i in batch["index"]]
            self._dump += [
                self._record(batch, result, gt, k, eval_set.name, eval_set.matching, seeds[k]) for k in range(len(gt))
            ]

    def _record(
        self,
        batch: PixelLMBatch,
        result: GenerationOutput,
        gt: list[Tensor],
        k: int,
        name: str,
        matching: Matching,
        seed: int,
    ) -> dict[str, Any]:
        """Question `k` of the batch: its generated answer and its masks as the metric paired them."""
        pred = result.masks[k]
        return {
            "dataset": name,
            "index": int(batch["index"][k]),
            "image": batch["image_path"][k],
            "question": batch["question"][k],
            "answer": self.decode_answer(result.tokens[k]),
            "num_pred": int(pred.shape[0]),
            "num_gt": int(gt[k].shape[0]),
            "dropped_codebook_tokens": result.dropped_tokens[k],
            "scores": result.scores[k].tolist(),
            "pairs": matched_pairs(pred, gt[k], matching, self._num_points(matching), seed),
        }

    def _finish(self, stage: EvalStage) -> dict[str, dict[str, float]]:
        names = [eval_set.name for eval_set in self._eval_data.eval_sets(stage)]
        results = {}
        self._protocols = {names[idx]: metric.protocol for idx, metric in self._metrics.items()}
        for idx, metric in sorted(self._metrics.items()):
            scores = metric.compute()
            results[names[idx]] = scores
            prefix = "val" if stage == "validate" else "test"
            self.log_dict({f"{prefix}/{names[idx]}/{k}": v for k, v in scores.items()}, sync_dist=True)
        self._metrics = {}
        return results

    def validation_step(self, batch: PixelLMBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "validate", dump=False)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._metrics = {}
            return
        self.last_scores = self._finish("validate")

    def test_step(self, batch: PixelLMBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "test", dump=True)

    def on_test_epoch_end(self) -> None:
        results = self._finish("test")
        directory = Path(self.hparams.results_dir or self.trainer.log_dir or ".")
        if self.trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "pixellm_test_scores.json").write_text(json.dumps(results, indent=2))
            (directory / "pixellm_test_pairs.json").write_text(json.dumps(self._dump))
            protocols = sorted({m for m in self._protocols.values()})
            print(f"MUSE scoring protocol: {', '.join(protocols)} (eval_protocol; `official` = released ar_validate)")
            print(format_table({"test": results}))
            print(f"scores and per-pair results written to {directory}")
        self._dump = []

    def trainable_summary(self) -> dict[str, int]:
        """Trainable parameter counts per group: LoRA, the LLM's embeddings, its base, and each PixelLM part."""
        out: dict[str, int] = {}
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            if ".lora_" in name:
                group = "llm.lora"
            elif name.startswith(("llm.model.embed_tokens.", "llm.lm_head.")):
                group = "llm.embeddings"
            elif name.startswith("llm."):
                group = "llm.base"
            else:
                group = name.split(".")[0]
            out[group] = out.get(group, 0) + parameter.numel()
        return out

    def on_fit_start(self) -> None:
        summary = ", ".join(f"{k} {v:,}" for k, v in self.trainable_summary().items())
        rank_zero_info(f"PixelLM trainable parameters: {summary}")

    def on_train_start(self) -> None:
        """Score the untrained model on the validation sets (`evaluate_before_training`)."""
        if not self.hparams.evaluate_before_training or self.untrained_scores:
            return
        loaders = self._eval_data.val_dataloader()
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for idx, loader in enumerate(loaders):
                for batch in loader:
                    batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                    self._eval_step(batch, idx, "validate", dump=False)
        names = [eval_set.name for eval_set in self._eval_data.eval_sets("validate")]
        self.untrained_scores = {names[i]: m.compute() for i, m in sorted(self._metrics.items())}
        self._metrics = {}
        self.train(was_training)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and self.last_scores:
            table = {"trained": self.last_scores}
            if self.untrained_scores:
                table = {"untrained": self.untrained_scores, **table}
            print("\nMUSE-style scores on held-out questions (generated answers, Hungarian-matched masks):")
            print(format_table(table))

    # ---- inference ----------------------------------------------------------------------------------

    def predict_step(self, batch: PixelLMBatch, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        result = self._generate(batch)
        return [
            {
                "index": int(batch["index"][k]),
                "image": batch["image_path"][k],
                "question": batch["question"][k],
                "answer": self.decode_answer(result.tokens[k]),
                "masks": (result.masks[k] > 0).cpu(),
                "scores": result.scores[k].tolist(),
            }
            for k in range(len(batch["question"]))
        ]

    @torch.no_grad()
    def segment(self, image: str | Path | np.ndarray | Image.Image, question: str) -> SegmentationResult:
        """Answer `question` about one image: the text, one mask per target (K, H, W) and confidences.

        `image`: a path, a PIL image or an H x W, H x W x 1/3/4 array (uint8, or float in [0, 1]); transparent
        parts are put on white; anything else is refused in one line (`vislang.shared.data.images.as_rgb`).
        """
        self.eval()
        array = as_rgb_array(image)
        config = self.model.config
        pixels, patch_mask, resized = preprocess_image(
            array, config.image_size, config.vision.patch_size, self.hparams.normalisation
        )
        batch: PromptBatch = {
            "pixel_values": pixels[None].to(self.device),
            "patch_mask": patch_mask[None].to(self.device),
            "resized_size": torch.tensor([resized]),
            "original_size": [array.shape[:2]],
            "question": [MUSE_QUESTION.format(question=question)],
        }
        result = self._generate(batch)
        return SegmentationResult(
            self.decode_answer(result.tokens[0]),
            (result.masks[0] > 0).cpu().numpy(),
            result.scores[0].tolist(),
            result.dropped_tokens[0],
        )

    # ---- optimisation -------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the trainable parameters; DeepSpeed's WarmupDecayLR as the released code: linear warm-up,
        then linear decay to 0 at the last step."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, betas=tuple(self.hparams.betas)
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return step_schedule(optimizer, warmup_linear_decay(total, min(self.hparams.warmup_steps, total - 1)))


def _special_token_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(begin, end, pad) ids: LLaMA's `<s>`, `</s>` and its pad (else `</s>`); a WordPiece tokenizer's [CLS] and
    [SEP] (the demo's)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad
