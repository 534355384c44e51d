"""Pretrained starts: ImageNet CNN (torchvision / timm layouts) and BERT (Hugging Face layout) into the single-stream model.

Layouts are built by the libraries themselves (torchvision, timm, transformers) with random values; the
paper-sized ones on the meta device (names and shapes only), small ones with values through a file.
"""

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from timm.models.resnet import Bottleneck as TimmBottleneck
from timm.models.resnet import ResNet as TimmResNet
from transformers import BertForPreTraining

from vislang.shared.checkpoint import load_into
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer
from vislang.singlestream.convert import cnn_state_to_trunk, load_cnn_weights, load_text_weights, text_state
from vislang.singlestream.model import (
    GridEncoder,
    SingleStreamModel,
    VisualEmbedder,
    bert_base_config,
    build_cnn,
    text_config,
)

LIBRARY_CNNS = {
    ("torchvision", "resnet50"): lambda: torchvision.models.resnet50(),
    ("torchvision", "resnet101"): lambda: torchvision.models.resnet101(),
    ("torchvision", "resnext152_32x8d"): lambda: torchvision.models.ResNet(
        torchvision.models.resnet.Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=8
    ),
    ("timm", "resnet50"): lambda: __import__("timm").create_model("resnet50", pretrained=False),
    ("timm", "resnet101"): lambda: __import__("timm").create_model("resnet101", pretrained=False),
    ("timm", "resnext152_32x8d"): lambda: TimmResNet(TimmBottleneck, [3, 8, 36, 3], cardinality=32, base_width=8),
}


def _random(state: dict) -> dict:
    return {
        k: (torch.randint(0, 5, v.shape) if v.dtype == torch.long else torch.randn(v.shape)) for k, v in state.items()
    }


@pytest.mark.parametrize(("library", "arch"), list(LIBRARY_CNNS))
def test_imagenet_layouts_fill_the_paper_cnns_exactly(library, arch):
    with torch.device("meta"):
        source = LIBRARY_CNNS[(library, arch)]().state_dict()
        encoder = GridEncoder(build_cnn(arch), 768)
    report = load_into(encoder.trunk, cnn_state_to_trunk(source))
    assert report.ok, str(report)  # nothing missing, nothing left over but the dropped classifier
    assert "fc.weight" in source


def test_cnn_weights_file_loads_every_value_and_lists_what_does_not_fit(tmp_path):
    torch.manual_seed(0)
    source = _random(torchvision.models.resnet50().state_dict())
    save_file({f"module.{k}": v for k, v in source.items()}, str(tmp_path / "r50.safetensors"))  # DDP prefix
    encoder = GridEncoder(build_cnn("resnet50"), 32)
    report = load_cnn_weights(encoder.trunk, tmp_path / "r50.safetensors")
    assert report.ok
    own = encoder.trunk.state_dict()
    assert torch.equal(own["0.weight"], source["conv1.weight"])
    assert torch.equal(own["6.5.conv2.weight"], source["layer3.5.conv2.weight"])
    assert torch.equal(own["7.0.downsample.1.running_var"], source["layer4.0.downsample.1.running_var"])
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(
        ValueError, match=r"cnn_weights .*r18.pth does not fit the model: 165 missing \(e.g. \[.4\.0\.conv3"
    ):
        load_cnn_weights(encoder.trunk, tmp_path / "r18.pth")


def test_bert_base_uncased_layout_fills_the_transformer():
    with torch.device("meta"):
        source = BertForPreTraining(bert_base_config()).state_dict()
        model = SingleStreamModel(GridEncoder(build_cnn("tiny"), 768), VisualEmbedder(), bert_base_config(), 10)
    state = text_state(source)
    assert not any(k.startswith(("cls.", "bert.pooler.")) for k in state)
    report = load_into(model.bert, {k.removeprefix("bert."): v for k, v in state.items()})
    assert report.ok, str(report)


def test_text_weights_file_loads_values_and_old_names(tmp_path):
    tok = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    config = text_config(tok, None, 64, 2)
    torch.manual_seed(0)
    source = _random(BertForPreTraining(config).state_dict())
    # TF-era names (LayerNorm.gamma/beta) and BertModel saved without the "bert." prefix
    old = {
        k.removeprefix("bert.")
        .replace("LayerNorm.weight", "LayerNorm.gamma")
        .replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in source.items()
    }
    save_file(old, str(tmp_path / "bert.safetensors"))
    model = SingleStreamModel(GridEncoder(build_cnn("tiny"), 64), VisualEmbedder(), config, 10)
    report = load_text_weights(model, tmp_path / "bert.safetensors")
    assert report.ok
    own = model.state_dict()
    for key in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.1.output.LayerNorm.weight"):
        assert torch.equal(own[key], source[key])
    assert own["mlm_head.word_embeddings.weight"] is not None  # tied: the MLM head reads the loaded embeddings
    assert torch.equal(model.mlm_head.word_embeddings.weight, source["bert.embeddings.word_embeddings.weight"])
    wide = SingleStreamModel(GridEncoder(build_cnn("tiny"), 96), VisualEmbedder(), text_config(tok, None, 96, 2), 10)
    with pytest.raises(
        ValueError,
        match=r"text_weights .* does not fit the model: 0 missing .*37 shape-mismatched .*embeddings\.position_embeddings\.weight \(128, 64\) vs \(128, 96\)",
    ):
        load_text_weights(wide, tmp_path / "bert.safetensors")
