"""Tiny checkpoints of each served model, built in tmp folders (untrained: these tests check the app's
plumbing, not the models' quality; the browser test uses a trained PixelLM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR


def save_lightning_checkpoint(module: lightning.LightningModule, path: Path, **extra: Any) -> Path:
    """The entries `Trainer.save_checkpoint` writes that `load_from_checkpoint` reads (no trainer run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
            **extra,
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def pixellm_ckpt(tmp_path_factory) -> Path:
    from vislang.pixellm.module import PixelLMModule

    torch.manual_seed(0)
    module = PixelLMModule(
        preset="tiny", tokenizer=str(SYNTHETIC_TOKENIZER_DIR), prompt_template="<image> {question}", max_new_tokens=12
    )
    return save_lightning_checkpoint(module, tmp_path_factory.mktemp("pixellm") / "last.ckpt")


@pytest.fixture(scope="session")
def vlab_ckpt(tmp_path_factory) -> Path:
    from vislang.vlab.module import VLABModule

    torch.manual_seed(0)
    module = VLABModule(
        preset="tiny", decoder_tokenizer=str(SYNTHETIC_TOKENIZER_DIR), max_answer_tokens=3, max_caption_tokens=6
    )
    data = {"eval_num_frames": 2, "tasks": ["retrieval", "qa"]}
    return save_lightning_checkpoint(
        module, tmp_path_factory.mktemp("vlab") / "last.ckpt", datamodule_hyper_parameters=data
    )


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> Path:
    """Four synthetic MSRVTT videos and one file that is not a video, in one folder."""
    from vislang.shared.data.synthetic import SyntheticWorld
    from vislang.shared.data.synthetic.writers import write_msrvtt

    root = tmp_path_factory.mktemp("msrvtt")
    write_msrvtt(SyntheticWorld(seed=0, image_size=32, num_videos=4, num_frames=4), root, 4)
    (root / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return root / "videos"


@pytest.fixture(scope="session")
def cmae_ckpt(tmp_path_factory) -> Path:
    from vislang.cmae.module import CMAEPretrainModule

    torch.manual_seed(0)
    module = CMAEPretrainModule(preset="tiny", mask_type="random")
    return save_lightning_checkpoint(module, tmp_path_factory.mktemp("cmae") / "last.ckpt")


@pytest.fixture(scope="session")
def vqa_ensemble(tmp_path_factory) -> dict[str, Path]:
    """An untrained detector, a region member and a grid member whose feature specs name that detector
    (as `extract` records them), and a weights file as `lightning validate` writes it."""
    from vislang.vqa_ensemble import extract
    from vislang.vqa_ensemble.detector import build_detector
    from vislang.vqa_ensemble.module import VQAModule

    root = tmp_path_factory.mktemp("vqa")
    torch.manual_seed(0)
    args = {
        "backbone": "resnet18",
        "num_classes": 6,
        "min_size": [56, 64],
        "max_size": 128,
        "anchor_sizes": [8, 16, 32, 64, 128],
        "representation_size": 32,
        "norm": "bn",
        "rpn_batch_size_per_image": 64,
        "box_batch_size_per_image": 32,
        "rpn_proposals": 100,
    }
    detector = build_detector(**args).eval()
    detector_path = root / "detector" / "last.ckpt"
    detector_path.parent.mkdir(parents=True)
    torch.save(
        {"state_dict": {f"detector.{k}": v for k, v in detector.state_dict().items()}, "hyper_parameters": args},
        detector_path,
    )
    members = []
    for kind, answers, options in (
        ("region", ["yes", "no", "red", "2"], ["--min-boxes", "2", "--max-boxes", "6"]),
        ("grid", ["yes", "no", "blue", "3", "circle"], ["--grid-size", "3"]),
    ):
        # the spec a feature store of this detector records (what a member trained on it keeps)
        _, spec = extract.build_extractor(
            extract.parser().parse_args(
                [
                    "--images",
                    "-",
                    "--out",
                    "-",
                    "--kind",
                    kind,
                    "--detector",
                    str(detector_path),
                    "--dtype",
                    "float16",
                    *options,
                ]
            )
        )
        member = VQAModule(preset="tiny", feature_set=kind, text_model="tiny", tokenizer=str(SYNTHETIC_TOKENIZER_DIR))
        member.build(answers, spec["feature_dim"], spec)
        info = {"answers": answers, "visual_dim": spec["feature_dim"], "feature_spec": spec}
        members.append(save_lightning_checkpoint(member, root / kind / "last.ckpt", vqa_member=info))
    weights = root / "ensemble" / "weights.json"
    weights.parent.mkdir()
    weights.write_text(json.dumps({"weights": [0.3, 0.7], "members": [str(m) for m in members]}))
    return {"weights": weights, "detector": detector_path, "region": members[0], "grid": members[1]}
