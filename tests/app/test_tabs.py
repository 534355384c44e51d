"""The functions behind each tab, on tiny untrained checkpoints built in tmp folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislang.app.cmae_tab import DISPLAY_SIDE, load_cmae, reconstruct
from vislang.app.inputs import CheckedImage, InputError, load_upload
from vislang.app.pixellm_tab import DISPLAY_MIN_SIDE, answer_phrases, load_pixellm, run_pixellm
from vislang.app.vlab_tab import describe_video, load_vlab, rank_videos
from vislang.app.vqa_tab import VQAPredictor
from vislang.pixellm.callbacks import PALETTE
from vislang.pixellm.module import SegmentationResult
from vislang.shared.data.synthetic import SyntheticWorld


@pytest.fixture(scope="module")
def scene_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(SyntheticWorld(seed=0, image_size=64).scene(0).image).save(path)
    return path


# ---- PixelLM ----------------------------------------------------------------------------------------


def test_answer_phrases_tie_each_seg_to_its_words() -> None:
    answer = "the warm-colored shapes are the red circle [SEG], the big orange star [SEG] and the yellow square [SEG]."
    assert answer_phrases(answer, 3) == ["the red circle", "the big orange star", "the yellow square"]
    assert answer_phrases("the only cool-colored shape is the blue cross [SEG].", 1) == ["the blue cross"]
    assert answer_phrases("no targets here", 1) == [""]  # more masks than [SEG]: no words to show


def test_pixellm_tab_overlay_colours_match_the_legend(
    pixellm_ckpt: Path, scene_image: Path, tmp_path: Path, monkeypatch
) -> None:
    """With two known masks in the answer, each mask's pixels carry the legend colour of its words."""
    model = load_pixellm(pixellm_ckpt)
    image = load_upload(scene_image)
    masks = np.zeros((2, 64, 64), dtype=bool)
    masks[0, :10, :10], masks[1, 40:, 40:] = True, True
    known = SegmentationResult("the shapes are the red circle [SEG] and the blue star [SEG].", masks, [0.9, 0.6], 0)
    monkeypatch.setattr(model, "segment", lambda array, question: known)
    result = run_pixellm(model, image, "which shapes?", tmp_path)
    enlarged = np.asarray(Image.open(result.overlay)).astype(float)
    factor = DISPLAY_MIN_SIDE // 64  # a 64-px image is shown 6x larger, by whole pixels
    assert enlarged.shape == (64 * factor, 64 * factor, 3)
    blocks = enlarged.reshape(64, factor, 64, factor, 3)
    original = image.array.astype(float)
    for k, target in enumerate(result.targets):
        assert target.colour == PALETTE[k]
        colour = np.asarray(PALETTE[k], dtype=float)
        # inside the mask: the picture blended with the legend colour, alpha 0.5 (centre of each enlarged pixel)
        inside = masks[k].copy()
        inside[[0, -1], :] = inside[:, [0, -1]] = False
        inside[1:] &= masks[k][:-1]
        inside[:-1] &= masks[k][1:]
        inside[:, 1:] &= masks[k][:, :-1]
        inside[:, :-1] &= masks[k][:, 1:]
        centres = blocks[:, factor // 2, :, factor // 2]
        assert np.abs(centres[inside] - (0.5 * original[inside] + 0.5 * colour)).max() <= 1.0
        # the mask's edge: drawn in the pure legend colour, on the enlarged picture
        edge = masks[k] & ~inside
        pure = (blocks.transpose(0, 2, 1, 3, 4)[edge] == colour).all(axis=-1)  # (edge pixels, factor, factor)
        assert (pure.reshape(len(pure), -1).sum(axis=1) >= factor).all()  # a line of it in every edge pixel
    outside = ~masks.any(0)
    assert np.array_equal(
        blocks.transpose(0, 2, 1, 3, 4)[outside],
        np.broadcast_to(original[outside][:, None, None], (int(outside.sum()), factor, factor, 3)),
    )
    assert [t.words for t in result.targets] == ["the red circle", "the blue star"]
    html = result.legend_html()
    for target in result.targets:
        assert f"background:{target.hex}" in html and target.words in html


def test_pixellm_tab_runs_the_model(pixellm_ckpt: Path, scene_image: Path, tmp_path: Path) -> None:
    model = load_pixellm(pixellm_ckpt)
    result = run_pixellm(model, load_upload(scene_image), "which shapes are red?", tmp_path)
    overlay = Image.open(result.overlay)
    assert overlay.size == (DISPLAY_MIN_SIDE, DISPLAY_MIN_SIDE) and isinstance(result.answer, str)
    assert len(result.targets) == result.answer.count("[SEG]")  # one mask per complete codebook group
    with pytest.raises(InputError, match="empty question"):
        run_pixellm(model, load_upload(scene_image), "  ", tmp_path)


def test_a_file_that_is_not_the_tabs_checkpoint_is_refused(tmp_path: Path, cmae_ckpt: Path, pixellm_ckpt: Path) -> None:
    (tmp_path / "x.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"x\.ckpt: not a readable Lightning checkpoint"):
        load_pixellm(tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="not a PixelLM checkpoint"):
        load_pixellm(cmae_ckpt)
    with pytest.raises(ValueError, match="not a VLAB checkpoint"):
        load_vlab(pixellm_ckpt)


# ---- VLAB -------------------------------------------------------------------------------------------


def test_vlab_ranks_a_folder_and_lists_what_it_cannot_decode(vlab_ckpt: Path, videos: Path, tmp_path: Path) -> None:
    model = load_vlab(vlab_ckpt)
    assert model.num_frames == 2 and model.tasks == ("retrieval", "qa")
    seen = []
    ranking = rank_videos(model, str(videos), "a red circle moves left", tmp_path, progress=lambda f, d: seen.append(f))
    assert len(ranking.videos) == 4 and len(ranking.skipped) == 1 and ranking.skipped[0].startswith("broken.mp4")
    scores = [r.score for r in ranking.videos]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    # the score is the package's cosine of the sentence and the video
    best = ranking.videos[0]
    ((_, direct),) = model.module.rank_captions(best.path, ["a red circle moves left"], num_frames=2)
    assert best.score == pytest.approx(direct, abs=1e-6)
    assert Image.open(best.thumbnail).size == (128, 128) and best.thumbnail.parent == tmp_path
    assert seen == [k / 5 for k in range(5)]
    with pytest.raises(InputError, match="empty sentence"):
        rank_videos(model, str(videos), "", tmp_path)


def test_vlab_caption_and_answer(vlab_ckpt: Path, videos: Path) -> None:
    model = load_vlab(vlab_ckpt)
    video = next(p for p in sorted(videos.iterdir()) if p.name != "broken.mp4")
    assert isinstance(describe_video(model, video, "answer", "what color is the circle?"), str)
    assert isinstance(describe_video(model, str(video), "caption"), str)
    with pytest.raises(InputError, match="empty question"):
        describe_video(model, video, "answer", "")
    with pytest.raises(InputError, match=r"broken\.mp4: the video cannot be decoded"):
        describe_video(model, videos / "broken.mp4", "caption")


# ---- CMAE -------------------------------------------------------------------------------------------


def test_cmae_masked_input_reconstruction_and_target(cmae_ckpt: Path, scene_image: Path) -> None:
    module = load_cmae(cmae_ckpt)
    result = reconstruct(module, load_upload(scene_image), 0.75, seed=1)
    c = module.model.config
    patches = (c.img_size // c.patch_size) ** 2
    assert result.masked_fraction == pytest.approx(int(patches * 0.75) / patches, abs=1 / patches)
    for image in (result.masked, result.reconstruction, result.target):
        assert image.shape == (DISPLAY_SIDE, DISPLAY_SIDE, 3) and image.dtype == np.uint8
    # visible patches: the reconstruction pastes the input back; masked patches: the input shows the mean colour
    scale = DISPLAY_SIDE // c.img_size * c.patch_size
    grid = c.img_size // c.patch_size
    masked_cells = same_cells = 0
    for r in range(grid):
        for col in range(grid):
            cell = (slice(r * scale, (r + 1) * scale), slice(col * scale, (col + 1) * scale))
            if np.array_equal(result.masked[cell], result.target[cell]):
                same_cells += 1
                assert np.array_equal(result.reconstruction[cell], result.target[cell])
            else:
                masked_cells += 1
                mean = np.round(np.array([0.485, 0.456, 0.406]) * 255)
                assert np.abs(result.masked[cell].reshape(-1, 3) - mean).max() <= 1
    assert masked_cells / grid**2 == pytest.approx(result.masked_fraction, abs=1 / patches)
    # the same seed masks the same patches
    again = reconstruct(module, load_upload(scene_image), 0.75, seed=1)
    assert np.array_equal(again.masked, result.masked)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5])
def test_cmae_refuses_a_mask_ratio_outside_0_1(cmae_ckpt: Path, scene_image: Path, ratio: float) -> None:
    with pytest.raises(InputError, match="mask ratio"):
        reconstruct(load_cmae(cmae_ckpt), load_upload(scene_image), ratio)


def test_cmae_refuses_a_checkpoint_of_another_model(vlab_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="not a CMAE pre-training checkpoint"):
        load_cmae(vlab_ckpt)


# ---- VQA entry --------------------------------------------------------------------------------------


def test_vqa_features_are_the_ones_the_extraction_command_stores(
    vqa_ensemble: dict[str, Path], scene_image: Path, tmp_path: Path
) -> None:
    """The single-image path gives the members what `python -m vislang.vqa_ensemble.extract` would store."""
    from vislang.vqa_ensemble import extract
    from vislang.vqa_ensemble.features import FeatureStore

    predictor = VQAPredictor(vqa_ensemble["weights"], vqa_ensemble["detector"])
    image = load_upload(scene_image)
    ours = predictor.features(image)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(image.array).save(folder / "COCO_val2014_000000000042.png")
    for (features, boxes), kind, args in zip(
        ours, ("region", "grid"), (["--min-boxes", "2", "--max-boxes", "6"], ["--grid-size", "3"]), strict=True
    ):
        store_dir = extract.main(
            [
                "--images",
                str(folder),
                "--out",
                str(tmp_path / kind),
                "--kind",
                kind,
                "--detector",
                str(vqa_ensemble["detector"]),
                "--dtype",
                "float16",
                *args,
            ]
        )
        stored = FeatureStore(store_dir)[42]
        assert stored.features.shape == tuple(features.shape)
        np.testing.assert_allclose(features.numpy(), stored.features.astype(np.float32), atol=1e-6)
        np.testing.assert_allclose(boxes.numpy(), stored.boxes.astype(np.float32), atol=1e-6)


def test_vqa_answer_is_the_weighted_member_average(vqa_ensemble: dict[str, Path], scene_image: Path) -> None:
    predictor = VQAPredictor(vqa_ensemble["weights"], vqa_ensemble["detector"])
    result = predictor.predict(load_upload(scene_image), "what color is the circle?")
    assert result.weights == [0.3, 0.7] and len(result.members) == 2
    # the fixture's members know 4 and 5 answers: their top-5 lists are their whole sigmoid outputs
    members = [dict(m["top"]) for m in result.members]
    assert [sorted(m) for m in members] == [sorted(m.answers) for m in predictor.members]
    for m in result.members:
        assert [s for _, s in m["top"]] == sorted((s for _, s in m["top"]), reverse=True)
    # an answer a member does not know scores 0 for it (the union vocabulary), then the weighted sum
    expected = {a: 0.3 * members[0].get(a, 0.0) + 0.7 * members[1].get(a, 0.0) for a in predictor.answers}
    assert len(expected) == 7 and len(result.ensemble_top) == 5
    for answer, score in result.ensemble_top:
        assert score == pytest.approx(expected[answer], abs=1e-6)
    assert result.answer == max(expected, key=expected.get)
    with pytest.raises(InputError, match="empty question"):
        predictor.predict(load_upload(scene_image), " ")


def test_vqa_refuses_a_detector_the_members_never_saw(vqa_ensemble: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.ckpt"
    checkpoint = torch.load(vqa_ensemble["detector"], weights_only=True)
    checkpoint["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, other)
    with pytest.raises(ValueError, match="--vqa-detector"):
        VQAPredictor(vqa_ensemble["weights"], other)
    bad = tmp_path / "weights.json"
    bad.write_text(json.dumps({"weights": [1.0]}))
    with pytest.raises(ValueError, match=r"weights\.json: not an ensemble weights file"):
        VQAPredictor(bad, vqa_ensemble["detector"])


def test_images_from_the_checks_are_what_the_models_take(scene_image: Path) -> None:
    image = load_upload(scene_image)
    assert isinstance(image, CheckedImage) and image.array.dtype == np.uint8 and image.array.shape == (64, 64, 3)
