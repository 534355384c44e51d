"""Fetch and lay out what VLAB's configs need: annotations, videos, CLIP and BERT weights.

    python -m vislang.vlab.prepare msrvtt --root data/msrvtt            # annotations + weights
    python -m vislang.vlab.prepare msrvtt --root data/msrvtt --videos   # + the 6.3 GB of videos
    python -m vislang.vlab.prepare weights                              # CLIP ViT-B/16 (openai) + bert-base-uncased
    python -m vislang.vlab.prepare msvd                                 # what to fetch by hand, and where it goes

Every file is downloaded from its official source (CLIP4Clip's release for the MSRVTT annotations,
Frozen in Time's MSRVTT.zip for the videos, the Hugging Face hub for the weights open_clip and BERT
publish) into a temporary name and renamed only when complete, so an interrupted download never
leaves a truncated file where a run would read it; files already in place are not fetched again.
Offline, it prints each address and where the file goes instead. `--mirror URL` reads every file from
`URL/<host>/<path>` (a proxy or an internal mirror of the same files).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

__all__ = ["Download", "download", "main", "plan"]

CLIP4CLIP_MSRVTT = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip"
FROZEN_MSRVTT_VIDEOS = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"
HUB = "https://huggingface.co"
BERT_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "model.safetensors")

# what the paper configs point at (clip_weights, decoder_tokenizer, decoder_weights)
CLIP_ARCH, CLIP_TAG = "ViT-B-16", "openai"
CLIP_FILE = Path("open_clip") / f"{CLIP_ARCH}-{CLIP_TAG}.safetensors"
BERT_DIR = Path("bert-base-uncased")

MANUAL = {
    "msrvtt": ["MSRVTT-QA: {{train,val,test}}_qa.json (xudejing/video-question-answering) -> {root}/msrvtt_qa/"],
    "msvd": [
        "videos: https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar -> {root}/videos/",
        "lists and captions: https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msvd_data.zip -> {root}/",
        "MSVD-QA: {{train,val,test}}_qa.json and youtube_mapping.txt (xudejing/video-question-answering) "
        "-> {root}/msvd_qa/",
    ],
    "tgif": [
        "questions: {{Train,Test}}_frameqa_question.csv (YunseokJANG/tgif-qa, dataset/) -> {root}/",
        "GIFs: the TGIF dataset (raingo/TGIF-Release) -> {root}/gifs/",
    ],
    "webvid": ["results_2M_{{train,val}}.csv and the videos (m-bain/webvid, with video2dataset) -> {root}/"],
}


@dataclass(frozen=True)
class Download:
    """One file to fetch: its official address, where it goes, and (for archives) what to unpack.

    Attributes:
        url: the official address.
        target: the final path (for an archive: the archive's own download path).
        unpack: for a zip archive, `(member prefix, destination folder)`: members under the prefix are
            extracted into the folder with the prefix removed; the archive is deleted afterwards and
            `<archive>.done` marks the step as finished (an interrupted unpacking is redone).
    """

    url: str
    target: Path
    unpack: tuple[str, Path] | None = None

    @property
    def marker(self) -> Path:
        return self.target.with_name(self.target.name + ".done") if self.unpack else self.target

    @property
    def finished(self) -> bool:
        return self.marker.exists()


def _clip_url() -> str:
    import open_clip

    hub = open_clip.get_pretrained_cfg(CLIP_ARCH, CLIP_TAG)["hf_hub"].rstrip("/")
    return f"{HUB}/{hub}/resolve/main/open_clip_model.safetensors"


def plan(target: str, root: Path, pretrained: Path, videos: bool, weights: bool) -> list[Download]:
    """The downloads `target` needs (`weights` alone, or a dataset name with the weights)."""
    steps: list[Download] = []
    if target == "msrvtt":
        steps.append(Download(CLIP4CLIP_MSRVTT, root / ".downloads" / "msrvtt_data.zip", ("msrvtt_data/", root)))
        if videos:
            steps.append(
                Download(
                    FROZEN_MSRVTT_VIDEOS,
                    root / ".downloads" / "MSRVTT.zip",
                    ("MSRVTT/videos/all/", root / "videos" / "all"),
                )
            )
    if weights or target == "weights":
        steps.append(Download(_clip_url(), pretrained / CLIP_FILE))
        steps += [
            Download(f"{HUB}/bert-base-uncased/resolve/main/{name}", pretrained / BERT_DIR / name)
            for name in BERT_FILES
        ]
    return steps


def _mirrored(url: str, mirror: str | None) -> str:
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def _reachable(url: str, timeout: float = 5.0) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout):
            return True
    except OSError:
        return False


def download(url: str, target: Path, timeout: float = 60.0) -> None:
    """Fetch `url` into `target` through `<target>.partial`, renamed only once every byte has arrived.

    A transfer that ends early (fewer bytes than the server announced) raises and leaves nothing under
    `target`; so does an interrupted one (the partial file is removed, or at worst left as `.partial`).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    request = urllib.request.Request(url, headers={"User-Agent": "vislang-prepare"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, partial.open("wb") as out:
            expected = response.headers.get("Content-Length")
            total = int(expected) if expected else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise OSError(f"{url}: transfer ended after {out.tell()} of {total} bytes")
        os.replace(partial, target)
    except urllib.error.HTTPError as err:
        raise OSError(f"{url}: HTTP {err.code} {err.reason}") from None
    finally:
        partial.unlink(missing_ok=True)


def _unpack(archive: Path, prefix: str, destination: Path) -> int:
    """Extract the members under `prefix` into `destination` (each through a temporary name)."""
    count = 0
    with zipfile.ZipFile(archive) as zipped:
        members = [m for m in zipped.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
        for member in tqdm(members, desc=f"unpacking {archive.name}", unit="file", file=sys.stderr):
            relative = Path(member.filename[len(prefix) :])
            if relative.is_absolute() or ".." in relative.parts:
                raise ValueError(f"{archive}: refusing member {member.filename!r} outside the destination")
            final = destination / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(final.name + ".partial")
            with zipped.open(member) as source, partial.open("wb") as out:
                shutil.copyfileobj(source, out)
            os.replace(partial, final)
            count += 1
    if count == 0:
        raise ValueError(f"{archive}: no member under {prefix!r}; is this the right archive?")
    return count


def run(target: str, root: Path, pretrained: Path, videos: bool, weights: bool, mirror: str | None) -> int:
    """Fetch what is missing; return 0 when everything is in place, 1 when something must be fetched by hand."""
    steps = [step for step in plan(target, root, pretrained, videos, weights) if not step.finished]
    manual = [line.format(root=root) for line in MANUAL.get(target, [])]
    offline = [step for step in steps if not _reachable(_mirrored(step.url, mirror))]
    if offline:
        print("offline: fetch these by hand (or re-run this command on a machine with internet):")
        for step in offline:
            where = f"unpack {step.unpack[0]}* into {step.unpack[1]}" if step.unpack else f"save as {step.target}"
            print(f"  {step.url}\n      -> {where}")
    for step in steps:
        if step in offline:
            continue
        download(_mirrored(step.url, mirror), step.target)
        if step.unpack:
            count = _unpack(step.target, *step.unpack)
            step.target.unlink()
            step.marker.write_text(f"{count} files from {step.url}\n")
            print(f"{step.unpack[1]}: {count} files from {step.url}")
        else:
            print(f"{step.target}: from {step.url}")
    if manual:
        print("to fetch by hand:\n" + "\n".join(f"  {line}" for line in manual))
    return 1 if offline else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vislang.vlab.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=["weights", "msrvtt", "msvd", "tgif", "webvid"])
    parser.add_argument("--root", type=Path, help="dataset folder (default data/<target>)")
    parser.add_argument(
        "--pretrained", type=Path, default=Path("pretrained"), help="weights folder (default pretrained)"
    )
    parser.add_argument("--videos", action="store_true", help="also fetch the videos (MSRVTT: 6.3 GB)")
    parser.add_argument("--no-weights", dest="weights", action="store_false", help="skip the CLIP and BERT weights")
    parser.add_argument("--mirror", help="read every file from MIRROR/<host>/<path> instead of its official address")
    args = parser.parse_args(argv)
    root = args.root or Path("data") / args.target
    return run(args.target, root, args.pretrained, args.videos, args.weights, args.mirror)


if __name__ == "__main__":
    sys.exit(main())
