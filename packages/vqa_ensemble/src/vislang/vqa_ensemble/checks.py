"""What a member and an ensemble refuse before they evaluate: features from another extractor than the one a
member was trained on, and (README "Ensemble protocol") questions a member trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from vislang.vqa_ensemble.data import VQAData
from vislang.vqa_ensemble.features import check_spec

if TYPE_CHECKING:
    from vislang.vqa_ensemble.module import VQAModule

__all__ = ["FEATURE_IDENTITY", "LeakError", "check_member_features", "check_no_leak"]

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


def check_member_features(member: VQAModule, data: VQAData | None) -> None:
    """Refuse to evaluate a member on features from another extractor than the one it was trained on."""
    if not member.feature_spec or data is None:
        return
    store = data.feature_store(member.hparams.feature_set)
    keys = [k for k in FEATURE_IDENTITY if k in member.feature_spec]
    check_spec(
        {k: member.feature_spec[k] for k in keys},
        {k: store.spec.get(k) for k in keys},
        f"feature set {member.hparams.feature_set!r} ({store.root})",
        ("the member was trained on", "is in this store", ""),
    )


class LeakError(ValueError):
    """A member was trained on questions an ensemble would fit its weights on (or be scored on)."""


def check_no_leak(members: Sequence[VQAModule], paths: Sequence[str], question_ids: list[int], split: str) -> None:
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
