"""`jsonl` sink: one complete JSON line per frame, results converted, lines visible as they come."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.jsonl import JsonlSink, to_jsonable
from streamflow import Batch, Pipeline
from streamflow.frame import StreamInfo
from streamflow.results import encode_message
from streamflow.testing import ListSource, RaiseError, make_frames, run_stage


def read_lines(path: Path) -> list[dict[str, object]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")  # never a half line
    return [json.loads(line) for line in text.splitlines()]


def test_one_line_per_frame_with_results(tmp_path: Path) -> None:
    frames = make_frames(3, source_id="cam")
    frames[0].results["boxes"] = torch.tensor([[10.0, 20.0, 30.5, 40.0], [1, 2, 3, 4]])
    frames[0].results["scores"] = torch.tensor([0.9, 0.25])
    frames[0].results["landmarks"] = np.zeros((2, 5, 2), dtype=np.float32)
    frames[0].results["labels"] = ["face", "face"]
    frames[1].info = StreamInfo(width=4, height=4, codec="h264", time_base=frames[1].time_base)
    path = tmp_path / "det.jsonl"
    run_stage(JsonlSink(path=str(path)), frames)
    lines = read_lines(path)
    assert [(line["source_id"], line["index"]) for line in lines] == [("cam", 0), ("cam", 1), ("cam", 2)]
    assert [line["pts"] for line in lines] == pytest.approx([0, 1 / 30, 2 / 30])
    first = lines[0]["results"]
    assert first == {
        "boxes": [[10.0, 20.0, 30.5, 40.0], [1.0, 2.0, 3.0, 4.0]],
        "scores": pytest.approx([0.9, 0.25]),
        "landmarks": [[[0.0, 0.0]] * 5] * 2,
        "labels": ["face", "face"],
    }
    assert lines[1]["width"] == 4 and lines[1]["results"] == {}
    assert lines[2]["results"] == {}


def test_batches_are_written_frame_by_frame(tmp_path: Path) -> None:
    frames = make_frames(5)
    path = tmp_path / "b.jsonl"
    run_stage(JsonlSink(path=str(path)), [Batch(frames[:3]), Batch(frames[3:])])
    assert [line["index"] for line in read_lines(path)] == [0, 1, 2, 3, 4]


def test_no_pts_and_non_finite_values(tmp_path: Path) -> None:
    frames = make_frames(1)
    frames[0].pts = None
    frames[0].results["scores"] = torch.tensor([math.nan, math.inf, 0.5])
    path = tmp_path / "n.jsonl"
    run_stage(JsonlSink(path=str(path)), frames)
    (line,) = read_lines(path)
    assert line["pts"] is None and line["results"] == {"scores": [None, None, 0.5]}


def test_lines_already_written_survive_an_error(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    items = [*make_frames(4), RaiseError(RuntimeError("boom"))]
    with pytest.raises(RuntimeError, match="boom"):
        Pipeline([ListSource(items, interval=0.02), JsonlSink(path=str(path))], device="cpu").run_sync()
    lines = read_lines(path)
    assert 1 <= len(lines) <= 4
    assert [line["index"] for line in lines] == list(range(len(lines)))


def test_lines_are_visible_before_the_end(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    sink = JsonlSink(path=str(path))
    sink.setup()
    try:
        sink.process(make_frames(1)[0])
        # Unbuffered: another reader sees the complete line while the file is still open.
        assert len(read_lines(path)) == 1
    finally:
        sink.teardown()


def test_missing_folders_are_created(tmp_path: Path) -> None:
    run_stage(JsonlSink(path=str(tmp_path / "new" / "deeper" / "x.jsonl")), make_frames(2))
    assert len((tmp_path / "new" / "deeper" / "x.jsonl").read_text().splitlines()) == 2


_FILE_SIZE_LIMIT_SCRIPT = """
import resource, signal, sys
from stages.jsonl import JsonlSink
from streamflow import Pipeline
from streamflow.testing import ListSource, make_frames
# Past the limit the kernel sends SIGXFSZ (which would kill us) or, ignored, fails the write:
# a full disk, deterministically.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    Pipeline([ListSource(make_frames(200)), JsonlSink(path=sys.argv[1])], device="cpu").run_sync()
except OSError as error:
    print(str(error).splitlines()[0])
    sys.exit(1)
"""


def test_a_full_file_system_never_leaves_half_a_line(tmp_path: Path) -> None:
    out = tmp_path / "d.jsonl"
    # Line sizes vary by a byte or two with each message's wall_time: the limit cuts the 8th line
    # near its middle whatever they are.
    sizes = [len(encode_message(JsonlSink.record(f))) + 1 for f in make_frames(200)]
    limit = sum(sizes[:7]) + sizes[7] // 2  # the 8th line fits only half-way
    done = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT_SCRIPT, str(out), str(limit)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 1, done.stderr
    assert "kept 7 complete lines" in done.stdout and "Traceback" not in done.stderr
    data = out.read_bytes()
    assert data.endswith(b"\n") and len(data) <= limit
    assert [json.loads(text)["index"] for text in data.decode().splitlines()] == list(range(7))


def test_to_jsonable_odd_types() -> None:
    assert to_jsonable({1: np.float32(0.5), "t": (np.int64(2), True)}) == {"1": 0.5, "t": [2, True]}
    assert to_jsonable(torch.tensor(3)) == 3
    assert to_jsonable(object()).startswith("<object")
