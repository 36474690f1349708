"""The `rtsp` source against a real RTSP server (gst-rtsp-server in a child process on 127.0.0.1).

Scenarios of issue 7: read frames over TCP and UDP; a server crash and restart 2 s later (frames
resume, one reconnect, the pipeline never ends, no leaked threads or files); a slow consumer on a
30 fps stream (drops counted, bounded latency, no false end of stream); unreachable servers (a clear
error after the backoff, or endless retries logged once each); a resolution change on restart.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from stages.rtsp import RtspConnectionError, RtspSource
from streamflow import Pipeline, PixelFormat, RunStats
from streamflow.testing import ListSink
from support.rtsp_server import RtspServer, server_unavailable_reason

_UNAVAILABLE = server_unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")

W, H = 160, 120
PASSWORD = "hunter2"
# Fast reconnects keep the tests short; the defaults (0.5 s doubling to 10 s) are for real cameras.
FAST = {"initial": 0.2, "max": 1.0}


@pytest.fixture
def server() -> Iterator[Any]:
    srv = RtspServer(width=W, height=H, fps=30)
    srv.start()
    yield srv
    srv.stop()


class Running:
    """A pipeline running in a background thread, as a long-lived live pipeline would."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.stats: RunStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-pipeline", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.stats = self.pipeline.run_sync()
        except BaseException as error:
            self.error = error

    def stop(self, timeout: float = 15.0) -> RunStats:
        self.pipeline.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipeline did not stop"
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats


