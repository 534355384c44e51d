"""Import of the official SOHO checkpoint layout, and the pretrained-start arguments of both paper modules.

The official-layout checkpoint is assembled from parts in their official names: the neck's state dict as the
official ``SimpleVDforPreGate`` wrote it into the golden fixture (random values, after a training step), an
mmdet ResNet (torchvision names), the ``VLBert`` (Hugging Face BERT names) under ``language.bert.``, the ITM
head's ``head.match_class`` and the tied ``mask_l_fc``; wrapped as an mmcv checkpoint ({meta, state_dict}).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.models.resnet import BasicBlock, ResNet
from transformers import BertConfig, BertModel

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR
from vislang.singlestream.model import GridEncoder, SingleStreamModel
from vislang.soho.convert import load_official
from vislang.soho.model import SOHOEmbedder, VisualDictionary

GOLDEN = Path(__file__).parent / "golden"


def _official_checkpoint(path: Path) -> tuple[dict, dict]:
    fx, meta = load_file(GOLDEN / "neck.safetensors"), json.loads((GOLDEN / "neck.json").read_text())
    torch.manual_seed(0)
    backbone = ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 8, meta["in_channels"]), stem_width=4)
    config = BertConfig(
        vocab_size=50,
        hidden_size=meta["out_channels"],
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    bert = BertModel(config, add_pooling_layer=False)
    state = {
        f"backbone.{k}": torch.randn(v.shape) if v.is_floating_point() else v
        for k, v in backbone.state_dict().items()
        if not k.startswith("fc.")
    }
    state.update({f"neck.{k.removeprefix('after_train.')}": v for k, v in fx.items() if k.startswith("after_train.")})
    state.update({f"language.bert.{k}": torch.randn(v.shape) for k, v in bert.state_dict().items()})
    state["head.match_class.weight"] = torch.randn(2, meta["out_channels"])
    state["mask_l_fc.weight"] = state["language.bert.embeddings.word_embeddings.weight"]
    torch.save({"meta": {"epoch": 40, "mmcv_version": "0.4.3"}, "state_dict": state}, path)
    model = SingleStreamModel(
        GridEncoder(
            ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 8, meta["in_channels"]), stem_width=4),
            meta["out_channels"],
            valid_mask="official",
        ),
        SOHOEmbedder(
            meta["out_channels"], VisualDictionary(meta["num_tokens"], meta["out_channels"]), vd_statistics="all"
        ),
        config,
        num_answers=5,
    )
    return state, {"model": model, "fx": fx, "meta": meta}


def test_official_release_layout_loads_and_runs_the_official_neck(tmp_path):
    state, parts = _official_checkpoint(tmp_path / "soho_official.pth")
    model, fx, meta = parts["model"], parts["fx"], parts["meta"]
    report = load_official(model, tmp_path / "soho_official.pth")
    # what the official code does not have stays as initialised, and is listed
    assert sorted({k.split(".")[0] for k in report.missing}) == ["embedder", "nlvr2_head", "snli_ve_head", "vqa_head"]
    assert [k for k in report.missing if k.startswith("embedder")] == ["embedder.dictionary.updates"]
    assert not report.unexpected and not report.mismatched
    own = model.state_dict()
    assert torch.equal(own["encoder.trunk.6.0.conv1.weight"], state["backbone.layer3.0.conv1.weight"])
    assert torch.equal(
        own["bert.encoder.layer.0.attention.self.query.weight"],
        state["language.bert.encoder.layer.0.attention.self.query.weight"],
    )
    assert torch.equal(own["itm_head.fc.weight"], state["head.match_class.weight"])
    assert model.mlm_head.word_embeddings.weight is model.bert.embeddings.word_embeddings.weight
    # the imported neck reproduces the official eval-mode tokens of the fixture
    model.eval()
    mask = torch.zeros(3, *meta["pad_shape"], dtype=torch.bool)
    for b, (h, w, _) in enumerate(meta["img_shapes"]):
        mask[b, :h, :w] = True
    with torch.no_grad():
        grid = model.encoder.neck(fx["c5"])
        visual = model.embed_visual(grid, model.encoder.valid_cells(mask, grid.shape[2:]), pretraining=True)
    assert torch.allclose(visual.tokens, fx["eval.tokens"], atol=1e-5)


def test_official_import_names_what_is_missing(tmp_path):
    state, parts = _official_checkpoint(tmp_path / "full.pth")
    del state["neck.gate_fc.bn.running_var"], state["backbone.layer4.0.conv2.weight"]
    torch.save({"state_dict": state}, tmp_path / "cut.pth")
    with pytest.raises(
        ValueError,
        match=r"cut.pth does not fit this SOHO model: missing \[.encoder\.trunk\.7\.0\.conv2\.weight., .embedder\.gate\.norm\.running_var.\]",
    ):
        load_official(parts["model"], tmp_path / "cut.pth")


@pytest.mark.parametrize("package", ["soho", "pixelbert"])
def test_modules_start_from_cnn_and_text_weights(package, tmp_path):
    from vislang.pixelbert.model import PixelBERTSpec
    from vislang.pixelbert.module import PixelBERTModule
    from vislang.soho.model import SOHOSpec
    from vislang.soho.module import SOHOModule

    cls, spec = (SOHOModule, SOHOSpec) if package == "soho" else (PixelBERTModule, PixelBERTSpec)
    torch.manual_seed(0)
    donor = cls(spec(preset="tiny"), tokenizer=SYNTHETIC_TOKENIZER_DIR, num_answers=4)
    # the tiny CNN is a timm ResNet: its state dict is in the timm layout; BERT's in the Hugging Face layout
    cnn = {k: torch.randn(v.shape) for k, v in _timm_names(donor.model.encoder.trunk.state_dict()).items()}
    save_file(cnn, str(tmp_path / "cnn.safetensors"))
    text = {f"bert.{k}": torch.randn(v.shape) for k, v in donor.model.bert.state_dict().items()}
    text["cls.seq_relationship.weight"] = torch.randn(2, 64)
    save_file(text, str(tmp_path / "bert.safetensors"))
    module = cls(
        spec(preset="tiny"),
        tokenizer=SYNTHETIC_TOKENIZER_DIR,
        num_answers=4,
        cnn_weights=str(tmp_path / "cnn.safetensors"),
        text_weights=str(tmp_path / "bert.safetensors"),
    )
    own = module.model.state_dict()
    assert torch.equal(own["encoder.trunk.7.0.conv2.weight"], cnn["layer4.0.conv2.weight"])
    assert torch.equal(
        own["bert.encoder.layer.1.output.dense.weight"], text["bert.encoder.layer.1.output.dense.weight"]
    )


def _timm_names(trunk_state: dict) -> dict:
    names = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
    return {names[k.split(".", 1)[0]] + "." + k.split(".", 1)[1]: v for k, v in trunk_state.items()}
