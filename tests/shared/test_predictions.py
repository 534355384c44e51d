"""Prediction files replace the previous run's instead of growing; an interrupted write leaves the old one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vislang.shared.predictions import gather_objects, replace_text, write_json_lines


def test_json_lines_replace_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    rows = [{"index": i, "answer": f"a{i}"} for i in range(3)]
    write_json_lines(path, rows)
    write_json_lines(path, rows)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows  # not twice as many
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    path = replace_text(tmp_path / "results.json", "old")

    def rows():
        yield {"index": 0}
        raise KeyboardInterrupt  # killed while the rows are produced

    with pytest.raises(KeyboardInterrupt):
        write_json_lines(path, rows())
    assert path.read_text() == "old"


def test_gather_outside_distributed_is_this_process_only() -> None:
    assert gather_objects({"rows": [1]}) == [{"rows": [1]}]
