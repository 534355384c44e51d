"""End to end through the `lightning` CLI: two members, the fitted ensemble, EvalAI results files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vislang.shared.cli import build_cli
from vislang.shared.data.vl import read_vqa_v2, vqa_v2_paths
from vislang.shared.metrics.vqa import build_answer_vocab, read_vqa_results
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR
from vislang.vqa_ensemble.checks import LeakError
from vislang.vqa_ensemble.ensemble import PRIORS
from vislang.vqa_ensemble.features import FeatureStoreMismatchError

CONFIGS = Path(__file__).resolve().parents[2] / "packages" / "vqa_ensemble" / "configs"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning"])


def _data_args(world) -> list[str]:
    f = world["features"]
    return [
        f"--data.init_args.root={world['root']}",
        f"--data.init_args.features={{region: [{', '.join(f['region'])}], grid: [{', '.join(f['grid'])}]}}",
        f"--data.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
        "--data.init_args.min_answer_count=2",
        "--data.init_args.batch_size=8",
        "--data.init_args.eval_batch_size=16",
    ]


def _fit_member(world, tmp_path: Path, kind: str, seed: int, *extra: str):  # noqa: ANN202 (VislangCLI)
    return build_cli(
        [
            "fit",
            "-c",
            str(CONFIGS / "demo.yaml"),
            *_data_args(world),
            f"--seed_everything={seed}",
            f"--model.init_args.feature_set={kind}",
            f"--model.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
            f"--model.init_args.results_dir={tmp_path / kind}",
            "--trainer.max_epochs=1",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path / kind}",
            "--trainer.enable_progress_bar=false",
            *extra,
        ]
    )


def _stops(capsys, error: type[Exception], match: str, args: list[str]) -> None:
    """The run stops with ``match`` in its message: raised, or (the CLI's one-line form) on stderr + exit 2."""
    try:
        build_cli(args)
    except SystemExit as stop:
        assert stop.code == 2 and re.search(match, capsys.readouterr().err)
    except error as raised:
        assert re.search(match, str(raised))
    else:
        pytest.fail(f"expected the run to stop with {match!r}")


def test_members_ensemble_and_official_results_files(vqa_world, tmp_path: Path, capsys) -> None:
    checkpoints = []
    for kind, seed in (("region", 0), ("grid", 1)):
        cli = _fit_member(vqa_world, tmp_path, kind, seed)
        checkpoints.append(cli.trainer.checkpoint_callback.last_model_path)
        # every val2014 question of the weight-fitting half, exactly once, in the official format
        val_ids = [i.question_id for i in cli.datamodule.splits["val"].items]
        assert len(read_vqa_results(tmp_path / kind / "val_results.json", question_ids=val_ids)) == len(val_ids)
        assert cli.trainer.callback_metrics["val/vqa_acc"] >= 0

    # a member tested from its checkpoint on a data module whose own vocabulary differs: the checkpoint's wins
    cli = build_cli(
        [
            "test",
            "-c",
            str(CONFIGS / "demo.yaml"),
            *_data_args(vqa_world),
            "--data.init_args.min_answer_count=1",
            f"--model.init_args.tokenizer={SYNTHETIC_TOKENIZER_DIR}",
            f"--model.init_args.results_dir={tmp_path / 'again'}",
            f"--ckpt_path={checkpoints[0]}",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    train = read_vqa_v2(*vqa_v2_paths(vqa_world["root"], "train2014"))
    data_vocab = build_answer_vocab([{"multiple_choice_answer": e.multiple_choice_answer} for e in train], 1)
    assert data_vocab != cli.model.answers and cli.datamodule.answers == cli.model.answers
    test_ids = [i.question_id for i in cli.datamodule.splits["test"].items]
    assert set(read_vqa_results(tmp_path / "again" / "test_results.json", question_ids=test_ids)) == set(test_ids)

    ens = [
        "-c",
        str(CONFIGS / "demo_ensemble.yaml"),
        *_data_args(vqa_world),
        f"--model.init_args.members=[{', '.join(checkpoints)}]",
        f"--model.init_args.weights_path={tmp_path / 'weights.json'}",
        f"--model.init_args.results_dir={tmp_path / 'ens'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    _stops(capsys, FileNotFoundError, "run `lightning validate`", ["test", *ens])
    f = vqa_world["features"]
    swapped = f"--data.init_args.features={{region: [{', '.join(f['grid'])}], grid: [{', '.join(f['region'])}]}}"
    with pytest.raises(
        FeatureStoreMismatchError, match="member was trained on feature_dim=12 but feature_dim=8 is in this store"
    ):
        build_cli(["validate", *ens, swapped])  # members refuse features from another extractor
    cli = build_cli(["validate", *ens])
    val = cli.model.fitted["val"]
    fit = json.loads((tmp_path / "weights.json").read_text())
    weights = fit["weights"]
    assert weights == val["weights"] and sum(weights) == pytest.approx(1.0)
    assert set(fit["cv_accuracy_by_prior"]) == {str(p) for p in PRIORS} and fit["prior"] in PRIORS
    # unequal weights only when they beat equal weights by two image-clustered standard errors
    gain = fit["gain_over_equal"]
    assert weights == fit["fitted_weights"] if gain["percent"] >= 2 * gain["se"] else weights == [0.5, 0.5]
    # no leak: no question the weights were fitted on (nor any held-out one) is in a member's training questions
    fitted_on = {i.question_id for i in cli.datamodule.splits["val"].items}
    held_out = {i.question_id for i in cli.datamodule.splits["test"].items}
    assert fit["fit_questions"] == len(fitted_on) > 0 and held_out
    for path in checkpoints:
        trained_on = set(torch.load(path, weights_only=True)["vqa_member"]["train_question_ids"].tolist())
        assert len(trained_on) > 50 and not trained_on & (fitted_on | held_out)
    # every results file, the ensemble's too, holds exactly the split's questions (not just the rows collected)
    for name in ("member0", "member1", "ensemble"):
        results = read_vqa_results(tmp_path / "ens" / f"val_{name}_results.json", question_ids=sorted(fitted_on))
        assert set(results) == fitted_on

    # a member trained on train2014 + val2014 cannot take part in fitting (or in scoring on the held-out half) ...
    leaky = _fit_member(
        vqa_world, tmp_path / "leaky", "region", 2, "--data.init_args.train_subtypes=[train2014, val2014]"
    )
    final = leaky.trainer.checkpoint_callback.last_model_path
    final_ens = [*ens, f"--model.init_args.members=[{final}, {checkpoints[1]}]"]
    with pytest.raises(LeakError, match=r"trained on \d+ of the \d+ val questions"):
        build_cli(["validate", *final_ens])
    with pytest.raises(LeakError, match="test questions"):
        build_cli(["test", *final_ens])

    test = build_cli(["test", *ens]).model.fitted["test"]
    assert test["weights"] == weights and {"member0", "member1", "ensemble"} <= set(test)

    # ... but it is the final member of the protocol: with the weights fitted on the train-only members, it predicts
    # every test2015 question (EvalAI needs all of them, even for test-dev)
    build_cli(
        ["predict", *final_ens, "--data.init_args.heldout_fraction=0.0", "--data.init_args.test_subtype=test2015"]
    )
    all_ids = [e.question_id for e in read_vqa_v2(*vqa_v2_paths(vqa_world["root"], "test2015"))]
    results = read_vqa_results(tmp_path / "ens" / "predict_ensemble_results.json", question_ids=all_ids)
    assert set(results) == set(all_ids) and all(isinstance(a, str) and a for a in results.values())
    rows = json.loads((tmp_path / "ens" / "predict_ensemble_results.json").read_text())
    assert all(set(r) == {"question_id", "answer"} and isinstance(r["question_id"], int) for r in rows)


def _config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))


def _checkpoint_of(config: dict) -> str:
    (callback,) = config["trainer"]["callbacks"]
    return f"{callback['init_args']['dirpath']}/last.ckpt"


def test_paper_configs_follow_the_no_leak_protocol() -> None:
    fit, final = _config("vqa2_ensemble_fit.yaml"), _config("vqa2_ensemble.yaml")
    fit_on = fit["data"]["init_args"]["val_subtype"]
    fit_members, final_members = fit["model"]["init_args"]["members"], final["model"]["init_args"]["members"]
    assert len(fit_members) == len(final_members) == 3
    for name in ("vqa2_mcan_large_x152", "vqa2_mcan_large_x101", "vqa2_mcan_large_x152_grid"):
        train_only, full = _config(f"{name}_train.yaml"), _config(f"{name}.yaml")
        data = train_only["data"]["init_args"]
        # the weight-fitting member never sees the weight-fitting split (questions, answers, nor VG's COCO images)
        assert fit_on not in data["train_subtypes"] and fit_on not in data["vocab_subtypes"] and "vg_qa" not in data
        assert _checkpoint_of(train_only) in fit_members and _checkpoint_of(full) in final_members
        # ... and is otherwise the final member's recipe
        assert train_only["model"]["init_args"] | {"results_dir": None} == full["model"]["init_args"] | {
            "results_dir": None
        }
        assert "val2014" in full["data"]["init_args"]["train_subtypes"]
    assert fit["model"]["init_args"]["weights_path"] == final["model"]["init_args"]["weights_path"]
