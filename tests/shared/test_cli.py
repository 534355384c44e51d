"""The `lightning` command: subcommands, one-line errors, presets, checkpoint handling, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.demos import boring_classes

from vislang.shared.cli import build_cli, one_line_error, trainer_presets

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted(trainer_presets())
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch) -> None:
    # under pytest sys.argv holds pytest's arguments, which LightningCLI would warn about
    monkeypatch.setattr(sys, "argv", ["lightning"])


MODEL_WITH_HPARAMS = """
from lightning.pytorch.demos.boring_classes import DemoModel

class RecordedDemoModel(DemoModel):
    def __init__(self, out_dim: int = 10, learning_rate: float = 0.02) -> None:
        super().__init__(out_dim, learning_rate)
        self.save_hyperparameters()
"""


def write_config(
    path: Path, model: str = "lightning.pytorch.demos.boring_classes.DemoModel", **trainer: object
) -> Path:
    config = {
        "model": {"class_path": model, "init_args": {"out_dim": 2, "learning_rate": 0.02}},
        "data": {"class_path": "lightning.pytorch.demos.boring_classes.BoringDataModule"},
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, **trainer},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(cwd)}  # modules a test writes into cwd
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("command", [[str(BIN / "lightning")], [sys.executable, "-m", "vislang.shared"]])
def test_help_lists_the_four_subcommands(command: list[str], tmp_path: Path) -> None:
    result = run(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for subcommand in ("fit", "validate", "test", "predict"):
        assert f"    {subcommand} " in result.stdout


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--model.init_args.out_dimm=3", "out_dimm"),
        ("--trainer.max_epoch=3", "trainer.max_epoch"),  # a prefix of max_epochs: must not be guessed
        ("--model.init_args.out_dim=abc", "out_dim"),
        ("--model.class_path=nonexistent_pkg.Model", "nonexistent_pkg"),
    ],
)
def test_bad_key_fails_with_one_line_naming_it(override: str, named: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml")
    result = run(str(BIN / "lightning"), "fit", "-c", str(config), override, cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert named in errors[0]
    assert "usage:" not in result.stderr


def test_misspelled_key_in_config_file_stops_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    built = []
    original_init = boring_classes.DemoModel.__init__
    monkeypatch.setattr(
        boring_classes.DemoModel, "__init__", lambda self, *a, **k: built.append(1) or original_init(self, *a, **k)
    )
    config = write_config(tmp_path / "config.yaml")
    text = config.read_text().replace("learning_rate", "learning_rat")
    config.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "-c", str(config)])
    assert exit_info.value.code == 2
    assert "learning_rat" in capsys.readouterr().err
    assert built == []  # nothing was instantiated


def test_one_line_error_reduces_nested_jsonargparse_messages() -> None:
    nested = (
        'Parser key "model":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [<class 'NoneType'>, <class 'LightningModule'>]\n  Errors:\n"
        "    - Expected a <class 'NoneType'>\n    - Problem with given class_path 'pkg.Model':\n"
        "        Parser key \"hidden\":\n          Expected a <class 'int'>. Got value: abc\n"
        "  Given value type: <class 'str'>\n"
    )
    assert one_line_error(nested) == "model: class_path 'pkg.Model': hidden: Expected a <class 'int'>. Got value: abc"


@pytest.mark.parametrize("preset", PRESETS)
def test_every_trainer_preset_parses_and_keeps_its_settings(preset: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # named, not given as a path: found as a package resource from any directory
    config = write_config(tmp_path / "config.yaml")
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "-c", str(config), "--trainer", preset, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
    expected = yaml.safe_load(trainer_presets()[preset].read_text())
    for key, value in expected.items():
        if key == "strategy" and isinstance(value, dict):
            # the FSDP wrap policy is what Lightning's own strategy loses in printed configs
            assert printed["strategy"]["class_path"] == value["class_path"]
            for arg, arg_value in value["init_args"].items():
                assert printed["strategy"]["init_args"][arg] == arg_value
        else:
            assert printed[key] == value, key


def test_a_config_names_its_trainer_preset_and_overrides_its_keys(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "config.yaml", accelerator="cpu", max_epochs=3)
    config.write_text("trainer_preset: gpu_bf16\n" + config.read_text())
    with pytest.raises(SystemExit):
        build_cli(["fit", "-c", str(config), "--trainer.max_epochs=5", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    # the preset's precision; the config's accelerator over the preset's gpu; the command line over both
    assert printed["trainer"]["precision"] == "bf16-mixed"
    assert printed["trainer"]["accelerator"] == "cpu"
    assert printed["trainer"]["max_epochs"] == 5
    assert printed["trainer_preset"] == "gpu_bf16"


def test_an_unknown_trainer_preset_is_one_line_naming_the_choices(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml")
    config.write_text("trainer_preset: gpu_fp8\n" + config.read_text())
    result = run(sys.executable, "-m", "vislang.shared", "fit", "-c", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"lightning: error: {config}: trainer_preset: no trainer preset 'gpu_fp8'; one of {', '.join(PRESETS)}"
    ]


def test_a_config_interpolates_a_value_it_shares(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "config.yaml", max_epochs=4)
    text = config.read_text().replace("learning_rate: 0.02", "learning_rate: ${trainer.max_epochs}")
    config.write_text(text)
    with pytest.raises(SystemExit):
        build_cli(["fit", "-c", str(config), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["learning_rate"] == 4


def test_fsdp_strategy_resolves_import_paths() -> None:
    from vislang.shared.strategies import FSDP

    strategy = FSDP(wrap_modules=["torch.nn.TransformerEncoderLayer"], checkpoint_modules=["torch.nn.Linear"])
    assert strategy.wrap_modules == ["torch.nn.TransformerEncoderLayer"]
    with pytest.raises(ValueError, match="torch.nn.NoSuchLayer"):
        FSDP(wrap_modules=["torch.nn.NoSuchLayer"])


def test_ckpt_path_file_keeps_config_arguments_and_warns(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "recorded_demo.py").write_text(MODEL_WITH_HPARAMS)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_config(
        tmp_path / "config.yaml",
        model="recorded_demo.RecordedDemoModel",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    first = build_cli(["fit", "-c", str(config), "--trainer.default_root_dir", str(tmp_path)])
    checkpoint = tmp_path / "first.ckpt"
    first.trainer.save_checkpoint(checkpoint)
    assert torch.load(checkpoint, weights_only=True)["hyper_parameters"]["learning_rate"] == 0.02

    with pytest.warns(UserWarning, match=r"learning_rate: checkpoint 0\.02, config 0\.5"):
        # max_epochs is already reached by the checkpoint: the fit restores it and stops at once
        second = build_cli(
            ["fit", "-c", str(config), "--model.init_args.learning_rate=0.5", "--ckpt_path", str(checkpoint)]
        )
    # Plain LightningCLI would have built the model with the checkpoint's 0.02.
    assert second.model.learning_rate == 0.5


def test_resume_with_ckpt_path_last(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    config = write_config(
        tmp_path / "config.yaml",
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(checkpoints), "save_last": True},
            }
        ],
    )
    base = ["fit", "-c", str(config), "--ckpt_path", "last", "--trainer.default_root_dir", str(tmp_path)]
    first = build_cli([*base, "--trainer.max_epochs", "1"])
    assert first.trainer.global_step == 2 and (checkpoints / "last.ckpt").is_file()
    second = build_cli([*base, "--trainer.max_epochs", "2"])
    # resumed from epoch 1: two more steps, not four
    assert second.trainer.global_step == 4
    assert second.trainer.current_epoch == 2


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_from_the_console_script(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    result = run(
        str(BIN / "lightning"),
        "fit",
        "-c",
        str(config),
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.default_root_dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout


FAILING_MODEL = """
from lightning.pytorch.demos.boring_classes import DemoModel

