"""Muxing an already encoded Annex B H.264/HEVC bitstream (NVENC's, or libx264 segments') into a container.

Torch-free, like `pyav_encoder`: it is used by the NVENC path and by the segmented CPU encoder.
"""

from __future__ import annotations

import io
import logging
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import av.container
    import av.video.stream

__all__ = ["AnnexBMuxer"]

log = logging.getLogger(__name__)


class AnnexBMuxer:
    """Mux an already encoded Annex B H.264/HEVC bitstream into `container`.

    The stream's codec parameters are parsed from the first access unit (which carries the
    parameter sets): adding a stream by codec name would open a libx264 encoder and write its
    headers instead of the real bitstream's. Without B-frames (NVENC with `bf=0`) dts = pts; with
    them the encoder's dts are passed along. Decode timestamps must rise strictly: one that does
    not (concatenated segments whose encoders' reorder delays differ) is moved one tick past the
    previous, as long as it stays at or before its pts.

    Example:
        >>> import av, tempfile, pathlib
        >>> from fractions import Fraction
        >>> cc = av.CodecContext.create("libx264", "w")
        >>> cc.width, cc.height, cc.pix_fmt, cc.time_base = 64, 48, "yuv420p", Fraction(1, 30)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "annexb.mp4"
        >>> with av.open(str(path), "w") as out:
        ...     muxer = AnnexBMuxer(out, "h264", Fraction(1, 30))
        ...     frame = av.VideoFrame(64, 48, "yuv420p")
        ...     for i in range(5):
        ...         frame.pts = i
        ...         for p in cc.encode(frame):
        ...             muxer.mux(bytes(p), p.pts, p.dts, p.duration)
        ...     for p in cc.encode(None):
        ...         muxer.mux(bytes(p), p.pts, p.dts, p.duration)
        >>> with av.open(str(path)) as inp:
        ...     len(list(inp.decode(video=0)))
        5
    """

    def __init__(self, container: av.container.OutputContainer, codec: str, time_base: Fraction) -> None:
        self.container = container
        self.codec = codec
        self.time_base = time_base
        self.stream: av.video.stream.VideoStream | None = None
        self._last_pts = -1
        self._last_dts: int | None = None

    def mux(self, data: bytes, pts: int | None, dts: int | None = None, duration: int | None = None) -> None:
        """Write one access unit; `pts`/`dts`/`duration` in `time_base` units (pts None: one tick after the previous).

        Give the duration where it is known: with B-frames the MP4 muxer writes an edit list, and it
        derives the track's length from the packets' durations; a missing one can cut off the last frame.
        """
        import av

        if not data:
            return
        if self.stream is None:
            self.stream = self._stream_from(data)
        packet = av.Packet(data)
        packet.stream = self.stream
        packet.time_base = self.time_base
        pts = self._last_pts + 1 if pts is None else pts
        dts = pts if dts is None else dts
        if self._last_dts is not None and dts <= self._last_dts:
            if self._last_dts + 1 > pts:
                raise ValueError(
                    f"cannot order packet pts={pts}: its decode time would follow {self._last_dts} and pass its pts"
                )
            dts = self._last_dts + 1
        packet.pts, packet.dts = pts, dts
        if duration:
            packet.duration = duration
        self._last_pts = max(self._last_pts, pts)
        self._last_dts = dts
        self.container.mux(packet)

    def _stream_from(self, first: bytes) -> av.video.stream.VideoStream:
        import av

        with av.open(io.BytesIO(first), "r", format=self.codec) as parsed:
            stream = self.container.add_stream_from_template(parsed.streams.video[0])
        stream.time_base = self.time_base
        return stream
