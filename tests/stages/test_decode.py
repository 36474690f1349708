"""`decode` stage through the real runner: frames, batches, options, counters and bad input."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from stages.decode import Decode, DecodeBackend, DecodeFormat
from streamflow import Batch, Pipeline, PixelFormat
from streamflow.testing import ListSink
from streamflow.video.probe import VideoInputError
from streamflow.video.synth import write_audio_only, write_clip, write_resolution_change


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("stage") / "clip.mp4", width=96, height=64, frames=20, gop=10)


def run(stage: Decode, device: str = "cpu") -> tuple[ListSink, object]:
    sink = ListSink(name="sink")
    stats = Pipeline([stage, sink], device=device).run_sync()
    return sink, stats


def test_frames_carry_identity_and_info(clip: Path) -> None:
    sink, _ = run(Decode(uri=str(clip), name="cam1"))
    frames = sink.frames
    assert len(frames) == 20
    assert all(isinstance(item, type(frames[0])) for item in sink.items)  # emit_batch=1: plain frames
    assert [f.index for f in frames] == list(range(20))
    assert {f.source_id for f in frames} == {"cam1"}  # default: the stage name
    assert [round(f.time * 30) for f in frames] == list(range(20))  # type: ignore[operator]
    info = frames[0].info
    assert info is not None and (info.width, info.height, info.codec, info.frame_count) == (96, 64, "h264", 20)
    assert frames[0].format is PixelFormat.RGB and frames[0].image.shape == (3, 64, 96)


def test_nv12_batches_and_source_id(clip: Path) -> None:
    sink, _ = run(Decode(uri=str(clip), format="nv12", emit_batch=8, source_id="door"))
    assert all(isinstance(item, Batch) for item in sink.items)
    assert [len(item) for item in sink.items if isinstance(item, Batch)] == [8, 8, 4]
    frames = sink.frames
    assert frames[0].format is PixelFormat.NV12 and frames[0].image.shape == (96, 96)
    assert {f.source_id for f in frames} == {"door"}
    assert [f.index for f in frames] == list(range(20))


def test_loop_max_frames_start_end(clip: Path) -> None:
    sink, stats = run(Decode(uri=str(clip), loop=True, max_frames=50))
    frames = sink.frames
    assert len(frames) == 50 and frames[-1].index == 49
    assert frames[-1].time == pytest.approx(49 / 30)
    assert stats.stage("decode").counters["loops"] == 2  # type: ignore[attr-defined]
    sink, _ = run(Decode(uri=str(clip), start=0.2, end=0.4))
    assert [round(f.time * 30) for f in sink.frames] == [6, 7, 8, 9, 10, 11]  # type: ignore[operator]


def test_start_frame_skips_earlier_frames_and_keeps_indices(clip: Path) -> None:
    whole, _ = run(Decode(uri=str(clip)))
    sink, _ = run(Decode(uri=str(clip), start_frame=13, emit_batch=4))
    assert [f.index for f in sink.frames] == list(range(13, 20)), "resumed frames keep their index in the file"
    assert [f.pts for f in sink.frames] == [f.pts for f in whole.frames[13:]]
    # Past the end (every frame was already delivered before a failover): no frame, and no error.
    sink, _ = run(Decode(uri=str(clip), start_frame=20))
    assert sink.frames == []
    # Across loop passes the index runs on, and so does start_frame.
    sink, _ = run(Decode(uri=str(clip), loop=True, max_frames=30, start_frame=25))
    assert [f.index for f in sink.frames] == list(range(25, 30))


def test_config_uses_enums_and_validates(clip: Path) -> None:
    uri = str(clip)
    stage = Decode(uri=uri, backend="cpu", format="nv12")
    assert stage.config.backend is DecodeBackend.CPU and stage.config.format is DecodeFormat.NV12
    with pytest.raises(ValidationError):
        Decode(uri=uri, backend="gpu")
    with pytest.raises(ValidationError):
        Decode(uri=uri, start=3, end=2)
    with pytest.raises(ValidationError):
        Decode(uri=uri, emit_batch=0)
    with pytest.raises(ValidationError):
        Decode(uri=uri, colour="red")
    with pytest.raises(ValidationError, match="file not found"):
        Decode(uri=str(clip.with_name("absent.mp4")))


def test_nvdec_backend_on_cpu_device_is_an_error(clip: Path) -> None:
    with pytest.raises(VideoInputError, match="backend nvdec"):
        run(Decode(uri=str(clip), backend="nvdec"))


def test_rtsp_uris_are_rejected_at_construction_without_the_password() -> None:
    for uri, shown in (
        ("rtsp://admin:hunter2@10.0.0.7:554/stream1", "rtsp://admin:***@10.0.0.7:554/stream1"),
        ("RTSPS://cam.local/live", "RTSPS://cam.local/live"),
    ):
        with pytest.raises(ValueError, match=r"use `type: rtsp` \(a live source with reconnects\)") as error:
            Decode(uri=uri)
        message = str(error.value)
        assert shown in message and "hunter2" not in message
        assert len(message.splitlines()) == 1


def test_network_uri_password_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    # Port 1 on loopback refuses at once: the open fails and the error names the uri.
    uri = "http://viewer:hunter2@127.0.0.1:1/clip.mp4?token=abc123"
    stage = Decode(uri=uri, name="web")
    assert stage.display_uri == "http://viewer:***@127.0.0.1:1/clip.mp4?token=***"
    assert "hunter2" not in repr(stage.config) and "abc123" not in repr(stage.config)
    with caplog.at_level(logging.DEBUG), pytest.raises(VideoInputError) as error:
        run(stage)
    message = str(error.value)
    assert "cannot read video 'http://viewer:***@127.0.0.1:1/clip.mp4?token=***'" in message
    assert "hunter2" not in message and "abc123" not in message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "hunter2" not in logged and "abc123" not in logged


# -- bad input: one clear line, or decode what is decodable and count bad packets -------------------


def _fails_with_one_line(path: Path) -> str:
    with pytest.raises(VideoInputError) as error:
        run(Decode(uri=str(path)))
    message = str(error.value).splitlines()[0]
    assert str(path) in message
    return message


def test_missing_audio_only_random_and_truncated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="file not found"):  # caught when the config is validated
        Decode(uri=str(tmp_path / "missing.mp4"))
    vanishing = write_clip(tmp_path / "v.mp4", width=64, height=48, frames=2)
    stage = Decode(uri=str(vanishing))
    vanishing.unlink()  # gone between validation and start: still one clear line, at setup
    with pytest.raises(VideoInputError, match="file not found"):
        run(stage)
    assert "no video stream" in _fails_with_one_line(write_audio_only(tmp_path / "a.m4a"))
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(random.Random(3).randbytes(30000))
    assert "not a recognised media file" in _fails_with_one_line(noise)
    data = write_clip(tmp_path / "t.mp4", width=64, height=48, frames=20).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    _fails_with_one_line(cut)


def test_truncated_faststart_mp4_counts_bad_packets(tmp_path: Path) -> None:
    data = write_clip(tmp_path / "t.mp4", width=64, height=48, frames=30, faststart=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    sink, stats = run(Decode(uri=str(cut)))
    assert 0 < len(sink.frames) < 30
    assert stats.stage("decode").counters["bad_packets"] >= 1  # type: ignore[attr-defined]


def test_resolution_change_and_odd_dimensions(tmp_path: Path) -> None:
    path = write_resolution_change(tmp_path / "r.h264", [(64, 48), (96, 64)], frames_each=3)
    sink, stats = run(Decode(uri=str(path), format="nv12"))
    assert [tuple(f.image.shape) for f in sink.frames] == [(72, 64)] * 3 + [(96, 96)] * 3
    assert stats.stage("decode").counters["resolution_changes"] == 1  # type: ignore[attr-defined]
    for width, height in ((854, 480), (1918, 1078)):
        clip = write_clip(tmp_path / f"{width}.mp4", width=width, height=height, frames=2)
        sink, _ = run(Decode(uri=str(clip)))
        assert [tuple(f.image.shape) for f in sink.frames] == [(3, height, width)] * 2


@pytest.mark.gpu
def test_gpu_device_gives_cuda_frames(clip: Path) -> None:
    sink, _ = run(Decode(uri=str(clip), format="rgb", emit_batch=4), device="cuda")
    assert len(sink.frames) == 20
    assert all(f.image.is_cuda and f.image.dtype == torch.uint8 for f in sink.frames)
    sink, _ = run(Decode(uri=str(clip), backend="cpu"), device="cuda")
    assert len(sink.frames) == 20 and sink.frames[0].image.is_cuda


@pytest.mark.gpu
def test_nvdec_loop_replays_the_same_pictures(clip: Path) -> None:
    """A looping NVDEC source replays the file: the same pictures each pass, the timeline going on."""
    sink, stats = run(Decode(uri=str(clip), loop=True, max_frames=50, format="nv12", emit_batch=4), device="cuda")
    frames = sink.frames
    assert len(frames) == 50 and stats.stage("decode").counters["loops"] == 2  # type: ignore[attr-defined]
    assert [round(f.time * 30) for f in frames] == list(range(50))  # type: ignore[operator]
    images = [f.image.cpu() for f in frames]
    assert all(torch.equal(images[i], images[i + 20]) for i in range(30))
    assert not torch.equal(images[0], images[1])
