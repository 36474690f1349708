"""CPU decode with PyAV: counts, pts, formats, seeking, looping and every bad-input case of issue 3."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from streamflow.frame import PixelFormat
from streamflow.video.probe import VideoInputError
from streamflow.video.pyav_decode import PyAVDecoder
from streamflow.video.synth import write_audio_only, write_clip, write_resolution_change


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("dec") / "clip.mp4", width=160, height=120, frames=30, gop=10)


def test_count_pts_and_metadata(clip: Path) -> None:
    decoder = PyAVDecoder(clip, source_id="cam")
    frames = list(decoder)
    assert len(frames) == 30 == decoder.stats["frames"]
    assert [f.index for f in frames] == list(range(30))
    assert [round(f.time * 30) for f in frames] == list(range(30))  # type: ignore[operator]
    first = frames[0]
    assert first.source_id == "cam" and first.format is PixelFormat.RGB
    assert first.image.shape == (3, 120, 160) and first.image.dtype == torch.uint8 and first.image.is_contiguous()
    assert first.info is not None and (first.info.width, first.info.height, first.info.fps) == (160, 120, 30)
    assert decoder.stats["bad_packets"] == 0


def test_nv12_equals_pyav_planes(clip: Path) -> None:
    frames = list(PyAVDecoder(clip, output="nv12", max_frames=3))
    with av.open(str(clip)) as container:
        reference = [
            f.reformat(format="nv12").to_ndarray() for _, f in zip(range(3), container.decode(video=0), strict=False)
        ]
    assert len(frames) == 3
    for frame, ref in zip(frames, reference, strict=True):
        assert frame.format is PixelFormat.NV12 and frame.image.shape == (180, 160)
        assert np.array_equal(frame.image.numpy(), ref)


def test_start_end_and_max_frames(clip: Path) -> None:
    times = [f.time for f in PyAVDecoder(clip, start=0.5, end=0.7)]
    assert times == pytest.approx([15 / 30, 16 / 30, 17 / 30, 18 / 30, 19 / 30, 20 / 30])
    assert len(list(PyAVDecoder(clip, max_frames=7))) == 7


def test_loop_keeps_pts_increasing(clip: Path) -> None:
    decoder = PyAVDecoder(clip, loop=True, max_frames=75)
    frames = list(decoder)
    assert len(frames) == 75 and decoder.stats["loops"] == 2
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts))  # type: ignore[operator]
    assert frames[-1].time == pytest.approx(74 / 30)
    assert frames[-1].index == 74


def test_should_stop_ends_early(clip: Path) -> None:
    seen: list[int] = []
    decoder = PyAVDecoder(clip, should_stop=lambda: len(seen) >= 4)
    for frame in decoder:
        seen.append(frame.index)
    assert seen == [0, 1, 2, 3]


def test_unsupported_output_format(clip: Path) -> None:
    with pytest.raises(ValueError, match="rgb or nv12"):
        PyAVDecoder(clip, output="tensor")


# -- bad input --------------------------------------------------------------------------------------


def _error_line(path: Path, **kwargs: object) -> str:
    with pytest.raises(VideoInputError) as error:
        list(PyAVDecoder(path, **kwargs))  # type: ignore[arg-type]
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "file not found" in _error_line(tmp_path / "missing.mp4")


def test_audio_only_file(tmp_path: Path) -> None:
    assert "no video stream" in _error_line(write_audio_only(tmp_path / "a.m4a"))


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(random.Random(7).randbytes(64 * 1024))
    assert "not a recognised media file" in _error_line(path)


def test_truncated_mp4_index_at_end_fails_clearly(tmp_path: Path) -> None:
    data = write_clip(tmp_path / "t.mp4", width=160, height=120, frames=30).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) * 6 // 10])
    _error_line(path)


def test_truncated_mp4_index_at_front_decodes_what_it_can(tmp_path: Path) -> None:
    data = write_clip(tmp_path / "t.mp4", width=160, height=120, frames=30, faststart=True).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) * 6 // 10])
    decoder = PyAVDecoder(path)
    frames = list(decoder)
    assert 0 < len(frames) < 30
    assert decoder.stats["bad_packets"] >= 1


def _damage_packet(path: Path, number: int) -> bytes:
    """The file's bytes with video packet `number` (found by demuxing) made unreadable.

    The damage goes where the test means it to, whatever bytes the encoder wrote on this machine:
    - MKV/MP4 store H.264 as length-prefixed NAL units: a length larger than the packet makes the
      decoder reject the packet (invalid data), deterministically.
    - MPEG-TS carries the packet in 188-byte transport packets: a wrong continuity counter on the
      transport packet where it starts makes the demuxer flag the packet as corrupt.
    """
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    packet = packets[number]
    assert packet.pos is not None and packet.pos >= 0
    if path.suffix == ".ts":
        header = packet.pos
        assert data[header] == 0x47  # a transport packet's sync byte
        data[header + 3] = (data[header + 3] & 0xF0) | ((data[header + 3] + 5) & 0x0F)
    else:
        payload = bytes(packet)
        start = data.find(payload, packet.pos)  # pos may point at the container's block header
        assert start >= 0
        data[start : start + 4] = (0xFFFFFFF0).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("suffix", [".ts", ".mkv", ".mp4"])
def test_corrupted_packets_are_counted_and_skipped(tmp_path: Path, suffix: str) -> None:
    clip = write_clip(tmp_path / f"c{suffix}", width=160, height=120, frames=30, gop=5)
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(_damage_packet(clip, 12))
    decoder = PyAVDecoder(path)
    frames = list(decoder)
    assert len(frames) >= 25  # what is decodable still comes out: at most the damaged packet's GOP is lost
    assert decoder.stats["bad_packets"] >= 1
    assert decoder.stats["frames"] == len(frames)


def test_resolution_change_mid_stream(tmp_path: Path) -> None:
    path = write_resolution_change(tmp_path / "r.h264", [(160, 120), (96, 64)], frames_each=4)
    for output in ("rgb", "nv12"):
        decoder = PyAVDecoder(path, output=output)
        frames = list(decoder)
        sizes = [(f.info.width, f.info.height) for f in frames if f.info is not None]
        assert sizes == [(160, 120)] * 4 + [(96, 64)] * 4
        assert decoder.stats["resolution_changes"] == 1
        assert frames[-1].image.shape == ((3, 64, 96) if output == "rgb" else (96, 96))
        # Raw streams carry no pts: frames are numbered at the nominal rate, strictly increasing.
        assert all(b.pts > a.pts for a, b in itertools.pairwise(frames))  # type: ignore[operator]


@pytest.mark.parametrize(("width", "height"), [(854, 480), (1918, 1078)])
def test_odd_dimensions(tmp_path: Path, width: int, height: int) -> None:
    path = write_clip(tmp_path / f"{width}.mp4", width=width, height=height, frames=2)
    rgb = list(PyAVDecoder(path))
    nv12 = list(PyAVDecoder(path, output="nv12"))
    assert [f.image.shape for f in rgb] == [(3, height, width)] * 2
    assert [f.image.shape for f in nv12] == [(height * 3 // 2, width)] * 2


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mkv"
    path.write_bytes(b"")
    assert "empty" in _error_line(path)


def test_not_readable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read anything")
    path = write_clip(tmp_path / "p.mp4", width=16, height=16, frames=1)
    path.chmod(0)
    assert "permission denied" in _error_line(path)
