"""`python -m vislang.vlab.prepare` against a local HTTP server on 127.0.0.1 that serves small files in the
real formats at the official paths (CLIP4Clip's msrvtt_data.zip, Frozen in Time's MSRVTT.zip, open_clip's
and BERT's hub files): what it lays out is what the configs read; an interrupted transfer never leaves a file
under its final name; offline it prints what to fetch by hand."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from safetensors.torch import save_file
from transformers import BertConfig, BertForPreTraining

from vislang.shared.checkpoint import load_state_dict
from vislang.shared.data.synthetic import SyntheticWorld, writers
from vislang.shared.preflight import PreflightContext
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer
from vislang.vlab import prepare
from vislang.vlab.data import VLABDataModule
from vislang.vlab.model import PRESETS, build_vlab, load_bert_decoder, load_clip_state_dict


def _mirror_path(base: Path, url: str) -> Path:
    host_and_path = url.split("://", 1)[1]
    return base / host_and_path


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """The official files, small, in their real formats, at their official paths."""
    base = tmp_path_factory.mktemp("mirror")
    staging = tmp_path_factory.mktemp("staging")
    writers.write_msrvtt(SyntheticWorld(seed=2, image_size=32, num_frames=8), staging, num_videos=20)
    with zipfile.ZipFile(_make_parent(_mirror_path(base, prepare.CLIP4CLIP_MSRVTT)), "w") as archive:
        for name in ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"):
            archive.write(staging / name, f"msrvtt_data/{name}")
    with zipfile.ZipFile(_make_parent(_mirror_path(base, prepare.FROZEN_MSRVTT_VIDEOS)), "w") as archive:
        for video in sorted((staging / "videos").glob("*.mp4")):
            archive.write(video, f"MSRVTT/videos/all/{video.name}")
        archive.writestr("MSRVTT/annotation/MSR_VTT.json", "{}")  # the archive's other parts stay out
    clip = build_vlab("tiny", None).clip.state_dict()
    save_file({k: v.contiguous() for k, v in clip.items()}, _make_parent(_mirror_path(base, prepare._clip_url())))
    bert_dir = _mirror_path(base, f"{prepare.HUB}/bert-base-uncased/resolve/main/x").parent
    tokenizer = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    tokenizer.save_pretrained(bert_dir)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])  # BERT's vocab.txt: one token per id
    (bert_dir / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
    BertForPreTraining(BertConfig(vocab_size=len(tokenizer), **asdict(PRESETS["tiny"].decoder))).save_pretrained(
        bert_dir
    )
    return base


def _make_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path.endswith("truncated.bin"):  # announces 1,000 bytes, sends 10, closes
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            return
        super().do_GET()


@pytest.fixture
def server(mirror: Path) -> Iterator[str]:
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(mirror)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_prepare_msrvtt_lays_out_what_the_config_reads(server: str, tmp_path: Path, capsys) -> None:
    root, pretrained = tmp_path / "data" / "msrvtt", tmp_path / "pretrained"
    argv = ["msrvtt", "--root", str(root), "--pretrained", str(pretrained), "--videos", "--mirror", server]
    assert prepare.main(argv) == 0
    assert sorted(p.name for p in (root / "videos" / "all").glob("*.mp4")) and not (root / "annotation").exists()
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob("*.zip"))
    # the data module's preflight (as msrvtt.yaml runs it) finds every file and every listed video
    args = {"dataset": "msrvtt", "root": str(root), "videos_dir": "videos/all", "tasks": ["retrieval"]}
    for stage in ("fit", "test"):
        assert VLABDataModule.preflight(args, PreflightContext(stage=stage)) == []
    # the weights load where the configs point
    model = build_vlab("tiny", len(load_tokenizer(pretrained / "bert-base-uncased")))
    _, unexpected = load_clip_state_dict(model, load_state_dict(pretrained / prepare.CLIP_FILE))
    assert unexpected == []
    assert load_bert_decoder(model, str(pretrained / "bert-base-uncased")).unexpected == []

    # a second run fetches nothing
    count = len(_Handler.requests)
    assert prepare.main(argv) == 0
    assert len(_Handler.requests) == count


def test_an_interrupted_transfer_leaves_nothing_under_the_final_name(server: str, tmp_path: Path) -> None:
    target = tmp_path / "weights.safetensors"
    with pytest.raises(OSError, match="transfer ended after 10 of 1000 bytes"):
        prepare.download(f"{server}/truncated.bin", target)
    assert list(tmp_path.iterdir()) == []


def test_offline_prints_what_to_fetch_by_hand(tmp_path: Path, capsys) -> None:
    root = tmp_path / "msrvtt"
    # a closed port on this machine stands for a machine without internet
    code = prepare.main(
        ["msrvtt", "--root", str(root), "--pretrained", str(tmp_path / "p"), "--mirror", "http://127.0.0.1:9"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert prepare.CLIP4CLIP_MSRVTT in out and f"unpack msrvtt_data/* into {root}" in out
    assert "bert-base-uncased/resolve/main/model.safetensors" in out and "MSRVTT-QA" in out
    assert not root.exists() or not any(root.rglob("*.json"))