def wait_for(condition: Callable[[], bool], timeout: float, what: str, running: Running | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if running is not None and not running.thread.is_alive():
            raise AssertionError(f"pipeline ended while waiting for {what}: {running.error!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def os_threads_and_fds() -> tuple[int, int]:
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_password(uri: str) -> str:
    return uri.replace("rtsp://", f"rtsp://alice:{PASSWORD}@", 1)


# -- configuration (no server needed, but kept here with the stage) ----------------------------------
def test_config_shows_only_redacted_uri() -> None:
    src = RtspSource(uri=f"rtsp://alice:{PASSWORD}@cam.local/live", name="cam")
    assert src.display_uri == "rtsp://alice:***@cam.local/live"
    assert PASSWORD not in repr(src) and "alice:***@" in repr(src)
    assert src.av_options() == {"rtsp_transport": "tcp", "timeout": "5000000"}
    assert RtspSource.live is True


def test_invalid_options_are_rejected_without_leaking_the_password() -> None:
    with pytest.raises(ValueError, match=r"rtsp:// or rtsps://") as info:
        RtspSource(uri=f"http://alice:{PASSWORD}@cam/live")
    assert PASSWORD not in str(info.value)
    with pytest.raises(ValueError, match=r"must be >= reconnect\.initial"):
        RtspSource(uri="rtsp://cam/live", reconnect={"initial": 5, "max": 1})
    with pytest.raises(ValueError, match="rgb or nv12"):
        RtspSource(uri="rtsp://cam/live", format="tensor")
    with pytest.raises(ValueError, match="transport"):
        RtspSource(uri="rtsp://cam/live", transport="sctp")


# -- scenario 1: read frames over TCP and UDP -------------------------------------------------------
@pytest.mark.parametrize(("transport", "fmt"), [("tcp", "rgb"), ("udp", "nv12")])
def test_reads_live_frames(server: Any, transport: str, fmt: str) -> None:
    src = RtspSource(uri=server.uri, transport=transport, format=fmt, source_id="cam7", name="cam")
    sink = ListSink(name="sink")
    stats = Pipeline([src, sink], device="cpu", max_frames=20).run_sync()
    frames = sink.frames
    assert len(frames) == 20
    expected = (3, H, W) if fmt == "rgb" else (H * 3 // 2, W)
    assert all(tuple(f.image.shape) == expected and f.image.dtype == torch.uint8 for f in frames)
    assert all(f.format is PixelFormat(fmt) and f.source_id == "cam7" for f in frames)
    assert [f.index for f in frames] == list(range(20))
    assert all(f.arrival_time is not None for f in frames)
    pts = [f.pts for f in frames if f.pts is not None]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    info = frames[-1].info
    assert info is not None and (info.width, info.height, info.codec) == (W, H, "h264")
    assert info.uri == server.uri
    # videotestsrc "ball" moves: consecutive frames differ, so these are really decoded pictures.
    assert not torch.equal(frames[0].image, frames[-1].image)
    assert stats.stage("sink").queue_overflow == "drop_oldest"  # the live source sets its out-edge policy
    assert "reconnects" not in stats.stage("cam").counters


def test_credentials_work_and_never_show(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with RtspServer(width=W, height=H, user="alice", password=PASSWORD) as srv:
        sink = ListSink(name="sink")
        Pipeline([RtspSource(uri=srv.uri, name="cam"), sink], device="cpu", max_frames=5).run_sync()
        assert len(sink.frames) == 5 and sink.frames[0].info is not None
        assert sink.frames[0].info.uri == redact(srv.uri)
        wrong = srv.uri.replace(PASSWORD, "wrong-pw")
        with pytest.raises(RtspConnectionError, match="401") as info:
            Pipeline(
                [RtspSource(uri=wrong, name="cam", reconnect={"attempts": 0}), ListSink()], device="cpu"
            ).run_sync()
    assert "alice:***@" in str(info.value) and "wrong-pw" not in str(info.value)
    assert PASSWORD not in caplog.text and "wrong-pw" not in caplog.text


def redact(uri: str) -> str:
    from streamflow.uri import redact_uri

    return redact_uri(uri)


# -- scenario 2: server crash, restart 2 s later ----------------------------------------------------
def test_server_restart_resumes_frames_without_leaks(server: Any) -> None:
    src = RtspSource(uri=server.uri, name="cam", timeout=2, stall_timeout=2, reconnect=FAST)
    sink = ListSink(name="sink")
    run = Running(Pipeline([src, sink], device="cpu"))
    wait_for(lambda: len(sink.frames) >= 30, 20, "first frames", run)
    steady = os_threads_and_fds()
    before = len(sink.frames)

    server.restart(delay=2.0)
    wait_for(lambda: len(sink.frames) >= before + 45, 20, "frames after the restart", run)
    resumed = os_threads_and_fds()
    assert run.thread.is_alive() and not sink.flushed, "the source ended the stream on a reconnect"
    stats = run.stop()

    counters = stats.stage("cam").counters
    assert counters["reconnects"] == 1
    assert counters["downtime_s"] >= 2.0  # at least the time the server was down
    assert counters["reconnect_attempts"] >= 1
    assert stats.stopped_by == "stop()"  # ended by us, not by the source
    indices = [f.index for f in sink.frames]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert resumed == steady, f"(threads, fds) steady {steady}, after the reconnect {resumed}"


def test_stalled_server_is_detected_and_recovered(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamflow.stage.cam")
    src = RtspSource(uri=server.uri, name="cam", timeout=1, stall_timeout=1, reconnect=FAST)
    sink = ListSink(name="sink")
    run = Running(Pipeline([src, sink], device="cpu"))
    wait_for(lambda: len(sink.frames) >= 10, 20, "first frames", run)
    # SIGSTOP keeps the TCP connection open but silent: only stall detection can notice.
    server.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: "stalled" in caplog.text, 10, "stall detection", run)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    count = len(sink.frames)
    wait_for(lambda: len(sink.frames) >= count + 15, 20, "frames after the stall", run)
    stats = run.stop()
    assert stats.stage("cam").counters["reconnects"] == 1


# -- scenario 3: slow consumer -----------------------------------------------------------------------
# Bound on capture-to-sink latency p95 with a 100 ms/frame sink: the drop_oldest edge holds at most
# `queue_size` (4) frames, so a frame waits <= 4 x 100 ms plus its own 100 ms, ~0.5 s. Without
# dropping, latency would grow by ~67 ms per frame (~6 s after 10 s).
LATENCY_P95_BOUND_MS = 1500.0


def test_slow_consumer_drops_old_frames_and_keeps_latency_bounded(server: Any) -> None:
    src = RtspSource(uri=server.uri, name="cam")
    sink = ListSink(name="sink", delay=0.1)
    run = Running(Pipeline([src, sink], device="cpu", queue_size=4))
    wait_for(lambda: len(sink.frames) >= 1, 20, "first frame", run)
    time.sleep(10.0)
    assert run.thread.is_alive() and not sink.flushed, "false end of stream under a slow consumer"
    stats = run.stop()

    source, consumer = stats.stage("cam"), stats.stage("sink")
    assert consumer.queue_overflow == "drop_oldest"
    assert consumer.dropped > 0
    assert source.frames_out == consumer.frames_in + consumer.dropped + consumer.queue_depth
    # The source kept up with the camera (~30 fps) although the sink took ~10 fps.
    assert source.frames_out >= 2.5 * consumer.frames_in
    assert "reconnect_attempts" not in source.counters  # a slow sink must never look like a stall
    p95 = consumer.summary(stats.wall_s)["capture_latency_ms"]["p95"]
    assert p95 < LATENCY_P95_BOUND_MS, f"capture-to-sink latency p95 {p95:.0f} ms"


def test_decoder_behind_skips_to_keyframes_instead_of_building_latency(server: Any) -> None:
    # Pulling frames at 10 fps from a 30 fps camera without a drop_oldest edge (as with overflow:
    # block): packets queue up before the decoder. Measured here without max_lag, frames were 3.6 s
    # old after 5 s and growing; with max_lag 0.3 the decoder skips to keyframes and stays fresh.
    src = RtspSource(uri=server.uri, name="cam", max_lag=0.3)
    frames = src.generate()
    try:
        next(frames)
        started, ages = time.monotonic(), []
        while time.monotonic() - started < 4:
            ages.append(time.time() - (next(frames).arrival_time or 0.0))
            time.sleep(0.1)
    finally:
        frames.close()  # type: ignore[attr-defined]
        src.teardown()
    assert src.counters["packets_dropped"] > 0
    assert max(ages[-10:]) < 1.5, f"frame ages {ages[-10:]}"


# -- scenario 4: unreachable server --------------------------------------------------------------
def test_unreachable_port_gives_up_after_the_attempts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streamflow.stage.cam")
    uri = with_password(f"rtsp://127.0.0.1:{free_port()}/live")
    src = RtspSource(uri=uri, name="cam", reconnect={"initial": 0.2, "max": 1, "attempts": 2})
    started = time.monotonic()
    with pytest.raises(RtspConnectionError) as info:
        Pipeline([src, ListSink()], device="cpu").run_sync()
    elapsed = time.monotonic() - started
    error = info.value
    assert isinstance(error, ConnectionError) and error.attempts == 2
    assert "giving up" in str(error) and "2 reconnect attempt(s)" in str(error) and "refused" in str(error)
    assert error.uri == uri.replace(PASSWORD, "***") and PASSWORD not in str(error)
    assert getattr(error, "stage_name", None) == "cam"
    assert elapsed >= 0.2 + 0.4  # both backoff delays were waited
    attempts = re.findall(r"reconnect attempt (\d+)/2", caplog.text)
    assert attempts == ["1", "2"]  # each attempt logged once
    assert PASSWORD not in caplog.text


def test_wrong_path_is_a_clear_error(server: Any) -> None:
    src = RtspSource(uri=server.uri.replace("/live", "/nope"), name="cam", reconnect={"attempts": 1, "initial": 0.1})
    with pytest.raises(RtspConnectionError, match=r"/nope after 1 reconnect attempt\(s\).*404"):
        Pipeline([src, ListSink()], device="cpu").run_sync()


def test_default_keeps_retrying_and_logs_each_attempt_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streamflow.stage.cam")
    src = RtspSource(uri=f"rtsp://127.0.0.1:{free_port()}/live", name="cam", reconnect={"initial": 0.1, "max": 0.2})
    run = Running(Pipeline([src, ListSink()], device="cpu"))
    wait_for(lambda: len(re.findall(r"reconnect attempt", caplog.text)) >= 5, 10, "5 attempts", run)
    stats = run.stop()
    assert stats.stopped_by == "stop()"
    numbers = [int(n) for n in re.findall(r"reconnect attempt (\d+) in", caplog.text)]
    assert numbers == list(range(1, len(numbers) + 1))  # consecutive, none repeated, no "/N" limit
    assert stats.stage("cam").counters["reconnect_attempts"] == len(numbers)


def test_cli_exits_1_when_attempts_run_out(tmp_path: Path) -> None:
    uri = with_password(f"rtsp://127.0.0.1:{free_port()}/live")
    config = tmp_path / "rtsp.yaml"
    config.write_text("""
name: rtsp-unreachable
device: cpu
stages:
  - name: cam
    type: stages.rtsp:RtspSource
    uri: ${RTSP_URI}
    reconnect: {initial: 0.1, attempts: 1}
  - name: sink
    type: stages.null:NullSink
""")
    env = {**os.environ, "RTSP_URI": uri}
    result = subprocess.run(
        [sys.executable, "-m", "streamflow.cli", "run", str(config), "--quiet"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "RtspConnectionError" in result.stderr and "alice:***@127.0.0.1" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


# -- scenario 5: resolution change on reconnect ----------------------------------------------------
def test_resolution_change_on_restart(server: Any) -> None:
    src = RtspSource(uri=server.uri, name="cam", reconnect=FAST)
    sink = ListSink(name="sink")
    run = Running(Pipeline([src, sink], device="cpu"))
    wait_for(lambda: len(sink.frames) >= 10, 20, "first frames", run)
    server.restart(width=96, height=64)
    wait_for(lambda: sum(f.image.shape[-1] == 96 for f in sink.frames) >= 10, 20, "frames at the new size", run)
    stats = run.stop()
    shapes = [tuple(f.image.shape) for f in sink.frames]
    first_new = shapes.index((3, 64, 96))
    assert set(shapes[:first_new]) == {(3, H, W)}
    assert set(shapes[first_new:]) == {(3, 64, 96)}
    info = sink.frames[-1].info
    assert info is not None and (info.width, info.height) == (96, 64)
    assert stats.stage("cam").counters["reconnects"] == 1


# -- GPU: packets go to NVDEC ------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["rgb", "nv12"])
def test_nvdec_decodes_live_packets(server: Any, fmt: str) -> None:
    sink = ListSink(name="sink")
    Pipeline([RtspSource(uri=server.uri, name="cam", format=fmt), sink], device="cuda", max_frames=20).run_sync()
    frames = sink.frames
    assert len(frames) == 20 and all(f.image.is_cuda for f in frames)
    expected = (3, H, W) if fmt == "rgb" else (H * 3 // 2, W)
    assert {tuple(f.image.shape) for f in frames} == {expected}
    # A live stream has no fixed frame to compare; the static background makes the mean level a
    # fair check that NVDEC and the CPU decoder see the same picture.
    cpu_sink = ListSink(name="sink")
    Pipeline([RtspSource(uri=server.uri, name="cam", format=fmt), cpu_sink], device="cpu", max_frames=1).run_sync()
    cpu_mean = cpu_sink.frames[0].image.float().mean().item()
    assert abs(frames[-1].image.float().mean().item() - cpu_mean) < 4.0


# -- configs/rtsp_face_detect.yaml on a live stream ------------------------------------------------
def test_face_detect_config_with_recording_runs_live(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import av

    from streamflow.config import build_pipeline

    root = Path(__file__).parents[2]
    monkeypatch.chdir(root)  # the config's model path is relative to the repository root
    monkeypatch.setenv("RTSP_URI", server.uri)
    monkeypatch.setenv("RTSP_JSONL", str(tmp_path / "faces.jsonl"))
    monkeypatch.setenv("RTSP_RECORDING", str(tmp_path / "faces.mp4"))
    text = (root / "configs" / "rtsp_face_detect.yaml").read_text()
    build_pipeline(_write(tmp_path / "plain.yaml", text))  # the file as shipped is valid
    # Enable the commented-out recording stages (annotate + encode) and run the whole thing.
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "# - name: annotate" in line)
    end = next(i for i, line in enumerate(lines) if "#   preset:" in line)
    lines[start : end + 1] = [
        line.replace("# ", "", 1) if line.strip() != "#" else "" for line in lines[start : end + 1]
    ]
    pipeline = build_pipeline(_write(tmp_path / "record.yaml", "\n".join(lines)), max_frames=30)
    assert [s.name for s in pipeline.stages] == [
        "camera",
        "preprocess",
        "detect",
        "faces",
        "annotate",
        "record",
        "detections",
    ]
    stats = pipeline.run_sync()
    records = [json.loads(line) for line in (tmp_path / "faces.jsonl").read_text().splitlines()]
    assert records and all("boxes" in r["results"] and (r["width"], r["height"]) == (W, H) for r in records)
    assert stats.stage("preprocess").queue_overflow == "drop_oldest"
    with av.open(str(tmp_path / "faces.mp4")) as recording:
        assert sum(1 for _ in recording.decode(video=0)) == len(records)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
