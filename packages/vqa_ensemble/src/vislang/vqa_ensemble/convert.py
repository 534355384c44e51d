"""Checkpoint import: official MCAN weights (MILVLG/mcan-vqa) onto ``model.MCAN``.

MCAN's checkpoints (``ckpts/ckpt_<version>/epoch13.pkl``) hold ``{"state_dict": net.state_dict(), ...}``, keys
prefixed with ``module.`` when trained under ``nn.DataParallel``. The co-attention network maps one to one:

=====================================================  ===============================================
official (``core/model/{net,mca,net_utils}.py``)       here (``model.MCAN``)
=====================================================  ===============================================
``img_feat_linear``                                    ``visual_proj``
``backbone.enc_list.i.mhatt.linear_{q,k,v}``           ``encoder.i.att.in_proj_{weight,bias}`` (q, k, v stacked)
``backbone.enc_list.i.mhatt.linear_merge``             ``encoder.i.att.out_proj``
``backbone.enc_list.i.ffn.mlp.{fc.linear,linear}``     ``encoder.i.ffn.net.{0,3}``
``backbone.enc_list.i.norm{1,2}.{a_2,b_2}``            ``encoder.i.norm{1,2}.{weight,bias}``
``backbone.dec_list.i.mhatt{1,2}``                     ``decoder.i.{self_att,guided_att}``
``backbone.dec_list.i.norm{1,2,3}``                    ``decoder.i.norms.{0,1,2}``
``attflat_{lang,img}.mlp.{fc.linear,linear}``          ``flat_{text,image}.score.{0,3}``
``attflat_{lang,img}.linear_merge``                    ``flat_{text,image}.merge``
``proj_norm``, ``proj``                                ``norm``, ``classifier``
=====================================================  ===============================================

MCAN's GloVe ``embedding`` and ``lstm`` have no counterpart: the entry encodes the question with BERT
(``bert`` + ``text_proj`` keep their own weights). ``box_proj`` does not exist in MCAN (build with
``use_boxes=False`` for the official network).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, cat

__all__ = ["MCAN_TEXT_ENCODER_KEYS", "mcan_from_official"]

MCAN_TEXT_ENCODER_KEYS = ("embedding.", "lstm.")
"""Official MCAN keys replaced by BERT in the entry (not converted)."""

_NORM = {"a_2": "weight", "b_2": "bias"}
_FLAT = {"mlp.fc.linear": "score.0", "mlp.linear": "score.3", "linear_merge": "merge"}
_FFN = {"ffn.mlp.fc.linear": "ffn.net.0", "ffn.mlp.linear": "ffn.net.3"}


def _attention(sd: Mapping[str, Tensor], src: str, dst: str, out: dict[str, Tensor]) -> None:
    """MCAN's four Linears of one MHAtt -> ``nn.MultiheadAttention`` (stacked q, k, v input projection)."""
    for kind in ("weight", "bias"):
        out[f"{dst}.in_proj_{kind}"] = cat([_get(sd, f"{src}.linear_{p}.{kind}") for p in ("q", "k", "v")])
        out[f"{dst}.out_proj.{kind}"] = _get(sd, f"{src}.linear_merge.{kind}")


def _get(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise KeyError(f"official MCAN state dict has no {key!r}: not a mcan-vqa Net checkpoint (or another LAYER)")
    return sd[key]


def _copy(sd: Mapping[str, Tensor], src: str, dst: str, out: dict[str, Tensor], names=("weight", "bias")) -> None:
    for name in names:
        out[f"{dst}.{_NORM.get(name, name)}"] = _get(sd, f"{src}.{name}")


def mcan_from_official(checkpoint: Mapping[str, object]) -> dict[str, Tensor]:
    """``model.MCAN`` state-dict entries (co-attention, AttFlat, classifier) from an official MCAN checkpoint.

    Args:
        checkpoint: ``torch.load(epochN.pkl)`` (a dict with ``state_dict``) or the state dict itself; a
            ``module.`` prefix (DataParallel) is removed.

    Returns:
        The converted entries; load them with ``model.load_state_dict(out, strict=False)`` -- the BERT
        encoder, ``text_proj`` and ``box_proj`` are not part of MCAN.
    """
    sd = checkpoint.get("state_dict", checkpoint)
    if not isinstance(sd, Mapping):
        raise TypeError("checkpoint['state_dict'] is not a mapping: not a mcan-vqa checkpoint")
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.enc_list\.(\d+)\.", k))}
    if not layers:
        raise KeyError("official MCAN state dict has no 'backbone.enc_list.*' keys: not a mcan-vqa Net checkpoint")
    out: dict[str, Tensor] = {}
    _copy(sd, "img_feat_linear", "visual_proj", out)
    for i in range(max(layers) + 1):
        enc, dec = f"backbone.enc_list.{i}", f"backbone.dec_list.{i}"
        _attention(sd, f"{enc}.mhatt", f"encoder.{i}.att", out)
        _attention(sd, f"{dec}.mhatt1", f"decoder.{i}.self_att", out)
        _attention(sd, f"{dec}.mhatt2", f"decoder.{i}.guided_att", out)
        for src, dst in _FFN.items():
            _copy(sd, f"{enc}.{src}", f"encoder.{i}.{dst}", out)
            _copy(sd, f"{dec}.{src}", f"decoder.{i}.{dst}", out)
        for n in (1, 2):
            _copy(sd, f"{enc}.norm{n}", f"encoder.{i}.norm{n}", out, ("a_2", "b_2"))
        for n in (1, 2, 3):
            _copy(sd, f"{dec}.norm{n}", f"decoder.{i}.norms.{n - 1}", out, ("a_2", "b_2"))
    for src, dst in (("attflat_lang", "flat_text"), ("attflat_img", "flat_image")):
        for a, b in _FLAT.items():
            _copy(sd, f"{src}.{a}", f"{dst}.{b}", out)
    _copy(sd, "proj_norm", "norm", out, ("a_2", "b_2"))
    _copy(sd, "proj", "classifier", out)
    used = sum(v.numel() for v in out.values())
    expected = sum(v.numel() for k, v in sd.items() if not k.startswith(MCAN_TEXT_ENCODER_KEYS))
    if used != expected:  # a key this mapping does not know (another MCAN variant) must not be dropped silently
        raise KeyError(f"official MCAN state dict has {expected - used} values this converter does not map")
    return out
