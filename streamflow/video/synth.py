"""Synthetic test clips, encoded for real with PyAV (libx264, libx265, ...).

Tests and benchmarks generate their own inputs with these functions instead of shipping media.

Example:
    >>> import tempfile, pathlib
    >>> path = write_clip(pathlib.Path(tempfile.mkdtemp()) / "a.mp4", width=64, height=48, frames=3)
    >>> path.stat().st_size > 0
    True
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    import av.video

__all__ = [
    "ENCODERS",
    "Pattern",
    "pattern_frame",
    "write_audio_only",
    "write_clip",
    "write_resolution_change",
]


class Pattern(enum.StrEnum):
    """Picture content of a synthetic clip."""

    TESTSRC = "testsrc"  # moving gradient and shapes: every frame differs, compresses well
    NOISE = "noise"  # uniform random pixels: worst case for the encoder


#: Codec name (as used across streamflow) -> PyAV/FFmpeg encoder.
ENCODERS: dict[str, str] = {
    "h264": "libx264",
    "hevc": "libx265",
    "vp9": "libvpx-vp9",
    "mpeg4": "mpeg4",
}


def pattern_frame(index: int, width: int, height: int, pattern: str = "testsrc", *, seed: int = 0) -> np.ndarray:
    """One RGB frame `(height, width, 3)` uint8 of a synthetic pattern; frame `index` moves the content.

    Example:
        >>> pattern_frame(0, 8, 6).shape
        (6, 8, 3)
    """
    if Pattern(pattern) is Pattern.NOISE:
        return np.random.default_rng(seed + index).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    shift = 4.0 * index
    img = np.empty((height, width, 3), dtype=np.float32)
    img[..., 0] = ((xs + shift) % width) * (255.0 / max(width - 1, 1))
    img[..., 1] = ys * (255.0 / max(height - 1, 1))
    img[..., 2] = 128.0 + 100.0 * np.sin((xs + ys + shift) * (2 * np.pi / max(width, 8)))
    # A box moving right and a disc moving down make consecutive frames clearly different.
    box = max(min(width, height) // 4, 2)
    bx = (3 * index) % max(width - box, 1)
    by = height // 4
    img[by : by + box, bx : bx + box] = (255.0, 255.0, 0.0)
    cy = (2 * index) % max(height, 1)
    cx = 3 * width // 4
    disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= (box / 2) ** 2
    img[disc] = (20.0, 40.0, 230.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def _container_format(path: Path) -> str | None:
    # Raw elementary streams need the muxer named; containers are guessed from the suffix.
    return {".h264": "h264", ".264": "h264", ".hevc": "hevc", ".265": "hevc"}.get(path.suffix.lower())


def write_clip(
    path: str | Path,
    *,
    width: int,
    height: int,
    frames: int,
    fps: int = 30,
    codec: str = "h264",
    pattern: str = "testsrc",
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    crf: int = 18,
    faststart: bool = False,
) -> Path:
    """Encode a synthetic clip with PyAV and return its path.

    The stream is tagged BT.709 limited range and frames are converted with that matrix, so
    decoders and `streamflow.ops.color` agree on colours. `codec` is one of `ENCODERS`' keys;
    the container comes from the suffix (.mp4, .mkv, .webm, .ts, or raw .h264/.hevc). `faststart`
    moves the MP4 index to the front (a truncated file stays partly decodable).

    Example:
        >>> import tempfile, pathlib
        >>> p = write_clip(pathlib.Path(tempfile.mkdtemp()) / "c.mkv", width=32, height=32, frames=2, codec="h264")
        >>> p.suffix
        '.mkv'
    """
    import av

    path = Path(path)
    if codec not in ENCODERS:
        raise ValueError(f"unknown codec {codec!r}: use one of {sorted(ENCODERS)}")
    options: dict[str, object] = {}
    container_options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=_container_format(path), options=container_options) as out:
        stream = cast("av.video.stream.VideoStream", out.add_stream(ENCODERS[codec], rate=fps))
        stream.width = width
        stream.height = height
        stream.pix_fmt = pix_fmt
        if codec in ("h264", "hevc"):
            options["crf"] = str(crf)
            options["preset"] = "ultrafast" if codec == "hevc" else "veryfast"
        if codec == "hevc":
            options["x265-params"] = "log-level=error"
        if gop is not None:
            stream.codec_context.gop_size = gop
        stream.options = options
        cc = stream.codec_context
        cc.colorspace = 1  # AVCOL_SPC_BT709
        cc.color_primaries = 1
        cc.color_trc = 1
        cc.color_range = 1  # AVCOL_RANGE_MPEG (limited)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height, pattern), format="rgb24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace="ITU709", src_colorspace="ITU709")
            frame.colorspace = 1
            frame.color_range = 1
            frame.pts = i
            # The muxer may change stream.time_base when it writes the header: pts are in 1/fps.
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_resolution_change(
    path: str | Path, sizes: Sequence[tuple[int, int]], *, frames_each: int, fps: int = 30, codec: str = "h264"
) -> Path:
    """Write a raw Annex B stream (.h264/.hevc) whose resolution changes between segments.

    Each `(width, height)` in `sizes` is one independently encoded segment; the segments are
    concatenated, as a camera that renegotiates its resolution would send them.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.h264"
        >>> write_resolution_change(p, [(32, 32), (48, 32)], frames_each=2).stat().st_size > 0
        True
    """
    import av

    path = Path(path)
    with path.open("wb") as fh:
        for width, height in sizes:
            cc = cast("av.video.codeccontext.VideoCodecContext", av.CodecContext.create(ENCODERS[codec], "w"))
            cc.width, cc.height, cc.pix_fmt = width, height, "yuv420p"
            cc.time_base = Fraction(1, fps)
            cc.framerate = Fraction(fps)
            cc.options = {"preset": "ultrafast"} | ({"x265-params": "log-level=error"} if codec == "hevc" else {})
            cc.open()
            for i in range(frames_each):
                frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
                frame = frame.reformat(format="yuv420p")
                frame.pts = i
                for packet in cc.encode(frame):
                    fh.write(bytes(packet))
            for packet in cc.encode(None):
                fh.write(bytes(packet))
    return path


def write_audio_only(path: str | Path, *, seconds: float = 0.5, rate: int = 16000) -> Path:
    """Write an AAC file without any video stream (a bad input for video sources).

    Example:
        >>> import tempfile, pathlib
        >>> write_audio_only(pathlib.Path(tempfile.mkdtemp()) / "a.m4a").suffix
        '.m4a'
    """
    import av

    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = int(seconds * rate)
        tone = (0.2 * np.sin(np.arange(samples, dtype=np.float32) * (2 * np.pi * 440 / rate))).astype(np.float32)
        chunk = 1024
        for start in range(0, samples, chunk):
            part = tone[start : start + chunk]
            frame = av.AudioFrame.from_ndarray(part[None, :], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path
