"""The shipped configs with many sources: only the source list changes (face detection, super-resolution)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from streamflow.config import build_pipeline
from streamflow.sources import SourceSpec
from streamflow.video.synth import write_clip

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "samples" / "faces.mp4"


def decoded(path: Path) -> tuple[list[float], tuple[int, int]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return [float(f.pts * f.time_base) for f in frames], (frames[0].width, frames[0].height)


def jsonl_by_source(path: Path) -> dict[str, list[dict]]:
    lines: dict[str, list[dict]] = {}
    for text in path.read_text().splitlines():
        line = json.loads(text)
        lines.setdefault(line["source_id"], []).append(line)
    return lines


def four_clips(tmp_path: Path) -> dict[str, tuple[Path, int]]:
    """Different sizes, frame rates and lengths; the face sample among them (cut to 5 frames)."""
    return {
        "faces": (FACES, 5),
        "qvga": (write_clip(tmp_path / "qvga.mp4", width=320, height=240, frames=4, fps=30), 4),
        "tiny": (write_clip(tmp_path / "tiny.mp4", width=160, height=120, frames=6, fps=15), 6),
        "wide": (write_clip(tmp_path / "wide.mp4", width=256, height=144, frames=3, fps=25), 3),
    }


def test_face_detection_over_four_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACES_OUT", str(tmp_path))
    clips = four_clips(tmp_path)
    specs = [SourceSpec(id=sid, uri=str(path), max_frames=count) for sid, (path, count) in clips.items()]
    # batch_size 8 on the stage after the sources: batches mix sources up to the model's batch.
    pipeline = build_pipeline(
        ROOT / "configs" / "face_detect.yaml",
        overrides=["preprocess.batch_size=8", "source.emit_batch=2"],
        sources=specs,
    )
    stats = pipeline.run_sync()
    lines = jsonl_by_source(tmp_path / "face_detect.jsonl")
    for sid, (path, count) in clips.items():
        assert [line["index"] for line in lines[sid]] == list(range(count)), sid
        times, size = decoded(tmp_path / f"face_detect_{sid}.mp4")
        assert len(times) == count and times == sorted(times)
        assert size == decoded(path)[1], "each source keeps its own size"
        assert stats.source(sid).frames_done == count
    assert all(line["results"]["boxes"] for line in lines["faces"]), "the face sample has faces in every frame"


def test_super_resolution_keeps_a_window_per_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SR_OUT", str(tmp_path))
    clips = {
        "a": write_clip(tmp_path / "a.mp4", width=48, height=32, frames=7, fps=30),
        "b": write_clip(tmp_path / "b.mp4", width=48, height=32, frames=3, fps=24, pattern="noise"),
    }
    shapes = "{frames: {min: [1, 15, 32, 48], opt: [4, 15, 32, 48], max: [4, 15, 32, 48]}}"
    build_pipeline(
        ROOT / "configs" / "super_resolution.yaml",
        overrides=[f"upscale.input_shapes={shapes}", "video.encoders=1", "video.cpu_encoder=thread"],
        sources=[SourceSpec(id=sid, uri=str(path)) for sid, path in clips.items()],
    ).run_sync()
    for sid, path in clips.items():
        times_out, size = decoded(tmp_path / f"super_resolution_{sid}.mp4")
        assert size == (96, 64)
        assert times_out == pytest.approx(decoded(path)[0]), f"{sid}: every frame, with its own timestamps"


def test_cli_a_corrupt_source_fails_alone_with_one_line_and_exit_1(tmp_path: Path) -> None:
    good = write_clip(tmp_path / "good.mp4", width=160, height=96, frames=4, fps=30)
    other = write_clip(tmp_path / "other.mp4", width=128, height=72, frames=3, fps=25)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video file" * 64)
    listing = tmp_path / "sources.txt"
    listing.write_text(f"# cameras\ngood={good}\n{other}\n")
    env = {**os.environ, "FACES_OUT": str(tmp_path)}
    flags = ["--sources-file", str(listing), "--source", f"bad={corrupt}", "--stats-json", str(tmp_path / "s.json")]
    result = subprocess.run(
        [sys.executable, "-m", "streamflow.cli", "run", str(ROOT / "configs" / "face_detect.yaml"), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 1, result.stderr
    failed = [line for line in result.stderr.splitlines() if "failed" in line and "source 'bad'" in line]
    assert len(failed) == 1 and "corrupt.mp4" in failed[0], result.stderr
    assert "Traceback" not in result.stderr
    lines = jsonl_by_source(tmp_path / "face_detect.jsonl")
    assert {sid: len(v) for sid, v in lines.items()} == {"good": 4, "s3": 3}
    assert len(decoded(tmp_path / "face_detect_good.mp4")[0]) == 4
    stats = json.loads((tmp_path / "s.json").read_text())
    by_id = {s["id"]: s for s in stats["sources"]}
    assert by_id["bad"]["error"] and by_id["good"]["error"] is None and by_id["good"]["frames"] == 4


def test_cli_source_flags_are_checked(tmp_path: Path) -> None:
    config = ROOT / "configs" / "face_detect.yaml"
    for args, message in (
        (["--source", "no-equals-sign"], "must look like ID=URI"),
        (["--source", "bad id=x.mp4"], "field 'id'"),
        (["--sources-file", str(tmp_path / "none.txt")], "file not found"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "streamflow.cli", "run", str(config), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


@pytest.mark.gpu
@pytest.mark.parametrize("feeder_threads", [None, 2])
def test_gpu_nvdec_sources_of_mixed_resolutions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feeder_threads: int | None
) -> None:
    monkeypatch.setenv("FACES_OUT", str(tmp_path))
    clips = {
        "faces": (FACES, 40),
        "hd": (write_clip(tmp_path / "hd.mp4", width=1920, height=1080, frames=30, fps=30), 30),
        "nhd": (write_clip(tmp_path / "nhd.mp4", width=640, height=360, frames=50, fps=25), 50),
        "qvga": (write_clip(tmp_path / "qvga.mp4", width=320, height=240, frames=17, fps=15), 17),
    }
    specs = [SourceSpec(id=sid, uri=str(path), max_frames=count) for sid, (path, count) in clips.items()]
    config = ROOT / "configs" / "face_detect_bench.yaml"
    pipeline = build_pipeline(
        config, overrides=["source.backend=nvdec", "preprocess.batch_size=16"], sources=specs
    )  # nvdec: a clear failure rather than a silent CPU fallback
    pipeline.feeder_threads = feeder_threads
    stats = pipeline.run_sync()
    lines = jsonl_by_source(tmp_path / "face_detect_bench.jsonl")
    for sid, (_, count) in clips.items():
        assert [line["index"] for line in lines[sid]] == list(range(count)), sid
        assert stats.source(sid).frames_done == count and stats.source(sid).error is None
    assert {(line["width"], line["height"]) for sid in clips for line in lines[sid][:1]} == {
        (1280, 720),
        (1920, 1080),
        (640, 360),
        (320, 240),
    }
    assert all(line["results"]["boxes"] for line in lines["faces"])
