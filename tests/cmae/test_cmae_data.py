"""CMAE data: readers of the real layouts (written by the synthetic world), two-view transforms, batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torchvision.transforms import v2

from vislang.cmae.data import (
    CMAEClassificationDataModule,
    CMAEPretrainDataModule,
    PixelShiftViews,
    TemporalShiftViews,
    read_items,
)
from vislang.cmae.module import CMAEPretrainModule
from vislang.shared.data.loaders import eval_loader
from vislang.shared.data.synthetic import SyntheticWorld
from vislang.shared.data.synthetic.classification_writers import (
    image_class_dirs,
    write_cmae_json,
    write_imagenet_folder,
    write_kinetics400,
    write_ssv2,
)

WORLD = SyntheticWorld(seed=5, image_size=32, num_frames=8)


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory) -> Path:
    return write_kinetics400(WORLD, tmp_path_factory.mktemp("k400"), num_videos=10)


def test_pixel_shift_target_is_the_online_window_shifted_by_at_most_max_shift() -> None:
    image = Image.fromarray(WORLD.scene(0).image)
    views = PixelShiftViews(24, max_shift=4, colour=False)
    for _ in range(5):
        online, target = views(image)
        assert online.shape == target.shape == (3, 24, 24)
        matches = [
            (dh, dw)
            for dh in range(5)
            for dw in range(5)
            if torch.allclose(online[:, dh:, dw:], target[:, : 24 - dh, : 24 - dw])
        ]
        assert matches, "target must be a shifted window of the same base crop"


def test_temporal_shift_views_share_one_spatial_crop() -> None:
    views = TemporalShiftViews(24, flip=True)
    views.colour = v2.Identity()  # isolate the spatial part: a static clip must give identical views
    frame = torch.from_numpy(WORLD.scene(1).image)
    clip = frame.expand(4, -1, -1, -1).contiguous()
    online, target = views(clip, clip)
    assert online.shape == (3, 4, 24, 24)
    torch.testing.assert_close(online, target)


def test_readers_agree_on_labels_and_fail_with_the_layout(tmp_path: Path) -> None:
    write_cmae_json(WORLD, tmp_path / "in", num_train=10, num_val=3)
    folder, classes = read_items("imagenet_folder", tmp_path / "in", "train")
    listed, _ = read_items("cmae_json", tmp_path / "in", "train")
    assert classes == image_class_dirs()
    assert sorted((i.path, i.label) for i in folder) == sorted((i.path, i.label) for i in listed)
    with pytest.raises(FileNotFoundError, match=r"missing/train not found: the imagenet_folder layout is root/train"):
        read_items("imagenet_folder", tmp_path / "missing", "train")
    with pytest.raises(FileNotFoundError, match="ImageNet_val.json not found"):
        read_items("cmae_json", tmp_path, "val")


def test_kinetics_and_ssv2_readers(kinetics: Path, tmp_path: Path) -> None:
    items, _ = read_items("kinetics400", kinetics, "train")
    assert len(items) == 8 and all(i.path.is_file() for i in items)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.csv").write_text("videos/a.mp4\n")
    with pytest.raises(ValueError, match=r"train.csv:1: expected '<video path> <label>'"):
        read_items("kinetics400", bad, "train")
    root = write_ssv2(WORLD, tmp_path / "ssv2", num_videos=5, video_format="mp4")
    items, classes = read_items("ssv2", root, "val")
    assert len(items) == 1 and items[0].path.suffix == ".mp4" and len(classes) == 4
    assert read_items("ssv2", root, "test")[0][0].label == -1


def test_pretrain_batches_for_images_and_videos(tmp_path: Path, kinetics: Path) -> None:
    write_imagenet_folder(WORLD, tmp_path / "in", num_train=8, num_val=4)
    images = CMAEPretrainDataModule(root=str(tmp_path / "in"), image_size=24, max_shift=4, batch_size=4, num_workers=0)
    images.setup("fit")
    batch = next(iter(images.train_dataloader()))
    assert batch["online"].shape == batch["target"].shape == (4, 3, 24, 24)
    probe_train, _ = images.probe_dataloaders()
    assert next(iter(probe_train))["input"].shape == (8, 3, 24, 24)  # eval batch: the whole split

    videos = CMAEPretrainDataModule(
        dataset="kinetics400",
        root=str(kinetics),
        image_size=24,
        num_frames=4,
        sampling_rate=1,
        max_temporal_shift=2,
        batch_size=2,
        num_workers=0,
    )
    videos.setup("fit")
    batch = next(iter(videos.train_dataloader()))
    assert batch["online"].shape == batch["target"].shape == (2, 3, 4, 24, 24)


def test_video_evaluation_has_clips_times_crops_views(kinetics: Path) -> None:
    data = CMAEClassificationDataModule(
        dataset="kinetics400",
        root=str(kinetics),
        image_size=24,
        num_frames=4,
        sampling_rate=1,
        num_clips=2,
        num_crops=3,
        batch_size=2,
        eval_batch_size=1,
        num_workers=0,
    )
    data.setup("fit")
    train = next(iter(data.train_dataloader()))
    assert train["input"].shape == (2, 3, 4, 24, 24)
    val = next(iter(data.val_dataloader()))
    assert val["input"].shape == (1, 6, 3, 4, 24, 24)
    # the clips are different frames of the video
    assert not torch.equal(val["input"][0, 0], val["input"][0, 3])


def test_corrupt_image_is_skipped_and_counted(tmp_path: Path) -> None:
    root = write_imagenet_folder(WORLD, tmp_path / "in", num_train=6, num_val=2)
    victim = sorted((root / "train").glob("*/*.png"))[0]
    victim.write_bytes(b"not a png")
    data = CMAEPretrainDataModule(
        root=str(root), image_size=24, max_shift=4, batch_size=6, num_workers=0, max_failure_fraction=0.5
    )
    data.setup("fit")
    loader = eval_loader(data._pretrain("train"), batch_size=6)
    batch = next(iter(loader))
    assert batch["load_failures"] == 1 and batch["online"].shape[0] == 6


def test_a_data_module_feeding_another_input_than_the_preset_stops_at_setup(tmp_path: Path) -> None:
    root = write_imagenet_folder(WORLD, tmp_path / "in", num_train=4, num_val=2)
    data = CMAEPretrainDataModule(root=str(root), image_size=24, max_shift=4, batch_size=2, num_workers=0)
    trainer = Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(ValueError, match="preset takes images of 32 px; the data module feeds images of 24 px:"):
        trainer.fit(CMAEPretrainModule(preset="tiny"), datamodule=data)
