"""probe(): stream info of good inputs, one-line errors for bad ones."""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import pytest

from streamflow.video.probe import VideoInputError, is_url, probe
from streamflow.video.synth import write_audio_only, write_clip


def test_mp4_info(tmp_path: Path) -> None:
    found = probe(write_clip(tmp_path / "a.mp4", width=320, height=240, frames=12, fps=24))
    info = found.info
    assert (info.width, info.height, info.codec) == (320, 240, "h264")
    assert info.fps == 24 and info.frame_count == 12
    assert info.time_base > 0 and isinstance(info.time_base, Fraction)
    assert (info.color_space, info.color_range) == ("bt709", "limited")
    assert info.uri == str(tmp_path / "a.mp4")
    assert found.duration == pytest.approx(0.5)
    assert found.is_8bit_420 and found.bit_depth == 8


def test_mkv_hevc_estimates_frame_count_and_display_uri(tmp_path: Path) -> None:
    found = probe(write_clip(tmp_path / "b.mkv", width=64, height=48, frames=10, codec="hevc"), display_uri="cam")
    assert found.info.codec == "hevc" and found.info.frame_count == 10
    assert found.info.uri == "cam"


def test_yuv444_is_not_420(tmp_path: Path) -> None:
    found = probe(write_clip(tmp_path / "c.mp4", width=64, height=48, frames=2, pix_fmt="yuv444p"))
    assert found.pix_fmt == "yuv444p" and not found.is_8bit_420


def test_is_url() -> None:
    assert is_url("rtsp://user@host/x") and is_url("http://a/b.mp4")
    assert not is_url("/tmp/a.mp4") and not is_url("file:///tmp/a.mp4")


def _one_line(error: pytest.ExceptionInfo[VideoInputError], path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoInputError) as error:
        probe(tmp_path / "nope.mp4")
    assert _one_line(error, tmp_path / "nope.mp4").endswith("file not found")


def test_empty_and_directory(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoInputError, match="file is empty"):
        probe(tmp_path / "empty.mp4")
    with pytest.raises(VideoInputError, match="is a directory"):
        probe(tmp_path)


def test_audio_only(tmp_path: Path) -> None:
    path = write_audio_only(tmp_path / "a.m4a")
    with pytest.raises(VideoInputError) as error:
        probe(path)
    assert "no video stream (streams: audio)" in _one_line(error, path)


def test_random_bytes(tmp_path: Path) -> None:
    # Fixed bytes, not os.urandom: some random draws look enough like a container for a demuxer to
    # report a video stream with no frame size, which is a different (also clear) error.
    path = tmp_path / "r.mp4"
    path.write_bytes(random.Random(20000).randbytes(20000))
    with pytest.raises(VideoInputError) as error:
        probe(path)
    line = _one_line(error, path)
    assert "not a recognised media file" in line or "no frame size" in line


def test_truncated_mp4_without_index(tmp_path: Path) -> None:
    data = write_clip(tmp_path / "t.mp4", width=64, height=48, frames=20).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: cut off
    with pytest.raises(VideoInputError) as error:
        probe(path)
    _one_line(error, path)


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("/dev/zero", "it is a character device, not a media file"),
        ("/dev/urandom", "it is a character device, not a media file"),
        ("/proc/self/mem", "a kernel pseudo-file, not a media file"),
    ],
)
def test_devices_and_kernel_files_are_named_as_such(uri: str, words: str) -> None:
    with pytest.raises(VideoInputError, match=f"cannot read video '{uri}': {words}"):
        probe(uri)
