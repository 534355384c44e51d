"""The `lightning` command: one LightningCLI for every vislang package.

    lightning fit|validate|test|predict --config packages/<name>/configs/<dataset>.yaml

Lightning 2.x ships no `lightning` console script of its own, so vislang-shared provides it (and
`python -m vislang.shared`, the same CLI, for machines where lightning-sdk also installs a
`lightning` command). Model and data are chosen by full `class_path` in the config (subclass mode),
so the import system is the registry and a package never has to be imported in advance.

Three traps of a plain LightningCLI are closed here (see shared/reference/lightning_conventions.md):

* `--ckpt_path FILE` makes LightningCLI replace the config's model arguments with the
  hyper-parameters stored in the checkpoint, silently. Here the config always wins; every value
  that differs from the checkpoint's is named in a warning, so a resume with changed settings is
  deliberate and visible.
* A parse error (a misspelled key, a wrong type) prints one line naming the key, not a page of usage;
  so does an error raised while building the classes from the config (a wrong preset, a corrupt
  `init_weights`), an unreadable `--ckpt_path` (never with torch's advice to load it unsafely), and a
  missing or unreadable input met during the run. `--debug` anywhere on the line keeps the traceback.
* Before anything is built, `vislang.shared.preflight` checks what the config needs (data, weights,
  tokenizers, the accelerator) and lists everything missing at once, each with its fix
  (`VISLANG_SKIP_PREFLIGHT=1` skips it).
* No argument links are declared: a link whose source attribute is missing on the chosen data
  module is skipped silently by jsonargparse, and one CLI serves six packages. A value that model and
  data must agree on is written once in the config and interpolated: configs are parsed in
  jsonargparse's ``omegaconf`` mode, so ``image_size: ${data.init_args.image_size}`` resolves within
  a config file. A module reads the rest from its data module's typed contract in `setup()`.

Two kinds of repetition are taken out of the configs:

* **Trainer presets** are package resources (`vislang/shared/configs/trainer/*.yaml`: ``cpu``,
  ``gpu_bf16``, ``ddp``, ``ddp_multinode``, ``fsdp``, ``deepspeed_stage2``). A config names one with
  ``trainer_preset: gpu_bf16`` and writes only the trainer keys particular to it; on the command
  line ``--trainer ddp`` stacks one on any config, from any working directory. The config's own
  ``trainer:`` keys and later command-line keys win over the preset's.
* **Callbacks every run needs** (`vislang.shared.callbacks`: exact resume, the load-failure count) are
  added to every trainer; a config lists only its own (checkpointing, writers, evaluations).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from vislang.shared.callbacks import add_default_callbacks
from vislang.shared.checkpoint import CheckpointError, load_checkpoint
from vislang.shared.data.resume import newest_checkpoint
from vislang.shared.data.robust import TooManyLoadFailures
from vislang.shared.preflight import format_missing, run_preflight
from vislang.shared.text import HubModelUnavailableError

__all__ = [
    "VislangCLI",
    "VislangArgumentParser",
    "build_cli",
    "main",
    "one_line_error",
    "trainer_presets",
    "with_trainer_presets",
]


_BOILERPLATE = re.compile(
    r"^(Does not validate against any of|Subtypes:|Errors:|Expected a <class 'NoneType'>|Given value|Expected a path but)"
)


def one_line_error(message: str) -> str:
    """Reduce a jsonargparse error (often a nested, multi-line explanation) to the line that matters.

    jsonargparse reports a bad value inside `model` as a tree: the union of types it tried, the
    `None` alternative that failed, the class_path it tried and, deepest, the actual cause. A user
    needs the group, the class_path if any, and the cause.
    """
    lines = [line.strip(" -\t") for line in message.splitlines() if line.strip(" -\t")]
    if not lines:
        return message.strip()
    group = re.match(r'Parser key "([^"]+)":?\s*(.*)', lines[0])
    if group:
        lines = ([group.group(2)] if group.group(2) else []) + lines[1:]
    causes = [line for line in lines if not _BOILERPLATE.match(line)] or lines or [message.strip()]
    problem = next((i for i, line in enumerate(causes) if line.startswith("Problem with given class_path")), None)
    if problem is not None and problem + 1 < len(causes):
        # join the cause chain below the class_path: 'Parser key "out_dim":' + 'Expected a <class int> ...'
        chain = [re.sub(r'^Parser key "([^"]+)":$', r"\1:", c) for c in causes[problem + 1 :]]
        line = f"{causes[problem].removeprefix('Problem with given ').rstrip(':')}: {' '.join(chain[:2])}"
    else:
        line = causes[-1]
    if group:
        line = f"{group.group(1)}: {line}"
    return line[:500]


class VislangArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line on stderr, naming the offending key."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # noqa: D102
        if not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {one_line_error(message)} (see `{prog} --help`)\n")
        self.exit(2)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


class VislangCLI(LightningCLI):
    """LightningCLI with one-line parse errors and config-wins checkpoint handling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", VislangArgumentParser)
        # argparse's prefix matching would read `--trainer.max_epoch` as `max_epochs`; a research run
        # must not guess what a misspelled key meant.
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        for name in (None, *self.subcommands()):
            group = parser_kwargs.setdefault(name, {}) if name else parser_kwargs
            group.setdefault("allow_abbrev", False)
            group.setdefault("parser_mode", "omegaconf")  # ${...} interpolation inside a config file
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--trainer_preset",
            type=str | None,
            default=None,
            help=f"A trainer preset the config's trainer keys are stacked on: one of {', '.join(trainer_presets())}.",
        )

    def _stop(self, message: str) -> NoReturn:
        """One line on stderr, exit status 2 (`--debug` shows the traceback instead)."""
        subcommand = self.config.get("subcommand") if getattr(self, "config", None) else None
        prog = " ".join(filter(None, [self.parser.prog.replace(" [options]", ""), subcommand]))
        sys.stderr.write(f"{prog}: error: {message} (add --debug for the traceback)\n")
        sys.exit(2)

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; an error from a config value is one line naming the class and the cause.

        jsonargparse reports an exception raised in a class's `__init__` as a failed union of types with
        the whole config dumped (some 50 lines); the cause is the one line that matters.
        """
        try:
            super().instantiate_classes()
            add_default_callbacks(self.trainer)
        except Exception as err:
            if DEBUG:
                raise
            message = str(err)
            class_path = re.search(r"class_path='([\w.]+)'", message)
            where = f"{class_path.group(1)}: " if class_path else ""
            self._stop(
                where + one_line_error(message)
                if "Union subtypes" in message
                else f"{type(err).__name__}: {_last_line(message)}"
            )

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a missing or unreadable input met on the way (not a bug) stops with one line.

        ``--ckpt_path last`` resumes from the newest checkpoint the run's `ModelCheckpoint`s wrote (by
        global step): a kill between Lightning's two writes (the step's file, then ``last.ckpt``) leaves
        ``last.ckpt`` one save behind.
        """
        kwargs = self.config_init.get(subcommand, {})
        if kwargs.get("ckpt_path") == "last" and (newest := newest_checkpoint(self.trainer)):
            kwargs["ckpt_path"] = newest
        try:
            super()._run_subcommand(subcommand)
        except _INPUT_ERRORS as err:
            if DEBUG:
                raise
            self._stop(f"{type(err).__name__}: {_last_line(str(err))}")

    def before_instantiate_classes(self) -> None:
        """Stop before any model is built when the config's inputs are missing, naming all of them."""
        subcommand = self.config.get("subcommand")
        if not subcommand or os.environ.get("VISLANG_SKIP_PREFLIGHT"):
            return
        config = self.config[subcommand]
        missing = run_preflight(subcommand, config.as_dict() if hasattr(config, "as_dict") else dict(config))
        if missing:
            prog = self.parser.prog.replace(" [options]", "")
            sys.stderr.write(format_missing(f"{prog} {subcommand}", missing) + "\n")
            sys.exit(2)

    def _parse_ckpt_path(self) -> None:
        """Keep the config's model arguments when `ckpt_path` is a file; warn about each difference.

        Lightning's own implementation parses the checkpoint's `hyper_parameters` over the config,
        so `--model.init_args.lr=0.5 --ckpt_path epoch=3.ckpt` trains with the checkpoint's lr.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        try:
            checkpoint = load_checkpoint(ckpt_path, mmap=True)  # only its hyper-parameters are read here
        except (FileNotFoundError, CheckpointError) as err:
            # one line, and never torch's advice to retry with weights_only=False
            reason = str(err).split("; if you trust the file")[0]
            self._stop(f"ckpt_path: {reason}; give a checkpoint this run wrote (e.g. `--ckpt_path last`)")
        if not isinstance(checkpoint, dict):
            self._stop(f"ckpt_path: {ckpt_path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
        saved = dict(checkpoint.get("hyper_parameters", {}))
        saved.pop("_instantiator", None)
        saved_class = saved.pop("_class_path", None)
        model_config = self.config[subcommand].get("model")
        configured = model_config.as_dict() if hasattr(model_config, "as_dict") else dict(model_config or {})
        configured_class = configured.get("class_path")
        configured_args = _flatten(configured.get("init_args", {}))
        differences = []
        if saved_class and configured_class and saved_class != configured_class:
            differences.append(f"class_path: checkpoint {saved_class}, config {configured_class}")
        for key, saved_value in _flatten(saved).items():
            if key in configured_args and configured_args[key] != saved_value:
                differences.append(f"{key}: checkpoint {saved_value!r}, config {configured_args[key]!r}")
        for line in differences:
            warnings.warn(
                f"{ckpt_path}: model argument differs from the checkpoint, using the config's: {line}", stacklevel=1
            )


DEBUG = False
"""Set by `--debug` on the command line: errors keep their full traceback."""

_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    CheckpointError,
    HubModelUnavailableError,
    TooManyLoadFailures,
)


def _last_line(message: str) -> str:
    """The line of an error message that says what went wrong (a worker's re-raised error ends with it)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else message)[:500]


def trainer_presets() -> dict[str, Path]:
    """The trainer presets shipped in vislang-shared, by name (``ddp`` -> its YAML file)."""
    folder = files("vislang.shared") / "configs" / "trainer"
    return {
        entry.name.removesuffix(".yaml"): Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")
    }


def with_preset_trainer(config: dict[str, Any]) -> dict[str, Any]:
    """A config read as YAML, with its ``trainer_preset`` stacked under its ``trainer`` keys as the CLI
    does (for tools that read configs without the CLI: recipes, rehearsals)."""
    config = dict(config)
    name = config.pop("trainer_preset", None)
    if name:
        presets = trainer_presets()
        if name not in presets:
            raise ValueError(f"trainer_preset: no trainer preset {name!r}; one of {', '.join(sorted(presets))}")
        preset = yaml.safe_load(presets[name].read_text()) or {}
        config["trainer"] = {**preset, **(config.get("trainer") or {})}
    return config


def _config_files(argv: list[str]) -> list[tuple[int, str]]:
    """(position, path) of every ``--config``/``-c`` file on the command line."""
    found = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            found.append((i, argv[i + 1]))
        elif arg.startswith("--config="):
            found.append((i, arg.split("=", 1)[1]))
    return found


def with_trainer_presets(argv: list[str]) -> list[str]:
    """The command line with trainer presets named by their files: ``--trainer ddp`` becomes the
    preset's path, and a config's ``trainer_preset: NAME`` puts ``--trainer <path>`` just before that
    config, so the config's own trainer keys (and everything after it) override the preset's."""
    presets = trainer_presets()

    def path_of(name: str, where: str) -> str:
        if name not in presets:
            raise SystemExit(
                f"lightning: error: {where}: no trainer preset {name!r}; one of {', '.join(sorted(presets))}"
            )
        return str(presets[name])

    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--trainer" and i + 1 < len(out) and out[i + 1] in presets:
            out[i + 1] = path_of(out[i + 1], "--trainer")
        elif arg.startswith("--trainer=") and arg.split("=", 1)[1] in presets:
            out[i] = "--trainer=" + path_of(arg.split("=", 1)[1], "--trainer")
    for position, config in reversed(_config_files(out)):
        try:
            content = yaml.safe_load(Path(config).read_text())
        except (OSError, yaml.YAMLError):
            continue  # jsonargparse reports an unreadable config in its own words
        name = content.get("trainer_preset") if isinstance(content, dict) else None
        if name:
            out[position:position] = ["--trainer", path_of(str(name), f"{config}: trainer_preset")]
    return out


def main(args: ArgsType = None) -> None:
    """Entry point of the `lightning` console script and of `python -m vislang.shared`.

    Args:
        args: command-line arguments (a list, as from `sys.argv[1:]`); None reads `sys.argv`.
    """
    build_cli(args)


def build_cli(args: ArgsType = None, run: bool = True) -> VislangCLI:
    """Parse `args`, instantiate model, data and trainer, and (if `run`) run the subcommand.

    Args:
        args: command-line arguments (a list, as from `sys.argv[1:]`); None reads `sys.argv`.
        run: run the subcommand (fit, validate, ...); False only parses and instantiates, for tests.
    """
    # TF32 matmuls on Ampere+ GPUs: same accuracy class as bf16-mixed training, several times faster. Only with
    # CUDA: on CPU "high" may pick reduced-precision kernels that bring no speed (CMAE's demo measured slower).
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    global DEBUG
    argv = sys.argv[1:] if args is None else args  # a list, or a dict config (no flags to look at then)
    DEBUG = isinstance(argv, list) and "--debug" in argv
    if isinstance(argv, list):  # a dict config has no flags and names no presets
        args = with_trainer_presets([arg for arg in argv if arg != "--debug"])
    return VislangCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
