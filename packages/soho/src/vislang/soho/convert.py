"""Import checkpoints of the official SOHO code (``researchmm/soho``) into ``vislang.soho``.

The official release (``soho_res18_fp16_40-9441cdd3.pth``, an mmcv checkpoint of ``SOHOSingleStreamPre`` /
``SOHOSingleStreamVQA``: ResNet-18 + 3-layer BERT, so preset ``soho_r18``) names its parts

    backbone.*             mmdet ResNet (torchvision names)        -> encoder.trunk.*
    neck.conv.{conv,bn}.*  1x1 ConvModule of the neck              -> encoder.proj.{0,1}.*
    neck.vq.*              the visual dictionary's buffers         -> embedder.dictionary.*
    neck.pos_line.*        Linear on the quantised features        -> embedder.align.*
    neck.gate_fc.{conv,bn} 1x1 ConvModule (2D -> 2) + BN           -> embedder.gate.{proj,norm}
    neck.mask_emb.weight   nn.Embedding(1, D)                      -> embedder.mask_embedding (D,)
    neck.ln.*              LayerNorm                               -> embedder.norm.*
    language.bert.*        VLBert (Hugging Face BERT names)        -> bert.*
    head.match_class       ITM Linear(D, 2, bias=False)            -> itm_head.fc
    head.vqa.{0,3}         VQA MLP (VQA checkpoints)               -> vqa_head.mlp.{0,3}
    mask_l_fc.weight       MLM weight, tied to the word embeddings -> dropped (tied here too)
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from vislang.shared.checkpoint import LoadReport, load_into, load_state_dict, rename_keys
from vislang.singlestream.convert import CNN_RULES

__all__ = ["NECK_RULES", "convert_official", "convert_official_neck", "load_official"]

NECK_RULES: list[tuple[str, str | None]] = [
    (r"^conv\.conv\.", "encoder.proj.0."),
    (r"^conv\.bn\.", "encoder.proj.1."),
    (r"^vq\.", "embedder.dictionary."),
    (r"^pos_line\.", "embedder.align."),
    (r"^gate_fc\.conv\.", "embedder.gate.proj."),
    (r"^gate_fc\.bn\.", "embedder.gate.norm."),
    (r"^mask_emb\.weight$", "embedder.mask_embedding"),
    (r"^ln\.", "embedder.norm."),
    (r"^begin_line\..*", None),  # begin_align=False in every official config
]


def convert_official_neck(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official pre-training neck's state dict (``SimpleVDforPreGate``, keys without ``neck.``) in our names."""
    out = rename_keys(state, NECK_RULES)
    if "embedder.gate.proj.weight" in out:  # 1x1 conv (2, 2D, 1, 1) -> Linear (2, 2D)
        out["embedder.gate.proj.weight"] = out["embedder.gate.proj.weight"].flatten(1)
    if "embedder.mask_embedding" in out:  # nn.Embedding(1, D) -> (D,)
        out["embedder.mask_embedding"] = out["embedder.mask_embedding"].reshape(-1)
    return out


def convert_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A whole official SOHO checkpoint (pre-training or VQA) in ``SingleStreamModel`` names."""
    out: dict[str, Tensor] = {}
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    out.update({f"encoder.trunk.{k}": v for k, v in rename_keys(backbone, CNN_RULES).items()})
    out.update(convert_official_neck({k.removeprefix("neck."): v for k, v in state.items() if k.startswith("neck.")}))
    rest = {k: v for k, v in state.items() if not k.startswith(("backbone.", "neck."))}
    out.update(
        rename_keys(
            rest,
            [
                (r"^language\.bert\.", "bert."),
                (r"(^|\.)position_ids$", None),
                (r"^head\.match_class\.", "itm_head.fc."),
                (r"^head\.vqa\.", "vqa_head.mlp."),
                (r"^mask_l_fc\.weight$", None),  # tied to bert.embeddings.word_embeddings
            ],
        )
    )
    if "bert.embeddings.word_embeddings.weight" in out:
        out["mlm_head.word_embeddings.weight"] = out["bert.embeddings.word_embeddings.weight"]
    return out


def load_official(model: nn.Module, path: str | os.PathLike[str]) -> LoadReport:
    """Load an official SOHO checkpoint file into a ``SOHOSpec(preset="soho_r18").build(...)`` model; returns the report.

    Heads the official code does not have (NLVR2, SNLI-VE, and VQA for a pre-training checkpoint) and the
    dictionary's ``updates`` counter stay as initialised; any other missing or mismatched key raises.
    """
    state = convert_official(load_state_dict(path))
    report = load_into(model, state)
    optional = ("nlvr2_head.", "snli_ve_head.", "vqa_head.", "embedder.dictionary.updates")
    needed = [k for k in report.missing if not k.startswith(optional)]
    if needed or report.mismatched:
        shapes = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in report.mismatched[:5]]
        raise ValueError(
            f"{path} does not fit this SOHO model: missing {needed[:5]}, shape-mismatched {shapes} "
            "(preset soho_r18 with the bert-base-uncased tokenizer matches the official release)"
        )
    return report
