"""``python -m vislang.shared.data.synthetic preview --out sheet.png [--seed 0 --n 8 --image-size 64]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vislang.shared.data.synthetic", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    preview = commands.add_parser("preview", help="draw a contact sheet of scenes, texts and a video")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--n", type=int, default=8, help="number of scenes")
    preview.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)

    from vislang.shared.data.synthetic.preview import save_preview

    try:
        path = save_preview(args.out, seed=args.seed, n=args.n, image_size=args.image_size)
    except ValueError as error:
        parser.error(str(error))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
