"""Two-process CPU (gloo) evaluation over 101 samples gives exactly the single-process numbers."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vislang.shared.metrics import decode_strings, encode_strings, evaluation_sampler, first_occurrence

WORKER = Path(__file__).with_name("ddp_metrics_worker.py")


def _load_worker():
    spec = importlib.util.spec_from_file_location("ddp_metrics_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_evaluation_is_exact(tmp_path):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), "2", str(port), str(tmp_path / f"rank{r}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    single = json.loads(json.dumps(_load_worker().evaluate(None)))  # same float -> JSON round trip
    for r, p in enumerate(procs):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, f"rank {r} failed:\n{out.decode()[-3000:]}"
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == single  # exact, every metric, every rank
    assert single["vqa"]["overall"] > 0 and 0 < single["retrieval"]["t2v/R@10"] < 100


def test_padded_sampler_really_duplicates_and_dedup_removes_it():
    from torch.utils.data import DistributedSampler

    seen = [i for r in range(2) for i in DistributedSampler(range(101), num_replicas=2, rank=r, shuffle=False)]
    assert len(seen) == 102 and first_occurrence(torch.tensor(seen)).numel() == 101
    unpadded = [i for r in range(2) for i in evaluation_sampler(range(101), num_replicas=2, rank=r)]
    assert sorted(unpadded) == list(range(101))


def test_first_occurrence_and_string_codec():
    keys = torch.tensor([5, 3, 5, 1, 3])
    assert first_occurrence(keys).tolist() == [3, 1, 0]  # ordered by key, first copy
    assert first_occurrence(torch.tensor([[1, 1], [0, 2], [1, 1]])).tolist() == [1, 0]
    strings = ["", "héllo", "yes/no", "日本"]
    assert decode_strings(*encode_strings(strings)) == strings
    with pytest.raises(ValueError, match="corrupt"):
        decode_strings(*encode_strings(["ab"])[:1], torch.tensor([1]))