class PresetModel(DemoModel):
    def __init__(self, preset: str = "tiny", out_dim: int = 2, learning_rate: float = 0.02) -> None:
        if preset not in ("tiny", "base"):
            raise ValueError(f"unknown preset {preset!r}; choose one of ['base', 'tiny']")
        super().__init__(out_dim, learning_rate)
"""


def _error_lines(stderr: str) -> list[str]:
    """What the run printed about the error (Lightning's INFO lines such as 'Seed set to' aside)."""
    return [
        line for line in stderr.splitlines() if line.strip() and not line.startswith(("Seed set", "INFO", "WARNING"))
    ]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("preset", "tests_preset_model.PresetModel: unknown preset 'tinyy'; choose one of ['base', 'tiny']"),
        ("corrupt_ckpt", "ckpt_path: cannot read"),
        ("unsafe_ckpt", "ckpt_path: refusing to load"),
        ("truncated_ckpt", "ckpt_path: cannot read"),
    ],
)
def test_errors_from_config_values_are_one_line(case: str, expected: str, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "tests_preset_model.py").write_text(FAILING_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "config.yaml", model="tests_preset_model.PresetModel", max_epochs=1)
    args = ["fit", "-c", str(config), f"--trainer.default_root_dir={tmp_path}"]
    checkpoint = tmp_path / "run.ckpt"
    if case == "preset":
        args.append("--model.init_args.preset=tinyy")
    elif case == "corrupt_ckpt":
        checkpoint.write_bytes(b"not a checkpoint at all")
    elif case == "unsafe_ckpt":  # a torch.save file whose unpickling would run os.system
        torch.save({"state_dict": {}, "payload": _Runs()}, checkpoint)
    else:
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    if case != "preset":
        args += ["--ckpt_path", str(checkpoint)]
    with pytest.raises(SystemExit) as stop:
        build_cli(args)
    lines = _error_lines(capsys.readouterr().err)
    assert stop.value.code == 2
    assert len(lines) <= 2 and expected in lines[0], lines
    assert "Traceback" not in lines[0] and "weights_only=False" not in lines[0]
    assert not (tmp_path / "pwned").exists()
    if case == "preset":  # --debug keeps the exception and its traceback
        with pytest.raises(ValueError, match="unknown preset 'tinyy'"):
            build_cli([*args, "--debug"])


class _Runs:
    def __reduce__(self):
        return (os.system, ("touch pwned",))
