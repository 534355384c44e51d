"""Each tab's checkpoint: the flag's, else the demo's (said so), else a message naming the command."""

from __future__ import annotations

import os
from pathlib import Path

from vislang.app.checkpoints import resolve_checkpoint, resolve_relative
from vislang.app.cli import launch_options, parser
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR


def test_flag_wins_and_a_missing_flag_file_is_named(tmp_path: Path) -> None:
    ckpt = tmp_path / "mine.ckpt"
    ckpt.write_bytes(b"x")
    resolved = resolve_checkpoint("pixellm", str(ckpt), tmp_path)
    assert resolved.path == ckpt and "--pixellm-ckpt" in resolved.message
    missing = resolve_checkpoint("vlab", str(tmp_path / "nope.ckpt"), tmp_path)
    assert missing.path is None and "--vlab-ckpt" in missing.message and "nope.ckpt: no such file" in missing.message


def test_demo_checkpoint_is_the_fallback_and_the_page_says_so(tmp_path: Path) -> None:
    demo = tmp_path / "demo_outputs" / "pixellm" / "checkpoints" / "last.ckpt"
    demo.parent.mkdir(parents=True)
    demo.write_bytes(b"x")
    resolved = resolve_checkpoint("pixellm", None, tmp_path)
    assert resolved.path == demo and "make demo-pixellm" in resolved.message and "no --pixellm-ckpt" in resolved.message


def test_without_any_checkpoint_the_message_names_the_command(tmp_path: Path) -> None:
    for name, command in [
        ("pixellm", "make demo-pixellm"),
        ("vlab", "make demo-vlab"),
        ("vqa", "make demo-vqa_ensemble"),
        ("cmae", "enable_checkpointing=true"),
    ]:
        resolved = resolve_checkpoint(name, None, tmp_path)
        assert resolved.path is None and command in resolved.message, resolved.message


def test_cmae_takes_the_newest_checkpoint_of_the_demo_versions(tmp_path: Path) -> None:
    paths = []
    for version in (0, 1):
        path = tmp_path / "demo_outputs" / "cmae" / f"version_{version}" / "checkpoints" / "epoch=11-step=756.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + version, 1000 + version))
        paths.append(path)
    assert resolve_checkpoint("cmae", None, tmp_path).path == paths[1]


def test_paths_recorded_relative_to_the_run_are_found_from_elsewhere(tmp_path: Path) -> None:
    member = tmp_path / "repo" / "demo_outputs" / "vqa_ensemble" / "region" / "last.ckpt"
    member.parent.mkdir(parents=True)
    member.write_bytes(b"x")
    anchor = tmp_path / "repo" / "demo_outputs" / "vqa_ensemble" / "ensemble" / "weights.json"
    assert resolve_relative("demo_outputs/vqa_ensemble/region/last.ckpt", anchor) == str(member)
    # the demo configs name the synthetic tokenizer relative to the repository root
    assert resolve_relative("shared/src/vislang/shared/assets/synthetic_wordpiece", tmp_path / "x.ckpt") in (
        str(SYNTHETIC_TOKENIZER_DIR),
        "shared/src/vislang/shared/assets/synthetic_wordpiece",
    )
    assert Path(resolve_relative("shared/src/vislang/shared/assets/synthetic_wordpiece", tmp_path / "x.ckpt")).is_dir()
    assert resolve_relative("bert-base-uncased", anchor) == "bert-base-uncased"


def test_server_binds_to_this_computer_by_default(tmp_path: Path) -> None:
    args = parser().parse_args([])
    assert args.host == "127.0.0.1" and args.pixellm_ckpt is None
    options = launch_options(args, tmp_path)
    assert options["server_name"] == "127.0.0.1" and options["share"] is False and options["ssr_mode"] is False
    # Gradio takes an int as bytes (a "50.0mb" string is refused by its parser)
    assert options["max_file_size"] == 50 * 1024 * 1024 and options["allowed_paths"] == [str(tmp_path)]
    assert launch_options(parser().parse_args(["--max-upload-mb", "0.5"]), tmp_path)["max_file_size"] == 2**19
