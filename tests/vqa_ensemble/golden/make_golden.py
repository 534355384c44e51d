"""Golden fixture of MCAN-large from the official code (not run by CI).

Official repository: https://github.com/MILVLG/mcan-vqa at commit 6b165e9 (merge of PR #21, "fix grad_accu bug").
Files used: ``cfgs/base_cfgs.py`` + ``cfgs/large_model.yml`` (the configuration, through the official
``Cfgs.add_args`` / ``Cfgs.proc`` path that ``run.py`` takes) and ``core/model/{net,mca,net_utils}.py`` (the
network, ``core.model.net.Net``). Nothing is stubbed: those modules import only torch.

    git clone https://github.com/MILVLG/mcan-vqa /tmp/mcan-vqa && git -C /tmp/mcan-vqa checkout 6b165e9
    OMP_NUM_THREADS=1 python tests/vqa_ensemble/golden/make_golden.py --official /tmp/mcan-vqa

Sizes: the large configuration as published (6 encoder + 6 decoder layers, hidden 1024, 8 heads, FF 4096,
AttFlat MLP 512 / out 2048, 2048-d image features, 14 question tokens) with the real 3129-answer classifier.
Only the GloVe token vocabulary is small (64 tokens): the embedding and LSTM are the part the entry replaces by
BERT and are not compared. The questions (2) and regions (20 per image, the second image zero-padded after 13,
which is how MCAN marks padding) are few.

MCAN-large has 2.0e8 parameters (800 MB in float32), so its weights cannot be committed as values. Every
parameter and buffer (LayerNorm ``a_2`` / ``b_2`` included) is instead drawn from NumPy's legacy
``RandomState(SEED)`` Mersenne-Twister stream, whose output NumPy guarantees never to change (NEP 19), in the
official state dict's key order: ``loc + scale * standard_normal(shape)`` in float64, cast to float32.
``mcan_large_weights.json`` records, per official key, the shape, ``loc``, ``scale``, the sum and the first
values of the tensor the official network was run with; ``regenerate`` rebuilds the official-layout state dict
and the test checks those sums before converting it. ``mcan_large_io.safetensors`` holds the inputs and the
official outputs: the LSTM question features (the first tensor both networks take), both AttFlat vectors,
the answer logits (``proj`` output) and the sigmoid scores ``Net.forward`` returns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "mcan_large_weights.json"
IO = HERE / "mcan_large_io.safetensors"
SEED = 2019
TOKENS, ANSWERS, MAX_TOKEN, REGIONS = 64, 3129, 14, 20


def init_spec(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(loc, scale) of a tensor's random values: unit-gain Linears, LayerNorm gains around 1, small biases."""
    if key.endswith("a_2"):
        return 1.0, 0.2
    if key.endswith(("b_2", "bias")) or "bias_" in key:
        return 0.0, 0.1
    if len(shape) == 2 and not key.startswith("embedding"):
        return 0.0, float(shape[1]) ** -0.5
    return 0.0, 1.0


def regenerate(manifest: dict) -> dict[str, torch.Tensor]:
    """The official-layout state dict described by ``mcan_large_weights.json`` (see the module docstring)."""
    rs = np.random.RandomState(manifest["seed"])
    out = {}
    for t in manifest["tensors"]:
        values = t["loc"] + t["scale"] * rs.standard_normal(t["shape"])
        out[t["key"]] = torch.from_numpy(values.astype(np.float32))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", required=True, type=Path, help="a checkout of MILVLG/mcan-vqa at 6b165e9")
    args = p.parse_args()
    official = args.official.resolve()
    os.chdir(official)  # cfgs/path_cfgs.py creates results/ and ckpts/ folders relative to the working directory
    sys.path.insert(0, str(official))
    import yaml
    from cfgs.base_cfgs import Cfgs
    from core.model.net import Net

    cfg = Cfgs()
    with open(official / "cfgs" / "large_model.yml") as f:
        cfg.add_args(yaml.safe_load(f))
    cfg.add_args({"USE_GLOVE": False, "RUN_MODE": "val", "SEED": SEED})
    cfg.proc()
    torch.set_num_threads(1)
    assert (cfg.HIDDEN_SIZE, cfg.MULTI_HEAD, cfg.FF_SIZE, cfg.LAYER) == (1024, 8, 4096, 6), "not the large config"

    net = Net(cfg, None, TOKENS, ANSWERS).eval()
    tensors = []
    for key, value in net.state_dict().items():
        loc, scale = init_spec(key, tuple(value.shape))
        tensors.append({"key": key, "shape": list(value.shape), "loc": loc, "scale": scale})
    manifest = {
        "official": "MILVLG/mcan-vqa@6b165e9 core/model/net.py Net, cfgs/large_model.yml",
        "config": {
            k: getattr(cfg, k)
            for k in (
                "LAYER",
                "HIDDEN_SIZE",
                "MULTI_HEAD",
                "FF_SIZE",
                "FLAT_MLP_SIZE",
                "FLAT_GLIMPSES",
                "FLAT_OUT_SIZE",
                "IMG_FEAT_SIZE",
                "WORD_EMBED_SIZE",
                "DROPOUT_R",
            )
        },
        "token_size": TOKENS,
        "answer_size": ANSWERS,
        "seed": SEED,
        "tensors": tensors,
    }
    state = regenerate(manifest)
    net.load_state_dict(state, strict=True)
    for t in tensors:
        values = state[t["key"]].double()
        t["sum"], t["first"] = float(values.sum()), values.flatten()[:4].tolist()

    # Fixed inputs: word indices (0 = padding, as MCAN's tokeniser pads) and 2048-d region features, the
    # second image with 13 real regions and 7 all-zero rows (MCAN's make_mask treats those as padding).
    g = torch.Generator().manual_seed(0)
    ques_ix = torch.randint(1, TOKENS, (2, MAX_TOKEN), generator=g)
    ques_ix[0, 9:] = 0
    ques_ix[1, 6:] = 0
    img_feat = torch.rand(2, REGIONS, cfg.IMG_FEAT_SIZE, generator=g) * 2.0
    img_feat[1, 13:] = 0

    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda module, inputs, output: captured.__setitem__(name, output[0] if name == "lstm" else output)

    for name in ("lstm", "attflat_lang", "attflat_img", "proj"):
        getattr(net, name).register_forward_hook(keep(name))
    with torch.no_grad():
        scores = net(img_feat, ques_ix)
    io = {
        "ques_ix": ques_ix,
        "img_feat": img_feat,
        "lang_feat": captured["lstm"].contiguous(),
        "attflat_lang": captured["attflat_lang"],
        "attflat_img": captured["attflat_img"],
        "logits": captured["proj"],
        "scores": scores,
    }
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in io.items()}, str(IO), metadata={"official": manifest["official"]})
    WEIGHTS.write_text(json.dumps(manifest, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size / 1e3:.0f} kB), {IO} ({IO.stat().st_size / 1e3:.0f} kB)")
    print(f"{sum(v.numel() for v in state.values()) / 1e6:.1f} M parameters; scores[0, :5] = {scores[0, :5].tolist()}")


if __name__ == "__main__":
    main()
