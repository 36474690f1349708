"""`RtspReader` on its own, without a stage: uri checks, options, giving up, stopping, frames from a real server."""

from __future__ import annotations

import socket
import threading
from collections import Counter

import pytest

from streamflow.frame import PixelFormat
from streamflow.video.rtsp import ReconnectConfig, RtspConnectionError, RtspReader, av_options, validate_uri
from support.rtsp_server import RtspServer, server_unavailable_reason

FAST = ReconnectConfig(initial=0.05, max=0.1)


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("rtsp-reader-")]


def test_uri_must_be_rtsp_and_errors_hide_the_password() -> None:
    assert validate_uri("RTSP://cam/live") == "RTSP://cam/live"
    with pytest.raises(ValueError, match="rtsp:// or rtsps://") as error:
        RtspReader("http://alice:hunter2@cam/live")
    assert "hunter2" not in str(error.value) and "alice:***@cam" in str(error.value)


def test_av_options_put_user_extras_last() -> None:
    assert av_options("udp", 0.5) == {"rtsp_transport": "udp", "timeout": "500000"}
    # A user option overrides the derived one: the extras are the last word.
    assert av_options("tcp", 1, {"timeout": "7"})["timeout"] == "7"
    with pytest.raises(ValueError, match="rtsp_tcp"):
        av_options("rtsp_tcp", 1)


def test_reconnect_config_rejects_a_max_below_initial() -> None:
    with pytest.raises(ValueError, match=r"reconnect.max \(1.0\) must be >= reconnect.initial \(2.0\)"):
        ReconnectConfig(initial=2, max=1)


def test_gives_up_after_the_attempts_and_counts_them() -> None:
    counts: Counter[str] = Counter()
    port = closed_port()
    reader = RtspReader(
        f"rtsp://bob:secret@127.0.0.1:{port}/live",
        timeout=1,
        reconnect=FAST.model_copy(update={"attempts": 2}),
        count=lambda name, amount: counts.update({name: amount}),
        name="unreachable",
    )
    with pytest.raises(RtspConnectionError) as raised:
        list(reader.frames())
    reader.close()
    error = raised.value
    assert error.attempts == 2 and error.uri == f"rtsp://bob:***@127.0.0.1:{port}/live"
    assert "secret" not in str(error) and "cannot open stream" in str(error)
    assert "'unreachable'" in str(error)
    assert counts == {"reconnect_attempts": 2}
    assert reader_threads() == []


def test_should_stop_ends_the_backoff_without_an_error() -> None:
    # Endless retries with a long backoff: the stop request must end the wait, not the attempts.
    counts: Counter[str] = Counter()
    reader = RtspReader(
        f"rtsp://127.0.0.1:{closed_port()}/live",
        timeout=1,
        reconnect=ReconnectConfig(initial=600, max=600),
        count=lambda name, amount: counts.update({name: amount}),
        should_stop=lambda: counts["reconnect_attempts"] >= 1,
    )
    assert list(reader.frames()) == []
    reader.close()
    assert counts == {"reconnect_attempts": 1}


_UNAVAILABLE = server_unavailable_reason()


@pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")
@pytest.mark.parametrize("output", [PixelFormat.RGB, PixelFormat.NV12])
def test_frames_from_a_real_server_then_stop(output: PixelFormat) -> None:
    width, height = 96, 64
    with RtspServer(width=width, height=height, fps=30) as server:
        frames = []
        reader = RtspReader(
            server.uri,
            output=output,
            timeout=5,
            source_id="cam7",
            should_stop=lambda: len(frames) >= 5,
            reconnect=FAST,
        )
        for frame in reader.frames():
            frames.append(frame)
        reader.close()
    assert len(frames) == 5
    shape = (3, height, width) if output is PixelFormat.RGB else (height * 3 // 2, width)
    assert all(tuple(f.image.shape) == shape and f.format is output for f in frames)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert {f.source_id for f in frames} == {"cam7"}
    assert all(f.arrival_time is not None and f.info is not None for f in frames)
    assert frames[0].info is not None and (frames[0].info.width, frames[0].info.height) == (width, height)
    assert reader_threads() == []
