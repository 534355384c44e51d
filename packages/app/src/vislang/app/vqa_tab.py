"""VQA-entry tab: an image and a question in; the ensemble's answer, each member's top answers and the weights.

The package predicts from feature stores (`extract` then `lightning predict`); it has no call for one new
image. This adapter runs the same steps on one image, in memory, with the package's parts:

1. per member, the extraction command's own extractor (`extract.build_extractor`, given the settings the
   member's `feature_spec` records and the detector checkpoint the members' features came from): region
   features of the detector's boxes or grid features of its C5 map, at the largest training scale; every
   identity field of the rebuilt spec (the detector's SHA-256 included) must equal the member's, as a
   feature store refuses another extractor;
2. features rounded to the stored dtype;
3. the question tokenized like `VQADataModule.collate` does (the members' tokenizer), each member's
   sigmoid answer scores mapped onto the union vocabulary, averaged with the fitted weights (`combine`),
   as `VQAEnsemble.member_probabilities` and `predict_step` do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vislang.app.checkpoints import checkpoint_hparams, resolve_relative
from vislang.app.inputs import CheckedImage, check_question
from vislang.shared.text import load_tokenizer
from vislang.vqa_ensemble.checks import FEATURE_IDENTITY
from vislang.vqa_ensemble.ensemble import combine
from vislang.vqa_ensemble.extract import build_extractor
from vislang.vqa_ensemble.extract import parser as extract_parser
from vislang.vqa_ensemble.module import VQAModule, load_member

__all__ = ["VQAAnswer", "VQAPredictor"]

MAX_QUESTION_TOKENS = 24
"""Question length the members see (the demo's `max_question_tokens`; longer questions are truncated)."""
TOP_K = 5


def _load_member(path: Path) -> VQAModule:
    """`vislang.vqa_ensemble.module.load_member`, with the tokenizer paths recorded by the training run made
    usable from this working directory (the demo records them relative to the repository root)."""
    hparams = checkpoint_hparams(path)
    return load_member(path, {key: resolve_relative(hparams.get(key), path) for key in ("tokenizer", "text_model")})


@dataclass
class VQAAnswer:
    answer: str
    ensemble_top: list[tuple[str, float]]
    members: list[dict[str, Any]]  # name, feature set, weight, top answers
    weights: list[float]
    notes: list[str] = field(default_factory=list)


class VQAPredictor:
    """The fitted ensemble of `weights_json` (written by `lightning validate` of an ensemble config) with the
    detector its members' features came from."""

    def __init__(self, weights_json: str | Path, detector_ckpt: str | Path) -> None:
        weights_json, detector_ckpt = Path(weights_json), Path(detector_ckpt)
        try:
            info = json.loads(weights_json.read_text(encoding="utf-8"))
            weights, members = [float(w) for w in info["weights"]], list(info["members"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{weights_json}: not an ensemble weights file ({{'weights': [...], 'members': "
                f"[...]}} as `lightning validate` writes it): {type(error).__name__} {error}"
            ) from None
        if len(weights) != len(members) or not members:
            raise ValueError(f"{weights_json}: {len(weights)} weights for {len(members)} members")
        self.weights = weights
        self.member_paths = [Path(resolve_relative(m, weights_json)) for m in members]
        self.members = [_load_member(p) for p in self.member_paths]
        self.extractors = [
            self._extractor(path, member, Path(detector_ckpt))
            for path, member in zip(self.member_paths, self.members, strict=True)
        ]
        vocab: dict[str, int] = {}
        for member in self.members:
            for answer in member.answers:
                vocab.setdefault(answer, len(vocab))
        self.answers = list(vocab)
        self._maps = [torch.tensor([vocab[a] for a in m.answers]) for m in self.members]
        self.tokenizer = load_tokenizer(self.members[0].hparams.tokenizer)

    @staticmethod
    def _extractor(path: Path, member: VQAModule, detector: Path) -> torch.nn.Module:
        """The extraction command's own extractor for the settings the member's features were made with,
        refused when the detector (its SHA-256) or any other identity field differs from the member's."""
        spec = member.feature_spec
        argv = ["--images", "-", "--out", "-", "--kind", str(spec.get("kind", "region")), "--detector", str(detector)]
        for key in ("min_boxes", "max_boxes", "score_threshold", "nms_threshold", "grid_size", "dtype"):
            if spec.get(key) is not None:
                argv += [f"--{key.replace('_', '-')}", str(spec[key])]
        extractor, rebuilt = build_extractor(extract_parser().parse_args(argv))
        for key in FEATURE_IDENTITY:
            if key in spec and spec[key] != rebuilt.get(key):
                hint = (
                    " (pass the detector its features came from: --vqa-detector)" if key == "detector_weights" else ""
                )
                raise ValueError(
                    f"{path}: the member was trained on features with {key}={spec[key]!r} but "
                    f"{detector} gives {key}={rebuilt.get(key)!r}{hint}"
                )
        return extractor.eval()

    def features(self, image: CheckedImage) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per member: (features (n, d), boxes (n, 4) normalised), as its feature store would hold them."""
        pixels = torch.from_numpy(image.array).permute(2, 0, 1).float() / 255.0
        out = []
        for member, extractor in zip(self.members, self.extractors, strict=True):
            features, boxes = extractor([pixels])[0]
            if member.feature_spec.get("dtype") == "float16":  # the store kept float16 features (boxes: float32)
                features = features.half()
            out.append((features.float(), boxes.float()))
        return out

    @torch.no_grad()
    def predict(self, image: CheckedImage, question: str) -> VQAAnswer:
        question = check_question(question)
        tokens = self.tokenizer(
            [question], padding=True, truncation=True, max_length=MAX_QUESTION_TOKENS, return_tensors="pt"
        )
        probabilities, members = [], []
        for k, (member, (features, boxes)) in enumerate(zip(self.members, self.features(image), strict=True)):
            visual = {
                "features": features[None],
                "boxes": boxes[None],
                "mask": torch.ones(1, len(features), dtype=torch.bool),
            }
            batch = {
                "input_ids": tokens["input_ids"],
                "attention_mask": tokens["attention_mask"],
                "visual": {member.hparams.feature_set: visual},
            }
            p = torch.sigmoid(member(batch))[0]
            full = p.new_zeros(len(self.answers))
            full[self._maps[k]] = p
            probabilities.append(full)
            top = p.topk(min(TOP_K, len(p)))
            members.append(
                {
                    "name": f"member {k + 1}: {member.hparams.feature_set} features ({len(features)} "
                    f"{'cells' if member.feature_spec.get('kind') == 'grid' else 'boxes'})",
                    "weight": self.weights[k],
                    "checkpoint": str(self.member_paths[k]),
                    "top": [(member.answers[i], float(s)) for i, s in zip(top.indices, top.values, strict=True)],
                }
            )
        mixed = combine(torch.stack(probabilities)[:, None], self.weights)[0]
        top = mixed.topk(min(TOP_K, len(mixed)))
        ranked = [(self.answers[i], float(s)) for i, s in zip(top.indices, top.values, strict=True)]
        notes = list(image.notes)
        if tokens["input_ids"].shape[1] >= MAX_QUESTION_TOKENS:
            notes.append(f"the question was cut to {MAX_QUESTION_TOKENS} tokens, as in training")
        return VQAAnswer(ranked[0][0], ranked, members, list(self.weights), notes)
