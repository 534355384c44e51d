"""`vislang-app`: serve the page on this computer.

    vislang-app                                  # every tab on the checkpoints the demos wrote
    vislang-app --pixellm-ckpt path/to/last.ckpt --port 7861

Binds 127.0.0.1 unless `--host` says otherwise; never makes a share link; uploads over `--max-upload-mb`
are refused; everything the app writes goes into one temporary folder that is deleted on exit.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vislang.app.checkpoints import DEMOS
from vislang.app.inputs import MAX_UPLOAD_MB

__all__ = ["launch_options", "main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vislang-app", description=__doc__.split("\n\n")[0])
    for name, tab in (("pixellm", "PixelLM"), ("vlab", "VLAB"), ("cmae", "CMAE")):
        p.add_argument(
            DEMOS[name].flag,
            metavar="PATH",
            help=f"{tab} checkpoint (default: the one `{DEMOS[name].command}` writes under --demo-root)",
        )
    p.add_argument(
        "--vqa-ckpt",
        metavar="WEIGHTS_JSON",
        help="ensemble weights JSON written by `lightning validate` "
        "of an ensemble config (lists the member checkpoints; default: the demo's)",
    )
    p.add_argument(
        "--vqa-detector",
        metavar="PATH",
        help="detector checkpoint the members' features came from (default: the demo's)",
    )
    p.add_argument("--vlab-videos", metavar="FOLDER", help="folder the VLAB tab proposes (default: the demo's videos)")
    p.add_argument("--demo-root", default=".", help="where `make demo-*` ran (its demo_outputs/); default: here")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="larger uploads are refused")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)), help="torch CPU threads")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    temp = Path(tempfile.mkdtemp(prefix="vislang-app-"))
    atexit.register(shutil.rmtree, temp, ignore_errors=True)
    # `kill` (SIGTERM) ends the process through SystemExit, so the temporary folder is deleted then too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    os.environ["GRADIO_TEMP_DIR"] = str(temp / "gradio")  # uploads and served outputs: inside the temp folder

    import torch

    from vislang.app.ui import THEME, AppConfig, build_app

    torch.set_num_threads(args.threads)
    config = AppConfig(
        out_dir=temp / "outputs",
        demo_root=Path(args.demo_root),
        pixellm_ckpt=args.pixellm_ckpt,
        vlab_ckpt=args.vlab_ckpt,
        vqa_ckpt=args.vqa_ckpt,
        vqa_detector=args.vqa_detector,
        cmae_ckpt=args.cmae_ckpt,
        vlab_videos=args.vlab_videos,
    )
    app = build_app(config)
    print(f"vislang-app: temporary folder {temp} (deleted on exit)", flush=True)
    app.queue(default_concurrency_limit=1).launch(**launch_options(args, temp), theme=THEME)


def launch_options(args: argparse.Namespace, temp: Path) -> dict[str, Any]:
    """`Blocks.launch` arguments: this computer only unless --host, no share link, no server-side rendering
    (it would start a Node server), uploads capped, files served only from the temporary folder."""
    return {
        "server_name": args.host,
        "server_port": args.port,
        "share": False,
        "inbrowser": False,
        "max_file_size": int(args.max_upload_mb * 1024 * 1024),
        "allowed_paths": [str(temp)],
        "ssr_mode": False,
        "pwa": False,
        "mcp_server": False,
        "show_error": True,
    }


if __name__ == "__main__":
    main()
