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
* A parse error (a misspelled key, a wrong type) prints one line naming the key, not a page of usage.
* Before anything is built, `vislang.shared.preflight` checks what the config needs (data, weights,
  tokenizers, the accelerator) and lists everything missing at once, each with its fix
  (`VISLANG_SKIP_PREFLIGHT=1` skips it).
* No argument links are declared: a link whose source attribute is missing on the chosen data
  module is skipped silently by jsonargparse, and one CLI serves six packages. A module reads what
  it needs from `self.trainer.datamodule` in `setup()` instead.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from vislang.shared.preflight import format_missing, run_preflight

__all__ = ["VislangCLI", "VislangArgumentParser", "build_cli", "main", "one_line_error"]


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
            (parser_kwargs.setdefault(name, {}) if name else parser_kwargs).setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

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
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        try:
            checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
        except Exception as err:  # the Trainer will raise its own, clearer error when it loads the file
            warnings.warn(
                f"{ckpt_path}: could not read hyper-parameters to compare with the config ({err})", stacklevel=1
            )
            return
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
