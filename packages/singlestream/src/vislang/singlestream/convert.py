"""Pretrained starts of the single-stream models: an ImageNet CNN and BERT, as both papers begin.

SOHO (Sec. 4.1) and Pixel-BERT (Sec. 3.1) initialise the visual encoder from an ImageNet ResNet / ResNeXt and
the Transformer from ``bert-base-uncased``. The model arguments ``cnn_weights:`` and ``text_weights:`` read
those files (safetensors, or a pickle read with ``weights_only``, via ``vislang.shared.checkpoint``):

* ``cnn_weights``: a torchvision or timm ResNet-50/101 or ResNeXt(-152) state dict (the two libraries name
  ResNet parameters alike: ``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``), also
  with a ``backbone.`` / ``model.`` / ``module.`` prefix (mmdet / Lightning / DDP). ``fc`` is dropped.
* ``text_weights``: a Hugging Face BERT checkpoint (``pytorch_model.bin`` / ``model.safetensors`` of
  ``bert-base-uncased``: ``bert.embeddings.*``, ``bert.encoder.*``, ``bert.pooler.*``, ``cls.*``), also
  without the ``bert.`` prefix and with TF-era ``LayerNorm.gamma/beta`` names. Pooler and the pre-training
  heads are dropped (the papers' heads read [CLS] directly and are trained anew).

Each loader returns the ``LoadReport`` (missing / unexpected / shape-mismatched keys) and raises with the
list when a key the model needs is absent or has another shape.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from vislang.shared.checkpoint import LoadReport, load_into, load_state_dict, rename_keys

__all__ = ["CNN_RULES", "TEXT_RULES", "cnn_state_to_trunk", "load_cnn_weights", "load_text_weights", "text_state"]

# torchvision / timm ResNet names -> GridEncoder.trunk indices (conv1, bn1, act, maxpool, layer1..4)
CNN_RULES: list[tuple[str, str | None]] = [
    (r"^(module|model|backbone)\.", ""),
    (r"^(fc|head|global_pool)\..*", None),  # the ImageNet classifier
    (r"^conv1\.", "0."),
    (r"^bn1\.", "1."),
    *[(rf"^layer{i}\.", f"{i + 3}.") for i in range(1, 5)],
]

TEXT_RULES: list[tuple[str, str | None]] = [
    (r"^(module|model)\.", ""),
    (r"^(cls|pooler|bert\.pooler)\..*", None),  # pre-training heads and pooler: the papers use neither
    (r"(^|\.)position_ids$", None),  # a buffer in old checkpoints
    (r"^(embeddings|encoder)\.", r"bert.\1."),  # BertModel saved alone
    (r"\.gamma$", ".weight"),  # TF-converted LayerNorm names
    (r"\.beta$", ".bias"),
]


def cnn_state_to_trunk(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision / timm ResNet state dict renamed to ``GridEncoder.trunk`` keys (classifier dropped)."""
    return rename_keys(state, CNN_RULES)


def load_cnn_weights(trunk: nn.Module, path: str | os.PathLike[str]) -> LoadReport:
    """Load an ImageNet ResNet / ResNeXt checkpoint (torchvision or timm layout) into ``GridEncoder.trunk``."""
    state = cnn_state_to_trunk(load_state_dict(path))
    if not state:
        raise ValueError(
            f"cnn_weights {path}: no ResNet keys (conv1/bn1/layer1..4) found; expected a torchvision "
            "or timm ResNet state dict"
        )
    report = load_into(trunk, state)
    _refuse(report, "cnn_weights", path, "the preset's CNN (e.g. a ResNet-101 file for soho_r101)")
    return report


def text_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face BERT state dict renamed to ``SingleStreamModel`` keys (``bert.embeddings``, ``bert.encoder``)."""
    return rename_keys(state, TEXT_RULES)


def load_text_weights(model: nn.Module, path: str | os.PathLike[str]) -> LoadReport:
    """Load Hugging Face ``bert-base-uncased``-layout weights into ``model.bert`` (a ``SingleStreamModel``)."""
    state = {k: v for k, v in text_state(load_state_dict(path)).items() if k.startswith("bert.")}
    if not state:
        raise ValueError(
            f"text_weights {path}: no BERT keys (bert.embeddings.*, bert.encoder.*) found; expected a "
            "Hugging Face bert-base-uncased checkpoint"
        )
    report = load_into(model.bert, {k.removeprefix("bert."): v for k, v in state.items()})
    _refuse(report, "text_weights", path, "a BERT of the preset's depth and width with the tokenizer's vocabulary")
    return report


def _refuse(report: LoadReport, argument: str, path: str | os.PathLike[str], fix: str) -> None:
    """One line naming the argument, the file, what did not fit (first keys) and the fix."""
    if report.missing or report.mismatched:
        shapes = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in report.mismatched[:3]]
        raise ValueError(
            f"{argument} {path} does not fit the model: {len(report.missing)} missing (e.g. "
            f"{report.missing[:3]}), {len(report.mismatched)} shape-mismatched (e.g. {shapes}); "
            f"pass {fix}"
        )
