"""Picture sizes read from sequence headers match what the encoder wrote (H.264, HEVC, VP9)."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from streamflow.video.bitstream import sequence_size
from streamflow.video.nvdec import iter_annexb_packets
from streamflow.video.synth import write_clip, write_resolution_change


def packet_sizes(path: Path, codec: str) -> list[tuple[int, int] | None]:
    with av.open(str(path)) as container:
        return [sequence_size(codec, data) for data, _ in iter_annexb_packets(container, container.streams.video[0])]


@pytest.mark.parametrize(
    ("codec", "ext", "width", "height"),
    [
        ("h264", "mp4", 320, 240),
        ("h264", "mkv", 66, 50),  # not a multiple of 16: the SPS crops the coded size
        ("hevc", "mkv", 320, 240),
        ("hevc", "mp4", 130, 98),  # conformance window
        ("vp9", "webm", 96, 64),
    ],
)
def test_key_frames_announce_the_encoded_size(tmp_path: Path, codec: str, ext: str, width: int, height: int) -> None:
    clip = write_clip(tmp_path / f"c.{ext}", width=width, height=height, frames=8, codec=codec, gop=4)
    sizes = packet_sizes(clip, codec)
    assert len(sizes) == 8
    # Key frames carry a sequence header (the first packet and one more with gop=4); other frames none.
    assert sizes[0] == (width, height)
    assert 2 <= sum(size is not None for size in sizes) < len(sizes)
    assert {size for size in sizes if size is not None} == {(width, height)}


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_raw_stream_with_a_resolution_change(tmp_path: Path, codec: str) -> None:
    path = write_resolution_change(tmp_path / f"r.{codec}", [(64, 48), (96, 64)], frames_each=3, codec=codec)
    sizes = packet_sizes(path, codec)
    assert sizes == [(64, 48), None, None, (96, 64), None, None]


def test_no_header_other_codecs_and_garbage_give_none() -> None:
    sps = bytes.fromhex("000000016742c00dda0507e840000003004000000f03c50aa8")
    assert sequence_size("h264", sps) == (320, 240)
    assert sequence_size("h264", memoryview(sps)) == (320, 240)
    assert sequence_size("h264", sps[:9]) is None  # truncated inside the SPS
    assert sequence_size("h264", b"") is None
    assert sequence_size("h264", bytes.fromhex("0000000165888404") + sps) is None  # the scan stops at a slice
    assert sequence_size("hevc", b"\x00\x00\x01\x42\x01\xff\xff") is None
    assert sequence_size("vp9", b"\x00\x01") is None
    assert sequence_size("mpeg4", sps) is None
