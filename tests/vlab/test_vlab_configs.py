"""VLAB's configs through the real `lightning` CLI, on an MSRVTT tree in the real layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vislang.shared.cli import build_cli
from vislang.shared.data.synthetic import SyntheticWorld, writers

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "packages" / "vlab" / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("msrvtt")
    writers.write_msrvtt(SyntheticWorld(seed=2, image_size=32, num_frames=8), root, num_videos=20)
    return root


def test_msrvtt_config_trains_and_tests_on_a_fixture_tree(msrvtt_root: Path, tmp_path: Path, tiny_cli_args) -> None:
    config = CONFIGS[[c.stem for c in CONFIGS].index("msrvtt")]
    # default_root_dir: the CLI saves the run's config.yaml there (not into the working directory)
    common = [
        "-c",
        str(config),
        *tiny_cli_args,
        f"--data.init_args.root={msrvtt_root}",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    build_cli(["fit", *common, "--trainer.fast_dev_run=2", "--trainer.callbacks=[]"])

    results_dir = tmp_path / "results"
    cli = build_cli(
        [
            "test",
            *common,
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
            f"--model.init_args.results_dir={results_dir}",
        ]
    )
    results = json.loads((results_dir / "vlab_test_results.json").read_text())["retrieval"]
    assert results["chance/R@1"] == pytest.approx(50.0)  # two test videos in the fixture
    assert set(results) >= {"t2v/R@1", "t2v/MdR", "v2t/R@1", "v2t/MnR"}

    # `lightning predict` writes each caption's ranking of the videos and each video's of the captions;
    # a second run replaces the file
    for _ in range(2):
        build_cli(["predict", *common, "--trainer.callbacks=[]", f"--model.init_args.results_dir={results_dir}"])
    lines = [json.loads(line) for line in (results_dir / "vlab_predictions_retrieval.jsonl").read_text().splitlines()]
    t2v = [line for line in lines if line["query"] == "text_to_video"]
    v2t = [line for line in lines if line["query"] == "video_to_text"]
    assert len(t2v) == len(v2t) == 2  # two test videos, one sentence each (1k-A)
    for line in t2v:
        scores = [entry["score"] for entry in line["ranking"]]
        assert scores == sorted(scores, reverse=True) and line["video"] in {e["video"] for e in line["ranking"]}
        assert Path(line["video"]).is_file()

    # the Python inference calls on a video file
    module = cli.model
    video = msrvtt_root / "videos" / "video2000000.mp4"
    captions = ["a red circle moves left", "a blue square moves up", "three green stars"]
    ranked = module.rank_captions(video, captions, num_frames=4)
    assert sorted(c for c, _ in ranked) == sorted(captions)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert isinstance(module.answer(video, "what color is the square?", num_frames=4), str)


def test_missing_dataset_stops_with_the_file_names(tmp_path: Path, tiny_cli_args, capsys) -> None:
    config = CONFIGS[[c.stem for c in CONFIGS].index("msrvtt_qa")]
    with pytest.raises(SystemExit) as stop:
        build_cli(
            [
                "fit",
                "-c",
                str(config),
                *tiny_cli_args,
                f"--data.init_args.root={tmp_path}",
                "--trainer.fast_dev_run=1",
                "--trainer.callbacks=[]",
            ]
        )
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "data.root: 2 annotation file(s) missing" in error
    assert f"{tmp_path}/msrvtt_qa/train_qa.json" in error and f"{tmp_path}/msrvtt_qa/val_qa.json" in error


@pytest.mark.slow
def test_demo_learns_far_above_chance(tmp_path: Path) -> None:
    """`make demo` as it is (1,000 videos, 3 epochs, ~3 min on 2 cores)."""
    demo = CONFIGS[[c.stem for c in CONFIGS].index("demo")]
    cli = build_cli(
        [
            "fit",
            "-c",
            str(demo),
            f"--data.init_args.root={tmp_path / 'msrvtt'}",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    scores = cli.model.last_scores
    assert scores["retrieval"]["t2v/R@1"] > 10 * scores["retrieval"]["chance/R@1"]
    assert scores["qa"]["accuracy"] > 2 * scores["qa"]["chance/majority_answer"]


def test_demo_config_runs_with_its_callbacks_and_two_eval_loaders(
    msrvtt_root: Path, tmp_path: Path, monkeypatch
) -> None:
    demo = CONFIGS[[c.stem for c in CONFIGS].index("demo")]
    tokenizer = demo.parents[3] / "shared/src/vislang/shared/assets/synthetic_wordpiece"
    monkeypatch.chdir(tmp_path)  # the demo's checkpoint and log paths are relative (demo_outputs/...)
    cli = build_cli(
        [
            "fit",
            "-c",
            str(demo),
            f"--data.init_args.root={msrvtt_root}",
            "--data.init_args.synthetic_videos=0",
            "--data.init_args.num_workers=0",
            "--trainer.fast_dev_run=2",
            f"--trainer.default_root_dir={tmp_path}",
            f"--model.init_args.decoder_tokenizer={tokenizer}",
        ]
    )
    assert cli.trainer.datamodule.eval_tasks == ["retrieval", "qa"]
    assert set(cli.model.last_scores) == {"retrieval", "qa"}


@pytest.mark.slow
def test_msrvtt_config_under_two_process_ddp(msrvtt_root: Path, tmp_path: Path, tiny_cli_args) -> None:
    """Retrieval-only training leaves the decoder unused: DDP must not see it as trainable, and the
    evaluation must count the 2 test videos once although the 2 ranks see one each, also when ITM
    re-ranks them (each rank gathers the metric's similarities and every video's decoder memory)."""
    import subprocess

    config = CONFIGS[[c.stem for c in CONFIGS].index("msrvtt")]
    lightning = Path(sys.executable).parent / "lightning"
    result = subprocess.run(
        [
            str(lightning),
            "fit",
            "-c",
            str(config),
            *tiny_cli_args,
            f"--data.init_args.root={msrvtt_root}",
            "--data.init_args.eval_batch_size=1",
            "--model.init_args.itm_rerank_k=2",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_visual:     2.00" in result.stdout and "chance/R@1:    50.00" in result.stdout


@pytest.mark.slow
def test_one_empty_video_in_the_qa_split_is_skipped_and_reported_once(tmp_path: Path, monkeypatch) -> None:
    """The demo config on 130 synthetic videos (104 for training) with one of them emptied: 1 file of 104
    (under the 1 % limit) costs its captions and QA pairs, never stops the run, and is counted once."""
    root = tmp_path / "msrvtt"
    writers.write_msrvtt(SyntheticWorld(seed=3, image_size=32, num_frames=8), root, num_videos=130)
    first_train = (root / "MSRVTT_train.9k.csv").read_text().splitlines()[1]
    qa_videos = {
        f"video{entry['video_id']}" for entry in json.loads((root / "msrvtt_qa" / "train_qa.json").read_text())
    }
    assert first_train in qa_videos
    (root / "videos" / f"{first_train}.mp4").write_bytes(b"")
    demo = CONFIGS[[c.stem for c in CONFIGS].index("demo")]
    tokenizer = demo.parents[3] / "shared/src/vislang/shared/assets/synthetic_wordpiece"
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            "fit",
            "-c",
            str(demo),
            f"--data.init_args.root={root}",
            "--data.init_args.synthetic_videos=0",
            "--trainer.max_epochs=2",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            f"--model.init_args.decoder_tokenizer={tokenizer}",
            "--trainer.callbacks=[vislang.shared.callbacks.LoadFailureMonitor]",
        ]
    )
    assert cli.trainer.current_epoch == 2  # trained to the end
    # the retrieval pairs and the QA pairs of the empty video: one file, counted once over both tasks and epochs
    assert cli.trainer.callback_metrics["data/load_failures"].item() == 1
    for task in ("retrieval", "qa"):
        dataset = cli.trainer.datamodule._dataset(task, "train")
        assert dataset.failed_files() == {str(root / "videos" / f"{first_train}.mp4")}


def test_qa_predict_writes_answers_as_json_lines_and_replaces_them(
    msrvtt_root: Path, tmp_path: Path, tiny_cli_args
) -> None:
    config = CONFIGS[[c.stem for c in CONFIGS].index("msrvtt_qa")]
    args = [
        "predict",
        "-c",
        str(config),
        *tiny_cli_args,
        f"--data.init_args.root={msrvtt_root}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--model.init_args.results_dir={tmp_path}",
    ]
    questions = json.loads((msrvtt_root / "msrvtt_qa" / "test_qa.json").read_text())
    for _ in range(2):
        build_cli(args)
        lines = [json.loads(line) for line in (tmp_path / "vlab_predictions_qa.jsonl").read_text().splitlines()]
        assert len(lines) == len(questions)
    assert [(line["question"], line["answer"]) for line in lines] == [(q["question"], q["answer"]) for q in questions]
    assert all(isinstance(line["prediction"], str) and line["video"].endswith(".mp4") for line in lines)
