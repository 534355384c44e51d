"""`lightning fit --model.help <module>` (and `--data.help <data module>`) shows every argument of every
package's Lightning and data modules with its doc.

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
DATA_MODULES = [
    "vislang.vlab.data.VLABDataModule",
    "vislang.cmae.data.CMAEPretrainDataModule",
    "vislang.cmae.data.CMAEClassificationDataModule",
    "vislang.pixellm.data.PixelLMDataModule",
    "vislang.singlestream.data.SingleStreamDataModule",
    "vislang.vqa_ensemble.data.VQADataModule",
    "vislang.vqa_ensemble.data.COCODetectionDataModule",
]


def _help(class_path: str, capsys, monkeypatch, group: str = "model") -> str:
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit):
        build_cli(["fit", f"--{group}.help", class_path])
    return capsys.readouterr().out


def _option_docs(text: str, group: str) -> dict[str, str]:
    """Each ``--<group>.<name>`` option of a help text -> its doc (what precedes ``(type: ...)``)."""
    docs: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        option = re.match(rf"^  --{group}\.([\w.]+)(?:[ ,]\S+)*(?:\s{{2,}}(.*))?$", line)
        if option and not option.group(1).endswith("help"):
            name = option.group(1)
            docs[name] = option.group(2) or ""
        elif name and re.match(r"^\s{10,}\S", line):
            docs[name] += " " + line.strip()
        else:
            name = None
    return {key: doc.split("(type:")[0].strip() for key, doc in docs.items()}


def _class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


@pytest.mark.parametrize(("group", "class_path"), [("model", m) for m in MODULES] + [("data", d) for d in DATA_MODULES])
def test_every_module_argument_is_shown_with_its_doc(group: str, class_path: str, capsys, monkeypatch) -> None:
    cls = _class(class_path)
    text = _help(class_path, capsys, monkeypatch, group)
    options = re.findall(rf"^\s+--{group}\.([\w.]+)[ ,]", text, flags=re.M)
    own = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "kwargs", "args")]
    for name in own:
        assert any(o == name or o.startswith(f"{name}.") for o in options), f"{class_path}: --{group}.{name} not shown"
    # every shown option has a doc before its "(type: ...)" (jsonargparse prints only the type otherwise)
    undocumented = [name for name, doc in _option_docs(text, group).items() if not doc]
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
