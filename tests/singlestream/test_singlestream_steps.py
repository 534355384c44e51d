"""Real optimisation steps of each paper model, end to end through Lightning, and skip-and-count of bad images.

SOHO's step has everything of its pre-training inside the model: the visual dictionary (quantisation and a
momentum update), MVM with the official ``batch`` anchor, MLM and ITM; Pixel-BERT's has random pixel sampling,
MLM and ITM. Both check that every parameter the pre-training losses reach receives a gradient and moves.
"""

from dataclasses import asdict

import pytest
import torch
from lightning.pytorch import Trainer

from vislang.shared.data.loaders import eval_loader
from vislang.shared.data.robust import FAILURES_KEY, TooManyLoadFailures
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR
from vislang.singlestream.data import SingleStreamDataModule, collate

# the task heads are trained by their tasks, not by pre-training
TASK_HEADS = ("model.vqa_head.", "model.nlvr2_head.", "model.snli_ve_head.")


def _pretrain_batch() -> dict:
    g = torch.Generator().manual_seed(3)
    texts = ["a red circle on a striped background", "two blue squares", "a large green star", "a yellow cross"]
    return {
        "task": ["pretrain"] * 4,
        "image": torch.randn(4, 3, 64, 64, generator=g),
        "text": texts,
        "pixel_mask": torch.ones(4, 64, 64, dtype=torch.bool),
        "matched": torch.tensor([True, False, True, False]),
        "index": torch.arange(4),
    }


def _fit_steps(module, tmp_path):
    """Two optimisation steps through Lightning on one batch (the tiny CNN is timm's ResNet, whose last BN
    of each residual branch starts at zero, so that branch's earlier layers get their first non-zero
    gradient in step 2); returns the losses, the parameters without a (non-zero) gradient in the last step,
    and those that did not move."""
    losses = {}
    task_losses = module.task_losses

    def recording(batch):
        out = task_losses(batch)
        losses.update({k: float(v.detach()) for k, v in out.items()})
        return out

    module.task_losses = recording
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([_pretrain_batch()] * 2, batch_size=None))
    reached = {n: p for n, p in module.named_parameters() if p.requires_grad and not n.startswith(TASK_HEADS)}
    no_grad = [n for n, p in reached.items() if p.grad is None or not p.grad.abs().sum() > 0]
    not_moved = [n for n, p in reached.items() if torch.equal(p.detach(), before[n])]
    return losses, no_grad, not_moved


def test_one_soho_pretraining_step_with_dictionary_mvm_mlm_itm(tmp_path):
    from vislang.singlestream.module import OptimiserRecipe
    from vislang.soho.model import SOHOSpec
    from vislang.soho.module import SOHOModule

    torch.manual_seed(0)
    # MVM with the official anchor (one position for the whole batch); every image masked at p = 1 so the
    # step has MVM targets (official 1.5 % per image would leave most batches without any)
    module = SOHOModule(
        SOHOSpec(preset="tiny", mvm_anchor="batch", mvm_mask_prob=1.0),
        tokenizer=SYNTHETIC_TOKENIZER_DIR,
        num_answers=4,
        optimiser=OptimiserRecipe(warmup_steps=0),
    )
    assert module.model.embedder.dictionary_downstream and module.paper.mvm_anchor == "batch"
    # the hyper-parameters a checkpoint stores are plain data (read back with weights_only=True)
    assert module.hparams["paper"]["mvm_anchor"] == "batch"
    assert module.hparams["optimiser"]["warmup_steps"] == 0
    table = module.model.embedder.dictionary.embed.clone()
    losses, no_grad, not_moved = _fit_steps(module, tmp_path)
    assert {"loss_mlm", "loss_itm", "loss_mvm"} <= set(losses) and losses["mvm_masked"] > 0
    assert all(losses[k] > 0 for k in ("loss_mlm", "loss_itm", "loss_mvm"))
    assert no_grad == [] and not_moved == []  # includes the CNN, neck, gate, align, mask embedding, BERT, ITM
    dictionary = module.model.embedder.dictionary
    assert int(dictionary.updates) == 2 and not torch.equal(dictionary.embed, table)  # the momentum update ran


