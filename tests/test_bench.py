"""`streamflow bench`: pipeline vs serial baseline on CPU, what is timed, and the figures reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from streamflow.cli.bench import BenchError, run_bench
from streamflow.video.synth import write_clip

TESTS = Path(__file__).parent


def lines_config(tmp_path: Path, *, count: int, flush_delay: float = 0.0) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(f"""
name: bench-test
device: cpu
stages:
  - name: source
    type: support.stages:CountingSource
    count: {count}
  - name: sink
    type: support.stages:LinesSink
    path: {tmp_path / "out.jsonl"}
    flush_delay: {flush_delay}
""")
    return path


def test_timing_runs_until_the_last_stage_has_flushed(tmp_path: Path) -> None:
    """A sink that finishes its work at flush (an encoder's lookahead, a child process) is timed to the end."""
    result = run_bench(lines_config(tmp_path, count=30, flush_delay=0.4), frames=20, warmup=5, baseline="serial")
    assert result.pipeline_frames == 20 and result.baseline is not None and result.baseline.frames == 20
    # 20 frames that cannot be complete before the 0.4 s flush: at most 50 fps, whatever the machine.
    assert result.pipeline_fps <= 20 / 0.4
    assert result.baseline.fps <= 20 / 0.4
    assert result.baseline.busy_s["sink"] >= 0.4  # the flush is the sink's work
    data = result.to_dict()
    assert data["ratio"] == pytest.approx(result.pipeline_fps / result.baseline.fps, rel=1e-2)
    assert data["cpu_cores_busy"]["pipeline"] is not None and data["cpu_cores_busy"]["baseline_serial"] is not None


def test_too_few_frames_for_the_warmup_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="need more than warm-up"):
        run_bench(lines_config(tmp_path, count=3), frames=5, warmup=5, baseline="none")


@pytest.mark.parametrize("encoders", [1, 2])
def test_encode_bench_with_a_baseline_override(tmp_path: Path, encoders: int) -> None:
    """Decode -> encode, the pipeline's encoder(s) in child processes, the baseline's in its own thread."""
    clip = write_clip(tmp_path / "in.mp4", width=64, height=48, frames=24)
    config = tmp_path / "enc.yaml"
    config.write_text(f"""
name: enc
device: cpu
stages:
  - name: source
    type: decode
    uri: {clip}
  - name: video
    type: encode
    path: {tmp_path / "out.mp4"}
    backend: cpu
    preset: ultrafast
    cpu_encoder: process
    encoders: {encoders}
    segment_seconds: 0.2
""")
    overrides = ["video.cpu_encoder=thread", "video.encoders=1"]
    result = run_bench(config, frames=16, warmup=4, baseline="serial", baseline_overrides=overrides)
    assert result.pipeline_frames == 16 and result.baseline is not None and result.baseline.frames == 16
    assert result.baseline_overrides == overrides
    # Both runs' files are measured (a keyframe every 6 frames costs bytes: that is reported, not hidden).
    sizes = result.to_dict()["output_bytes"]
    assert sizes["pipeline"]["video"] > 0 and sizes["baseline_serial"]["video"] > 0
    if encoders == 1:  # the same encoder, the same frames: the same stream
        assert sizes["pipeline"]["video"] == sizes["baseline_serial"]["video"]
    with av.open(str(tmp_path / "out.mp4")) as container:  # the baseline's run wrote the file last
        assert sum(1 for _ in container.decode(video=0)) == 20


def test_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamflow.cli",
            "bench",
            str(lines_config(tmp_path, count=12)),
            "--frames",
            "8",
            "--warmup",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["pipeline"]["frames"] == 8 and data["baseline_serial"]["frames"] == 8
    assert "ratio pipeline / serial" in result.stdout + result.stderr


def test_rounds_alternate_and_report_medians(tmp_path: Path) -> None:
    result = run_bench(lines_config(tmp_path, count=12), frames=8, warmup=2, baseline="serial", repeat=3)
    assert len(result.rounds) == 3 and all(b is not None for _, b in result.rounds)
    pipeline_fps = sorted(p for p, _ in result.rounds)
    assert result.pipeline_fps == pytest.approx(pipeline_fps[1])
    ratios = sorted(p / b for p, b in result.rounds if b)
    assert result.ratio == pytest.approx(ratios[1])
    assert len(result.to_dict()["rounds"]) == 3
    with pytest.raises(BenchError, match="repeat"):
        run_bench(lines_config(tmp_path, count=12), frames=8, warmup=2, baseline="serial", repeat=0)
