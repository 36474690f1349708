"""Synthetic clip writer: real encoded files with the requested properties."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from streamflow.video.synth import pattern_frame, write_audio_only, write_clip, write_resolution_change


def test_testsrc_frames_differ_and_noise_is_seeded() -> None:
    a, b = pattern_frame(0, 64, 48), pattern_frame(1, 64, 48)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b)
    assert np.array_equal(pattern_frame(3, 8, 8, "noise"), pattern_frame(3, 8, 8, "noise"))


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [
        ("a.mp4", "h264", "yuv420p"),
        ("b.mkv", "hevc", "yuv420p"),
        ("c.webm", "vp9", "yuv420p"),
        ("d.mp4", "mpeg4", "yuv420p"),
        ("e.mp4", "h264", "yuv444p"),
    ],
)
def test_write_clip_properties(tmp_path: Path, name: str, codec: str, pix_fmt: str) -> None:
    path = write_clip(tmp_path / name, width=64, height=48, frames=6, fps=25, codec=codec, pix_fmt=pix_fmt)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.codec_context.name == codec
        assert stream.codec_context.pix_fmt == pix_fmt
        assert stream.average_rate == 25
    assert len(frames) == 6
    assert (frames[0].width, frames[0].height) == (64, 48)
    assert [round(float((f.pts or 0) * (f.time_base or 0)) * 25) for f in frames] == list(range(6))


def test_unknown_codec_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        write_clip(tmp_path / "x.mp4", width=8, height=8, frames=1, codec="prores")


def test_resolution_change_and_audio_only(tmp_path: Path) -> None:
    path = write_resolution_change(tmp_path / "r.h264", [(64, 48), (96, 64)], frames_each=3)
    with av.open(str(path)) as container:
        sizes = [(f.width, f.height) for f in container.decode(video=0)]
    assert sizes == [(64, 48)] * 3 + [(96, 64)] * 3
    audio = write_audio_only(tmp_path / "a.m4a")
    with av.open(str(audio)) as container:
        assert not container.streams.video and len(container.streams.audio) == 1