def test_one_pixelbert_pretraining_step(tmp_path):
    from vislang.pixelbert.model import PixelBERTSpec
    from vislang.pixelbert.module import PixelBERTModule
    from vislang.singlestream.module import OptimiserRecipe

    torch.manual_seed(0)
    module = PixelBERTModule(
        PixelBERTSpec(preset="tiny", num_samples=10),
        tokenizer=SYNTHETIC_TOKENIZER_DIR,
        num_answers=4,
        max_text_len=40,
        optimiser=OptimiserRecipe(warmup_steps=0),
    )
    losses, no_grad, not_moved = _fit_steps(module, tmp_path)
    assert {"loss_mlm", "loss_itm"} <= set(losses) and all(losses[k] > 0 for k in ("loss_mlm", "loss_itm"))
    assert no_grad == [] and not_moved == []


def test_mvm_official_batch_anchor_masks_the_word_at_one_shared_position():
    from vislang.soho.model import SOHOEmbedder, VisualDictionary

    emb = SOHOEmbedder(8, VisualDictionary(4, 8), mvm_mask_prob=1.0, mvm_anchor="batch")
    index = torch.tensor([[0, 1, 1, 2, 1, 3], [2, 2, 0, 2, 1, 1], [3, 1, 0, 0, 2, 2]])
    valid = torch.tensor([[True] * 6, [True, True, True, False, True, True], [True, True, True, True, False, False]])
    for seed in range(20):
        torch.manual_seed(seed)
        anchor = int(torch.randint(6, (1,)))  # the draw mvm_mask makes next
        torch.manual_seed(seed)
        mask, labels = emb.mvm_mask(index, valid)
        for b in range(3):
            if valid[b, anchor]:  # the word found at the shared position, everywhere it occurs (no padding)
                expected = (index[b] == index[b, anchor]) & valid[b]
            else:  # the anchor fell on this image's padding: nothing masked (official: label -100 there)
                expected = torch.zeros(6, dtype=torch.bool)
            assert torch.equal(mask[b], expected), (seed, b)
        assert torch.equal(labels, torch.where(mask, index, -100))


def test_corrupt_jpeg_in_a_single_stream_dataset_is_skipped_and_counted(tmp_path):
    dm = SingleStreamDataModule(
        str(tmp_path / "data"),
        pretrain_sources=["coco"],
        pretrain_epochs=1,
        task=None,
        image_size=32,
        max_size=32,
        batch_size=8,
        num_workers=0,
        synthetic_images=12,
        max_failure_fraction=0.5,
    )
    dm.prepare_data()
    dm.setup("fit")
    dataset = dm.train_sets["pretrain"]
    bad = dataset.images[2].image_path
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG: header only
    captions = sum(1 for i, _ in dataset.pairs if dataset.images[i].image_path == bad)
    loader = eval_loader(dataset, 8, collate=collate, num_workers=0, max_failure_fraction=0.5)
    batches = list(loader)
    # the image is one file behind several captions: counted once, never retried, each caption replaced
    assert captions > 1 and sum(b[FAILURES_KEY] for b in batches) == 1
    assert sum(len(b["text"]) for b in batches) == len(dataset)  # every item still delivered
    assert loader.dataset.failed_files() == {str(bad)}
    # none tolerated: the run stops and names the file
    with pytest.raises(TooManyLoadFailures, match=bad.name):
        list(eval_loader(dataset, 8, collate=collate, num_workers=0, max_failure_fraction=0.0))


def test_a_checkpoint_holds_plain_hyper_parameters_and_loads_back(tmp_path):
    """The typed ``paper`` and ``optimiser`` arguments are stored as plain data (the checkpoint stays readable
    with ``weights_only=True``, as ``init_weights`` reads it) and rebuilt by ``load_from_checkpoint``."""
    from vislang.pixelbert.model import PixelBERTSpec
    from vislang.pixelbert.module import PixelBERTModule
    from vislang.singlestream.module import OptimiserRecipe

    torch.manual_seed(0)
    spec = PixelBERTSpec(preset="tiny", num_samples=10)
    module = PixelBERTModule(
        spec, tokenizer=str(SYNTHETIC_TOKENIZER_DIR), num_answers=4, optimiser=OptimiserRecipe(lr_milestones=(3, 5))
    )
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    saved = torch.load(tmp_path / "plain.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["paper"] == asdict(spec)
    assert saved["optimiser"]["lr_milestones"] == [3, 5]
    loaded = PixelBERTModule.load_from_checkpoint(tmp_path / "plain.ckpt", weights_only=True)
    assert loaded.paper == spec and list(loaded.optimiser.lr_milestones) == [3, 5]
    assert all(
        torch.equal(a, b) for a, b in zip(module.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
