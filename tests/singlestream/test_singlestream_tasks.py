"""Single-stream phases (pre-training, then tasks in turn) and retrieval fine-tuning with sampled negatives."""

import sys

import pytest
import torch
from PIL import Image

from vislang.shared.data.vl import CaptionedImage
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR
from vislang.singlestream.data import ImageTransform, RetrievalRankDataset, SingleStreamDataModule


def test_phases_run_pretraining_then_each_task_in_turn(tmp_path):
    dm = SingleStreamDataModule(str(tmp_path), pretrain_epochs=2, task=["retrieval", "vqa"], task_epochs=[3])
    assert [dm.phase(e) for e in range(8)] == ["pretrain"] * 2 + ["retrieval"] * 3 + ["vqa"] * 3
    assert [SingleStreamDataModule(str(tmp_path), task="nlvr2").phase(e) for e in range(2)] == ["nlvr2"] * 2
    assert SingleStreamDataModule(str(tmp_path), pretrain_epochs=1, task=None).phase(5) == "pretrain"


@pytest.mark.parametrize(
    ("task", "task_epochs", "message"),
    [
        (["retrieval", "vqa"], None, "task_epochs"),
        (["vqa"], [2], "task_epochs"),
        (["retrieval", "vqa"], [0], "task_epochs"),
        (["vqa", "vqa"], [1], "distinct"),
        (["captioning"], None, "distinct tasks"),
    ],
)
def test_bad_task_schedules_are_refused(tmp_path, task, task_epochs, message):
    with pytest.raises(ValueError, match=message):
        SingleStreamDataModule(str(tmp_path), task=task, task_epochs=task_epochs)


def _images(tmp_path, count=6):
    out = []
    for i in range(count):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(path)
        out.append(CaptionedImage(i, path, (f"image {i} caption a", f"image {i} caption b"), "train"))
    return out


def test_retrieval_items_put_an_own_caption_first_and_other_images_captions_after(tmp_path):
    images = _images(tmp_path)
    dataset = RetrievalRankDataset(images, ImageTransform(32, 32), num_negatives=4)
    assert len(dataset) == 12  # one item per caption
    for index in range(len(dataset)):
        item = dataset[index]
        own = images[dataset.pairs[index][0]].captions
        assert item["texts"][0] == own[dataset.pairs[index][1]]
        assert len(item["texts"]) == 5 and not set(item["texts"][1:]) & set(own)
        assert item["task"] == "retrieval" and item["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="num_negatives"):
        RetrievalRankDataset(images, ImageTransform(32, 32), num_negatives=0)


@pytest.fixture(scope="module")
def tiny_module():
    from vislang.pixelbert.model import PixelBERTSpec
    from vislang.pixelbert.module import PixelBERTModule

    torch.manual_seed(0)
    return PixelBERTModule(
        PixelBERTSpec(preset="tiny"), tokenizer=SYNTHETIC_TOKENIZER_DIR, num_answers=8, max_text_len=40
    ).eval()


def test_pair_scores_equal_the_retrieval_evaluation_scores(tiny_module):
    texts = ["a red circle", "two blue squares on a striped background", "a star", "a large green cross"]
    images, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    tiny_module.retrieval_texts = texts
    with torch.no_grad():
        every = tiny_module.itm_scores(images, mask)  # (2 images, 4 texts), text chunks of eval_text_chunk
        paired = tiny_module.pair_scores(images, mask, [texts[1:3], texts[2:4]])
    assert torch.allclose(paired, torch.stack([every[0, 1:3], every[1, 2:4]]), atol=1e-5)


def test_retrieval_loss_is_softmax_cross_entropy_with_the_positive_first(tiny_module):
    texts = [["a red circle", "a star", "a blue square"], ["a star", "a red circle", "a blue square"]]
    batch = {
        "task": ["retrieval"] * 2,
        "image": torch.randn(2, 3, 64, 64),
        "texts": texts,
        "pixel_mask": torch.ones(2, 64, 64, dtype=torch.bool),
    }
    with torch.no_grad():
        out = tiny_module.task_losses(batch)
        scores = tiny_module.pair_scores(batch["image"], batch["pixel_mask"], texts)
    expected = -scores.log_softmax(1)[:, 0].mean()
    assert torch.allclose(out["loss_rank"], expected, atol=1e-5)
    assert out["acc_rank"] == (scores.argmax(1) == 0).float().mean()


def test_cli_runs_pretraining_retrieval_and_vqa_phases_and_scores_each_in_its_epoch(tmp_path, monkeypatch):
    from pathlib import Path

    from vislang.shared.cli import build_cli

    monkeypatch.setattr(sys, "argv", ["lightning"])
    config = Path(__file__).parents[2] / "packages" / "pixelbert" / "configs" / "demo.yaml"
    cli = build_cli(
        [
            "fit",
            f"--config={config}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=3",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
            f"--model.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
            f"--data.init_args.root={tmp_path / 'data'}",
            "--data.init_args.synthetic_images=40",
            "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=4",
            "--data.init_args.pretrain_epochs=1",
            "--data.init_args.task=[retrieval, vqa]",
            "--data.init_args.task_epochs=[1]",
            "--data.init_args.retrieval_negatives=3",
        ],
        run=True,
    )
    scores = cli.model.scores
    assert scores["retrieval"]["epoch"] == 1 and scores["vqa"]["epoch"] == 2
    assert 0 <= scores["retrieval"]["tr/R@1"] <= 100 and 0 <= scores["vqa"]["overall"] <= 100


def test_vqa_prior_baselines_by_hand():
    from types import SimpleNamespace as Q

    from vislang.shared.metrics import vqa_prior_baselines

    train = [Q(multiple_choice_answer="red", question_type="what color")] * 2 + [
        Q(multiple_choice_answer="yes", question_type="is there")
    ]
    evaluated = [
        Q(question_type="what color", answers=["red"] * 10),
        Q(question_type="is there", answers=["yes"] * 10),
        Q(question_type="how many", answers=["red"] * 2 + ["2"] * 8),
    ]
    priors = vqa_prior_baselines(train, evaluated)
    # majority "red": 1 + 0 + 0.6 (2 of 10 annotators); per type: 1 + 1 + 0.6 (unseen type -> majority)
    assert priors["answer"] == "red"
    assert priors["majority"] == pytest.approx(100 * 1.6 / 3)
    assert priors["per_question_type"] == pytest.approx(100 * 2.6 / 3)
