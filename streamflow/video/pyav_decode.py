"""CPU decoding with PyAV into torch uint8 tensors (RGB `(3, H, W)` or NV12 `(H*3//2, W)`).

`PyAVDecoder` iterates `Frame`s of a file or URL. It keeps the stream's pts and time base, counts
packets the decoder rejects instead of stopping (`stats["bad_packets"]`), follows resolution
changes mid-stream (each frame's `info` has its own size), and can replay a file (`loop`) with
pts that keep increasing.

Example:
    >>> import tempfile, pathlib
    >>> from streamflow.video.synth import write_clip
    >>> clip = write_clip(pathlib.Path(tempfile.mkdtemp()) / "d.mp4", width=64, height=48, frames=5)
    >>> frames = list(PyAVDecoder(clip, output="nv12"))
    >>> len(frames), tuple(frames[0].image.shape), [f.index for f in frames]
    (5, (72, 64), [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from streamflow.frame import Frame, PixelFormat, StreamInfo
from streamflow.uri import redact_text, redact_uri
from streamflow.video.probe import VideoInputError, demux_packets, open_input, stream_info

if TYPE_CHECKING:
    import av.container
    import av.video.frame
    import av.video.stream

__all__ = ["PyAVDecoder", "frame_to_tensor"]

log = logging.getLogger(__name__)

_SWS_COLORSPACE = {"bt709": "ITU709", "bt601": "ITU601"}


def frame_to_tensor(frame: av.video.frame.VideoFrame, output: PixelFormat, info: StreamInfo) -> torch.Tensor:
    """Convert one decoded PyAV frame to an owned uint8 tensor in `output` layout.

    RGB uses the stream's matrix and range (from `info`), so CPU and GPU decodes agree even when
    the stream leaves them unspecified.
    """
    if output is PixelFormat.RGB:
        array = frame.to_ndarray(
            format="rgb24",
            src_colorspace=_SWS_COLORSPACE.get(info.color_space, "ITU709"),
            src_color_range="JPEG" if info.color_range == "full" else "MPEG",
        )
        # HWC -> CHW; one contiguous copy so the tensor owns ordinary memory.
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()
    if output is PixelFormat.NV12:
        if frame.width % 2 or frame.height % 2:
            raise VideoInputError(
                f"cannot read video {info.uri!r}: {frame.width}x{frame.height} frames have odd size, "
                "which NV12 cannot hold; use output rgb"
            )
        nv12 = frame if frame.format.name == "nv12" else frame.reformat(format="nv12")
        return torch.from_numpy(np.ascontiguousarray(nv12.to_ndarray()))
    raise ValueError(f"unsupported output format {output!r}: use rgb or nv12")


class PyAVDecoder:
    """Decode the first video stream of `uri` on the CPU, one `Frame` at a time.

    - `output`: `rgb` (uint8 `(3, H, W)`) or `nv12` (uint8 `(H*3//2, W)`).
    - `start` / `end`: seconds; frames before `start` are skipped after a keyframe seek, decoding
      stops at the first frame at or after `end`.
    - `max_frames`: stop after this many frames (all loops together).
    - `loop`: replay the input from the start (or `start`) until `max_frames` or `should_stop()`.
    - `stats`: `frames`, `packets` (demuxed), `bad_packets` (packets the demuxer or decoder rejected),
      `resolution_changes`, `loops`.

    Raises `VideoInputError` (one line naming the input) when the input cannot be opened or has no
    video stream.
    """

    def __init__(
        self,
        uri: str | Path,
        *,
        output: PixelFormat | str = PixelFormat.RGB,
        start: float | None = None,
        end: float | None = None,
        max_frames: int | None = None,
        loop: bool = False,
        source_id: str = "0",
        threads: int = 0,
        options: dict[str, str] | None = None,
        display_uri: str | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.uri = str(uri)
        self.output = PixelFormat(output)
        if self.output not in (PixelFormat.RGB, PixelFormat.NV12):
            raise ValueError(f"unsupported output format {self.output.value!r}: use rgb or nv12")
        self.start = start
        self.end = end
        self.max_frames = max_frames
        self.loop = loop
        self.source_id = source_id
        self.threads = threads
        self.options = options
        self.display_uri = display_uri if display_uri is not None else redact_uri(self.uri)
        self.should_stop = should_stop or (lambda: False)
        self.stats: dict[str, int] = {"frames": 0, "packets": 0, "bad_packets": 0, "resolution_changes": 0, "loops": 0}
        self.info: StreamInfo | None = None

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        container = open_input(self.uri, self.options)
        try:
            yield from self._run(container)
        finally:
            container.close()

    def _run(self, container: av.container.InputContainer) -> Iterator[Frame]:
        if not container.streams.video:
            kinds = sorted({str(s.type) for s in container.streams}) or ["none"]
            raise VideoInputError(
                f"cannot read video {self.display_uri!r}: no video stream (streams: {', '.join(kinds)})"
            )
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if self.threads:
            stream.codec_context.thread_count = self.threads
        info, _ = stream_info(container, stream, self.display_uri)
        self.info = info
        time_base = info.time_base
        frame_ticks = self._frame_ticks(info)
        pts_offset = 0
        index = 0
        while True:
            first_pts: int | None = None
            last_pts: int | None = None
            produced = 0
            for frame in self._decode_pass(container, stream):
                pts = frame.pts
                if pts is None:
                    # Raw elementary streams carry no timestamps: number frames at the nominal rate.
                    pts = produced * frame_ticks
                if self.start is not None and float(pts * time_base) < self.start - 1e-9:
                    continue
                if self.end is not None and float(pts * time_base) >= self.end - 1e-9:
                    break
                if first_pts is None:
                    first_pts = pts
                last_pts = pts
                produced += 1
                if (frame.width, frame.height) != (info.width, info.height):
                    # The header may describe a later part of a raw stream: the first frame decides.
                    if index > 0:
                        self.stats["resolution_changes"] += 1
                        log.info("%s: resolution changed to %dx%d", self.display_uri, frame.width, frame.height)
                    info = dataclasses.replace(info, width=frame.width, height=frame.height)
                    self.info = info
                image = frame_to_tensor(frame, self.output, info)
                yield Frame(
                    image=image,
                    pts=pts + pts_offset,
                    time_base=time_base,
                    source_id=self.source_id,
                    index=index,
                    format=self.output,
                    info=info,
                )
                index += 1
                self.stats["frames"] += 1
                if self.max_frames is not None and index >= self.max_frames:
                    return
                if self.should_stop():
                    return
            if not self.loop or produced == 0 or self.should_stop():
                return
            # Replayed frames continue the timeline one frame after the last one shown.
            if first_pts is not None and last_pts is not None:
                pts_offset += last_pts - first_pts + frame_ticks
            self.stats["loops"] += 1
            container.seek(0, stream=stream, backward=True, any_frame=False)

    def _frame_ticks(self, info: StreamInfo) -> int:
        if info.fps:
            return max(1, round(1 / (info.fps * info.time_base)))
        return max(1, round(Fraction(1, 30) / info.time_base))

    def _decode_pass(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> Iterator[av.video.frame.VideoFrame]:
        import av

        if self.start:
            offset = stream.start_time or 0
            target = offset + math.floor(self.start / stream.time_base) if stream.time_base else 0
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError as error:
                log.warning(
                    "%s: seek to %.3fs failed (%s); decoding from the start",
                    self.display_uri,
                    self.start,
                    redact_text(str(error)),
                )

        def stopped(error: BaseException) -> None:
            # A broken container ends demuxing: count it; what was decoded is flushed below.
            self.stats["bad_packets"] += 1
            log.warning("%s: demuxing stopped: %s", self.display_uri, redact_text(str(error)))

        flushed = False
        for packet in demux_packets(container, stream, stopped):
            flushed = packet.size == 0  # demux ends with an empty packet, which flushes the decoder
            if not flushed:
                self.stats["packets"] += 1
            if packet.is_corrupt:
                self.stats["bad_packets"] += 1
            try:
                frames = packet.decode()
            except av.error.FFmpegError as error:
                self.stats["bad_packets"] += 1
                log.debug("%s: bad packet at pts %s: %s", self.display_uri, packet.pts, redact_text(str(error)))
                continue
            yield from frames  # type: ignore[misc]
        if flushed:
            return
        try:
            yield from stream.codec_context.decode(None)  # type: ignore[misc]
        except av.error.EOFError:
            return
        except av.error.FFmpegError as error:
            self.stats["bad_packets"] += 1
            log.debug("%s: flushing the decoder failed: %s", self.display_uri, redact_text(str(error)))
