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
from support.pictures import psnr

TESTS = Path(__file__).parent
ROOT = TESTS.parent


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


def decode_config(tmp_path: Path, frames: int, last_stage: str) -> Path:
    """decode (a synthetic 64x48 clip of `frames` frames) -> `last_stage` (its YAML list entry)."""
    clip = write_clip(tmp_path / "in.mp4", width=64, height=48, frames=frames)
    path = tmp_path / "decode.yaml"
    path.write_text(
        f"name: decode-test\ndevice: cpu\nstages:\n  - {{name: source, type: decode, uri: {clip}}}{last_stage}"
    )
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
    config = decode_config(
        tmp_path,
        24,
        f"""
  - name: video
    type: encode
    path: {tmp_path / "out.mp4"}
    backend: cpu
    preset: ultrafast
    cpu_encoder: process
    encoders: {encoders}
    segment_seconds: 0.2
""",
    )
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


def _detections(path: Path) -> list[tuple[int, list[list[float]], list[float]]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [(line["index"], line["results"]["boxes"], line["results"]["scores"]) for line in lines]


def test_serial_baseline_is_the_same_pipeline_at_batch_1_with_the_same_detections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped face config (batches of 8, CenterFace fixed at batch 8) on CPU, a few frames."""
    monkeypatch.setenv("FACES_OUT", str(tmp_path))
    serial_out = [f"detections.path={tmp_path / 'serial.jsonl'}", f"video.path={tmp_path / 'serial.mp4'}"]
    result = run_bench(
        ROOT / "configs" / "face_detect.yaml", frames=4, warmup=2, baseline="serial", baseline_overrides=serial_out
    )
    # Batch-1 shapes without being asked, then the user's overrides; nothing else differs.
    assert result.batch_one_overrides == ["source.emit_batch=1", "detect.input_shapes={input.1: [1, 3, 384, 640]}"]
    data = result.to_dict()
    assert data["baseline_serial"]["overrides"] == [*result.batch_one_overrides, *serial_out]
    assert result.baseline is not None and result.pipeline_frames == result.baseline.frames == 4
    serial = {stage["name"]: stage for stage in data["baseline_serial"]["stages"]}
    pipeline = {stage["name"]: stage for stage in data["pipeline"]["stages"]}
    # Hook calls: process() per item, then end_source() and flush().
    assert serial["detect"]["calls"] == 6 + 2 and serial["detect"]["frames_in"] == 6, "one frame per model call"
    assert pipeline["detect"]["calls"] == 1 + 2 and pipeline["detect"]["frames_in"] == 6, "the pipeline's batch of 8"
    assert serial["detect"]["queue_capacity"] is None and pipeline["detect"]["queue_capacity"] == 4
    # Every frame, in order, with the same faces (batch 1 and batch 8 differ only in float rounding).
    ours, theirs = _detections(tmp_path / "face_detect.jsonl"), _detections(tmp_path / "serial.jsonl")
    assert [index for index, _, _ in ours] == [index for index, _, _ in theirs] == list(range(6))
    assert sum(len(boxes) for _, boxes, _ in ours) >= 6, "the sample has faces in every frame"
    for (_, boxes, scores), (_, serial_boxes, serial_scores) in zip(ours, theirs, strict=True):
        assert len(serial_boxes) == len(boxes) and serial_scores == pytest.approx(scores, abs=1e-3)
        for box, serial_box in zip(boxes, serial_boxes, strict=True):
            assert serial_box == pytest.approx(box, abs=0.05)
    for name in ("face_detect_source.mp4", "serial.mp4"):
        with av.open(str(tmp_path / name)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 6


def test_frames_beyond_the_input_loop_it_so_every_frame_asked_for_is_timed(tmp_path: Path) -> None:
    config = decode_config(
        tmp_path,
        10,
        f"""
  - name: sink
    type: support.stages:LinesSink
    path: {tmp_path / "out.jsonl"}
""",
    )
    result = run_bench(config, frames=16, warmup=2, baseline="serial")
    assert result.baseline is not None and result.pipeline_frames == result.baseline.frames == 16
    assert result.input_overrides == ["source.loop=true"] and result.warnings == []
    assert result.pipeline_stats.stage("source").counters["loops"] == 1
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["index"] for line in written[:-1]] == list(range(18)), "the baseline's pass, looped once"


def test_an_input_that_cannot_loop_says_how_many_frames_were_timed(tmp_path: Path) -> None:
    result = run_bench(lines_config(tmp_path, count=6), frames=8, warmup=1, baseline="serial")
    assert result.baseline is not None and result.pipeline_frames == result.baseline.frames == 5
    assert result.to_dict()["warnings"] == [
        f"{run}: 5 frames timed, not the 8 asked for: the input ended after 6 frames and its source 'source' "
        "cannot loop"
        for run in ("pipeline", "serial baseline")
    ]


def test_super_resolution_bench_runs_serially_with_its_stateful_window_and_child_encoders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/super_resolution.yaml as shipped (window of 5, three libx264 child processes), a tiny clip."""
    monkeypatch.setenv("SR_CLIP", str(write_clip(tmp_path / "in.mp4", width=48, height=32, frames=12)))
    monkeypatch.setenv("SR_OUT", str(tmp_path))
    serial_out = tmp_path / "serial.mp4"
    result = run_bench(
        ROOT / "configs" / "super_resolution.yaml",
        frames=6,
        warmup=2,
        baseline="serial",
        baseline_overrides=[f"video.path={serial_out}"],
    )
    assert result.batch_one_overrides == ["source.emit_batch=1", "window.emit_batch=1"]
    assert result.baseline is not None and result.pipeline_frames == result.baseline.frames == 6
    upscale = result.baseline.stats.stage("upscale")
    assert upscale.frames_in == 8 and upscale.calls == 8 + 2, "one window per call (then end_source, flush)"
    pictures = []
    for path in (tmp_path / "super_resolution_source.mp4", serial_out):
        with av.open(str(path)) as container:
            pictures.append([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert [len(frames) for frames in pictures] == [8, 8] and pictures[1][0].shape == (64, 96, 3)
    for ours, theirs in zip(*pictures, strict=True):
        assert psnr(ours, theirs) > 40, "the same frames, whatever the schedule"
