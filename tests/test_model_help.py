"""`lightning fit --model.help <module>` shows every argument of every package's Lightning module with its doc.

Typed groups (SOHO's and Pixel-BERT's `paper:` and `optimiser:` dataclasses) are expanded field by field, so
a switch of the paper is found where the other arguments are, documented by its dataclass.
"""

from __future__ import annotations

import inspect
import re
import sys

import pytest

from vislang.shared.cli import build_cli

MODULES = [
    "vislang.vlab.module.VLABModule",
    "vislang.cmae.module.CMAEPretrainModule",
    "vislang.cmae.module.CMAEClassificationModule",
    "vislang.pixellm.module.PixelLMModule",
    "vislang.soho.module.SOHOModule",
    "vislang.pixelbert.module.PixelBERTModule",
    "vislang.vqa_ensemble.module.DetectorModule",
    "vislang.vqa_ensemble.module.VQAModule",
    "vislang.vqa_ensemble.module.VQAEnsemble",
]


def _help(class_path: str, capsys, monkeypatch) -> str:
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit):
        build_cli(["fit", "--model.help", class_path])
    return capsys.readouterr().out


def _class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


@pytest.mark.parametrize("class_path", MODULES)
def test_every_module_argument_is_shown_with_its_doc(class_path: str, capsys, monkeypatch) -> None:
    cls = _class(class_path)
    text = _help(class_path, capsys, monkeypatch)
    options = re.findall(r"^\s+--model\.([\w.]+)[ ,]", text, flags=re.M)
    own = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "kwargs", "args")]
    for name in own:
        assert any(o == name or o.startswith(f"{name}.") for o in options), f"{class_path}: --model.{name} not shown"
    # every shown option has a doc line before its "(type: ..." (jsonargparse prints only the type otherwise)
    undocumented = re.findall(r"^\s+--model\.([\w.]+) [A-Z_{\[][^\n]*\n\s+\(type:", text, flags=re.M)
    assert undocumented == [], f"{class_path}: no doc for {undocumented}"


@pytest.mark.parametrize(
    ("class_path", "switches"),
    [
        ("vislang.soho.module.SOHOModule", ["paper.mvm_anchor", "paper.vd_decay", "optimiser.cnn_lr", "tokenizer"]),
        ("vislang.pixelbert.module.PixelBERTModule", ["paper.num_samples", "paper.neck", "optimiser.lr_milestones"]),
    ],
)
def test_single_stream_paper_switches_are_expanded_in_the_module_help(
    class_path: str, switches: list[str], capsys, monkeypatch
) -> None:
    text = _help(class_path, capsys, monkeypatch)
    for switch in switches:
        assert f"--model.{switch} " in text, switch
