"""`encode` stage: round trip through decode -> encode, timestamps, finalization after errors."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from stages.decode import Decode
from stages.encode import Encode
from streamflow import Frame, Pipeline, PixelFormat
from streamflow.preflight import PreflightError
from streamflow.testing import ListSink, ListSource, RaiseError, make_frames, run_stage
from streamflow.video.encode import EncodeBackend, EncodeError, VideoCodec
from streamflow.video.probe import probe
from streamflow.video.synth import write_clip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def decode_all(path: Path) -> tuple[list[np.ndarray], float, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        last = frames[-1]
        images = [f.to_ndarray(format="rgb24", src_colorspace="ITU709") for f in frames]
        # Fragmented MP4 states no frame count in its header: the count probe derives from the duration.
        return images, float(last.pts * last.time_base), probe(path).info.frame_count or 0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("enc") / "src.mp4", width=320, height=240, frames=24, crf=12)


@pytest.mark.parametrize(("fmt", "codec", "suffix"), [("rgb", "h264", ".mp4"), ("nv12", "hevc", ".mkv")])
def test_round_trip_keeps_count_duration_and_quality(
    clip: Path, tmp_path: Path, fmt: str, codec: str, suffix: str
) -> None:
    out = tmp_path / f"out{suffix}"
    sink = ListSink()
    Pipeline(
        [Decode(uri=str(clip), format=fmt, emit_batch=5), Encode(path=str(out), codec=codec, backend="cpu"), sink],
        device="cpu",
    ).run_sync()
    assert len(sink.frames) == 24  # items pass through
    source, source_end, _ = decode_all(clip)
    written, end, _ = decode_all(out)
    assert len(written) == 24
    assert end == pytest.approx(source_end, abs=1e-3)  # same last pts: same duration
    assert min(psnr(a, b) for a, b in zip(source, written, strict=True)) >= 35


def test_frames_without_info_use_their_time_base(tmp_path: Path) -> None:
    out = tmp_path / "plain.mp4"
    run_stage(Encode(path=str(out), backend="cpu", crf=30, preset="ultrafast"), make_frames(10, height=32, width=48))
    images, end, count = decode_all(out)
    assert len(images) == 10 and count == 10
    assert end == pytest.approx(9 / 30)
    assert images[0].shape == (32, 48, 3)


def test_non_increasing_pts_never_go_back(tmp_path: Path) -> None:
    frames = make_frames(6, height=16, width=16)
    for frame, pts in zip(frames, [0, 1, 1, 5, 3, None], strict=True):
        frame.pts = pts
    out = tmp_path / "pts.mkv"
    run_stage(Encode(path=str(out), backend="cpu"), frames)
    with av.open(str(out)) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    assert len(times) == 6
    assert all(b > a for a, b in itertools.pairwise(times))


def test_file_is_finalized_when_the_pipeline_fails(tmp_path: Path) -> None:
    out = tmp_path / "partial.mp4"
    items: list[Frame | RaiseError] = [*make_frames(8, height=32, width=32), RaiseError(RuntimeError("camera gone"))]
    with pytest.raises(RuntimeError, match="camera gone"):
        # Paced so frames reach the encoder before the error; frames still queued are dropped.
        Pipeline([ListSource(items, interval=0.02), Encode(path=str(out), backend="cpu")], device="cpu").run_sync()
    images, _, _ = decode_all(out)  # playable: the MP4 index was written at teardown
    assert 1 <= len(images) <= 8


def test_config_validation() -> None:
    stage = Encode(path="o.mp4", codec="hevc", backend="cpu", bitrate=2_000_000)
    assert stage.config.codec is VideoCodec.HEVC and stage.config.backend is EncodeBackend.CPU
    with pytest.raises(ValidationError, match="either bitrate or crf"):
        Encode(path="o.mp4", bitrate=1000, crf=20)
    with pytest.raises(ValidationError, match=r"\.mp4 or \.mkv"):
        Encode(path="o.avi")
    with pytest.raises(ValidationError):
        Encode(path="o.mp4", codec="av1")


def test_bad_output_directory_and_size_change(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(PreflightError, match="is a file"):
        run_stage(Encode(path=str(tmp_path / "file" / "o.mp4")), make_frames(1))
    frames = make_frames(2, height=16, width=16)
    frames[1].image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    with pytest.raises(EncodeError, match="frame size changed from 16x16 to 32x32"):
        run_stage(Encode(path=str(tmp_path / "s.mp4"), backend="cpu"), frames)
    bad = make_frames(1)
    bad[0].format = PixelFormat.TENSOR
    with pytest.raises(EncodeError, match="use rgb or nv12"):
        run_stage(Encode(path=str(tmp_path / "t.mp4"), backend="cpu"), bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_auto_backend_without_a_gpu_says_once_at_info_which_encoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamflow")
    out = tmp_path / "auto.mp4"
    run_stage(Encode(path=str(out)), make_frames(3, height=16, width=16))
    said = [r for r in caplog.records if "encoding on the CPU" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO and "libx264" in said[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(decode_all(out)[0]) == 3


@pytest.mark.gpu
def test_gpu_frames_encode_through_pinned_copies(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.mp4"
    Pipeline([Decode(uri=str(clip), format="nv12"), Encode(path=str(out))], device="cuda").run_sync()
    images, end, _ = decode_all(out)
    assert len(images) == 24 and end == pytest.approx(23 / 30, abs=1e-3)
