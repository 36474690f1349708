"""Stream information of a video file or URL, read with PyAV.

`probe()` opens the input, finds its first video stream and returns a `Probe` whose `info` is the
`StreamInfo` that frames carry. Problems with the input raise `VideoInputError` with one line
that names the input and the problem. Messages show the uri with its password masked
(`streamflow.uri.redact_uri`); `StreamInfo.uri` is the `display_uri` the caller passes.

Example:
    >>> import tempfile, pathlib
    >>> from streamflow.video.synth import write_clip
    >>> clip = write_clip(pathlib.Path(tempfile.mkdtemp()) / "p.mp4", width=64, height=48, frames=4)
    >>> p = probe(clip)
    >>> (p.info.width, p.info.height, p.info.codec, p.info.frame_count, p.info.color_space)
    (64, 48, 'h264', 4, 'bt709')
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamflow.frame import StreamInfo
from streamflow.preflight import file_kind, is_kernel_pseudo_file
from streamflow.uri import redact_text, redact_uri

if TYPE_CHECKING:
    import av
    import av.container
    import av.video.stream

__all__ = [
    "Probe",
    "VideoInputError",
    "is_url",
    "open_input",
    "probe",
    "stream_info",
]

# AVColorSpace values that mean BT.601 (BT470BG, SMPTE170M, SMPTE240M, FCC) and BT.709.
_BT601_SPACES = frozenset({4, 5, 6, 7})
_BT709_SPACES = frozenset({1})
_FULL_RANGE_PIX_FMTS = frozenset({"yuvj420p", "yuvj422p", "yuvj444p"})


class VideoInputError(ValueError):
    """The input cannot be read as video. The message is one line naming the input and the problem."""


def is_url(uri: str | Path) -> bool:
    """True for network inputs (`rtsp://`, `http://`...), False for local paths.

    Example:
        >>> is_url("rtsp://cam/1"), is_url("/data/a.mp4")
        (True, False)
    """
    return "://" in str(uri) and not str(uri).startswith("file://")


@dataclass(frozen=True, slots=True)
class Probe:
    """What `probe()` found: the `StreamInfo` plus details the decoders need to pick a path."""

    info: StreamInfo
    pix_fmt: str | None
    bit_depth: int
    duration: float | None  # seconds, when the container knows it
    start_pts: int | None
    stream_index: int
    container: str
    #: True when `info.frame_count` is the container's own count, False when it is estimated
    #: from the duration (MKV, TS) or unknown.
    frame_count_exact: bool = False

    @property
    def is_8bit_420(self) -> bool:
        """True for the layout NVDEC returns as NV12 (8-bit 4:2:0)."""
        return self.bit_depth == 8 and self.pix_fmt in (None, "yuv420p", "yuvj420p", "nv12")


def _explain(error: BaseException) -> str:
    # FFmpegError.strerror is the bare reason; str() adds errno and the path, which the caller names itself.
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return redact_text(str(text).splitlines()[0].split("; last error log:")[0].rstrip("."))


def _open_tolerant(name: str, **kwargs: Any) -> Any:
    import av

    # Damaged or foreign metadata is often not UTF-8: PyAV up to 18 refuses such a file unless told
    # to replace what it can't decode; PyAV 19 dropped the argument (passing it is an error there).
    extra = {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}
    return av.open(name, "r", **kwargs, **extra)  # type: ignore[call-overload]


def open_input(uri: str | Path, options: dict[str, str] | None = None) -> av.container.InputContainer:
    """Open `uri` with PyAV, turning every failure into a one-line `VideoInputError`.

    Example:
        >>> try:
        ...     open_input("/nonexistent/clip.mp4")
        ... except VideoInputError as e:
        ...     print(e)
        cannot read video '/nonexistent/clip.mp4': file not found
    """
    import av

    name = str(uri)
    shown = redact_uri(name)
    if not is_url(name):
        path = Path(name.removeprefix("file://"))
        if not path.exists():
            raise VideoInputError(f"cannot read video {shown!r}: file not found")
        if path.is_dir():
            raise VideoInputError(f"cannot read video {shown!r}: is a directory")
        if not os.access(path, os.R_OK):
            raise VideoInputError(f"cannot read video {shown!r}: permission denied")
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # /dev/zero, /dev/urandom: endless bytes, never a video
            raise VideoInputError(f"cannot read video {shown!r}: it is {file_kind(mode)}, not a media file")
        if is_kernel_pseudo_file(path):
            raise VideoInputError(f"cannot read video {shown!r}: a kernel pseudo-file, not a media file")
        if path.stat().st_size == 0:
            raise VideoInputError(f"cannot read video {shown!r}: file is empty")
        name = str(path)
    try:
        return _open_tolerant(name, options=options or {}, timeout=10.0 if is_url(name) else None)
    except av.error.InvalidDataError as error:
        raise VideoInputError(
            f"cannot read video {shown!r}: not a recognised media file ({_explain(error)})"
        ) from error
    except (av.error.FFmpegError, OSError) as error:
        raise VideoInputError(f"cannot read video {shown!r}: {_explain(error)}") from error


def demux_packets(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    on_error: Callable[[BaseException], None],
) -> Iterator[av.Packet]:
    """The packets of `stream` in file order, the final empty (flush) packet included.

    A broken container (truncated file, garbage) makes PyAV raise mid-demux; that ends the
    packets after `on_error(error)`, so decoders flush and keep what they have instead of failing.
    """
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.error.FFmpegError, EOFError) as error:
            on_error(error)
            return
        yield packet


def _color(stream: av.video.stream.VideoStream, height: int, pix_fmt: str | None) -> tuple[str, str]:
    cc = stream.codec_context
    space = int(cc.colorspace or 2)
    if space in _BT709_SPACES:
        matrix = "bt709"
    elif space in _BT601_SPACES:
        matrix = "bt601"
    else:
        # Unspecified: the usual convention (HD is BT.709, SD is BT.601), also what players do.
        matrix = "bt709" if height >= 720 else "bt601"
    full = int(cc.color_range or 0) == 2 or (pix_fmt in _FULL_RANGE_PIX_FMTS)
    return matrix, "full" if full else "limited"


def stream_info(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, uri: str
) -> tuple[StreamInfo, dict[str, Any]]:
    """Build the `StreamInfo` of an open stream, plus raw details (pix_fmt, bit depth, duration)."""
    cc = stream.codec_context
    width, height = int(cc.width), int(cc.height)
    pix_fmt = cc.pix_fmt
    fmt = cc.format
    bit_depth = int(fmt.components[0].bits) if fmt is not None and fmt.components else 8
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = Fraction(rate) if rate else None
    time_base = Fraction(stream.time_base) if stream.time_base else (1 / fps if fps else Fraction(1, 90000))
    frame_count = int(stream.frames) if stream.frames else None
    duration: float | None = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / 1_000_000
    if frame_count is None and duration and fps:
        # Containers like MKV store no frame count: estimate from the duration, as ffprobe does.
        frame_count = round(duration * fps)
    matrix, color_range = _color(stream, height, pix_fmt)
    info = StreamInfo(
        width=width,
        height=height,
        codec=cc.name,
        time_base=time_base,
        fps=fps,
        frame_count=frame_count,
        color_space=matrix,
        color_range=color_range,
        uri=uri,
    )
    return info, {"pix_fmt": pix_fmt, "bit_depth": bit_depth, "duration": duration}


def probe(uri: str | Path, *, options: dict[str, str] | None = None, display_uri: str | None = None) -> Probe:
    """Read the first video stream's properties. `display_uri` is what `StreamInfo.uri` shows.

    Raises `VideoInputError` for missing, unreadable or video-less inputs. `display_uri` defaults to
    `uri` with its password masked.
    """
    shown = display_uri if display_uri is not None else redact_uri(str(uri))
    with open_input(uri, options) as container:
        if not container.streams.video:
            kinds = sorted({str(s.type) for s in container.streams}) or ["none"]
            raise VideoInputError(f"cannot read video {shown!r}: no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        # A truncated header can leave a stream without even a codec (PyAV then has no context).
        if stream.codec_context is None:
            raise VideoInputError(
                f"cannot read video {shown!r}: video stream has no codec (truncated or corrupt header?)"
            )
        if not stream.codec_context.width or not stream.codec_context.height:
            raise VideoInputError(f"cannot read video {shown!r}: video stream has no frame size (corrupt header?)")
        info, extra = stream_info(container, stream, shown)
        return Probe(
            info=info,
            pix_fmt=extra["pix_fmt"],
            bit_depth=extra["bit_depth"],
            duration=extra["duration"],
            start_pts=stream.start_time,
            stream_index=stream.index,
            container=container.format.name,
            frame_count_exact=bool(stream.frames),
        )
