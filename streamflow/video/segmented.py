"""Parallel CPU encoding: the video cut into closed segments, each encoded by one of N libx264 encoders.

One libx264 encoder does not use a 16-core machine: its frame threads wait on each other's
reference rows and on the lookahead, so a few encoders side by side go much faster than one
(figures in docs/MEASURED.md, "Encode"). Chunked encoding is how transcoding farms use such machines, and the same works
inside one process:

- frames are grouped into segments of `segment_frames` (a GOP: each segment starts with an IDR
  frame and references nothing outside itself);
- segment k goes to worker k mod N, with a fresh libx264 context per segment, so segments are
  encoded in parallel: `SegmentedEncoder` runs the workers as threads of this process (libx264
  itself runs without the GIL, but every call into it needs it back), `ProcessSegmentedEncoder`
  as child processes with a GIL each (the faster one next to a busy pipeline, whose threads
  hold the GIL the encoders need; docs/MEASURED.md);
- finished segments are muxed in order into one MP4/MKV. Every segment is encoded with the same
  settings, so their parameter sets are identical and the result is one ordinary stream, with a
  keyframe at least every `segment_frames` frames.

The trade-off: more keyframes (at 2 s segments, about what streaming already uses) and output
that lags input by up to N segments. Frames wait in memory meanwhile (at most `segment_frames`
per worker beyond the one being encoded), and a worker that falls behind blocks `encode` (back-pressure).

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> from fractions import Fraction
    >>> from streamflow.video.pyav_encoder import EncoderSettings
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "s.mp4"
    >>> encoder = SegmentedEncoder(
    ...     EncoderSettings(str(path), "mp4", 64, 48, Fraction(30), Fraction(1, 30)), workers=2, segment_frames=4
    ... )
    >>> for pts in range(10):
    ...     encoder.encode(np.full((72, 64), 16 * pts, np.uint8), "nv12", pts)
    >>> encoder.close()
    >>> encoder.frames, encoder.segments
    (10, 3)
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamflow.video.annexb import AnnexBMuxer
from streamflow.video.pyav_encoder import (
    EncoderProcess,
    EncoderProcessError,
    EncoderSettings,
    Packet,
    SegmentCodec,
    open_output_container,
    shared_dir,
    video_frame,
)

__all__ = ["ProcessSegmentedEncoder", "SegmentedEncoder"]

_POLL_S = 0.5  # how often a blocked producer looks for a worker's failure


@dataclass
class _Segment:
    index: int
    frames: list[Any] = field(default_factory=list)
    packets: list[Packet] = field(default_factory=list)


class SegmentedEncoder:
    """`PyAVEncoder`'s interface (`encode`, `close`, `frames`) over N parallel segment encoders."""

    def __init__(self, settings: EncoderSettings, *, workers: int, segment_frames: int) -> None:

        if workers < 1 or segment_frames < 1:
            raise ValueError(f"workers and segment_frames must be >= 1, got {workers} and {segment_frames}")
        self.settings = settings
        self.workers = workers
        self.segment_frames = segment_frames
        self.frames = 0
        self.segments = 0
        self.blocked_s = 0.0  # time `encode` waited for a busy worker: > 0 means the encoders are the bottleneck
        self._closed = False
        self._error: BaseException | None = None
        self._error_reported = False
        self._container = open_output_container(settings.path, settings.container_format)
        self._muxer = AnnexBMuxer(self._container, settings.codec, settings.time_base)
        # A frame's duration in time-base ticks, for packets the encoder left without one.
        self._frame_ticks = max(1, round(1 / (settings.rate * settings.time_base)))
        self._current: _Segment | None = None
        self._finished: dict[int, _Segment] = {}
        self._next_to_mux = 0
        self._done = threading.Condition()
        # One segment waiting per worker beyond the one it encodes: enough to keep all N busy.
        self._queues: list[queue.Queue[_Segment | None]] = [queue.Queue(maxsize=1) for _ in range(workers)]
        self._threads = [
            threading.Thread(target=self._work, args=(q,), name=f"x264-segment-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    # -- producer side (the caller's thread) ------------------------------------------------------
    def encode(self, array: np.ndarray, fmt: str, pts: int) -> None:
        """Queue one frame (NV12 or RGB array, copied here); the array may be reused once this returns."""
        self._raise_if_failed()
        if self._current is None:
            self._current = _Segment(self.segments)
            self.segments += 1
        frame = video_frame(array, fmt, self.settings.pix_fmt)  # as the single encoder makes them
        frame.pts = pts
        frame.time_base = self.settings.time_base
        self._current.frames.append(frame)
        self.frames += 1
        if len(self._current.frames) >= self.segment_frames:
            self._dispatch()
        self._mux_finished()

    def close(self) -> None:
        """Encode what is queued, mux every finished segment in order and finalize the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._error is None and self._current is not None and self._current.frames:
                self._dispatch()
            for q in self._queues:
                self._put(q, None)
            for thread in self._threads:
                thread.join()
            self._mux_finished()
        finally:
            self._container.close()
        if not self._error_reported:  # a failure already raised from `encode` is not raised twice
            self._raise_if_failed()

    def _dispatch(self) -> None:
        segment, self._current = self._current, None
        assert segment is not None
        self._put(self._queues[segment.index % self.workers], segment)

    def _put(self, q: queue.Queue[_Segment | None], item: _Segment | None) -> None:
        began = time.perf_counter()
        try:
            while True:
                try:
                    q.put(item, timeout=_POLL_S)
                    return
                except queue.Full:
                    if self._error is not None and item is not None:
                        self._raise_if_failed()
        finally:
            self.blocked_s += time.perf_counter() - began

    def _mux_finished(self) -> None:
        while True:
            with self._done:
                segment = self._finished.pop(self._next_to_mux, None)
            if segment is None:
                return
            for data, pts, dts, duration in segment.packets:
                self._muxer.mux(data, pts, dts, duration or self._frame_ticks)
            self._next_to_mux += 1

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            self._error_reported = True
            raise RuntimeError(f"segment encoder failed: {self._error}") from self._error

    # -- workers ----------------------------------------------------------------------------------
    def _work(self, inbox: queue.Queue[_Segment | None]) -> None:
        while True:
            segment = inbox.get()
            if segment is None:
                return
            if self._error is not None:
                continue  # keep taking segments so the producer never blocks on a dead worker
            try:
                self._encode_segment(segment)
            except BaseException as error:  # reported to the producer on its next call
                self._error = error
                continue
            with self._done:
                self._finished[segment.index] = segment
                self._done.notify_all()

    def _encode_segment(self, segment: _Segment) -> None:
        codec = SegmentCodec(self.settings)
        frames, segment.frames = segment.frames, []  # free the raw frames as soon as they are encoded
        for frame in frames:
            segment.packets.extend(codec.encode(frame))
        segment.packets.extend(codec.finish())


class ProcessSegmentedEncoder:
    """N child processes (`EncoderProcess(segments=True)`), each with its own GIL, encoding segments in turn.

    The same cut as `SegmentedEncoder` (segment k of `segment_frames` frames goes to encoder k mod N),
    with each encoder in a process of its own: libx264's callers in one process share one GIL, and
    every hand-off with the pipeline's other threads costs the encoder a wait for it. Frames are
    handed over through each child's ring of shared-memory `slots` (the slot interface of
    `EncoderProcess`: `acquire`, `slot`, `submit`, `release`; slot numbers are global, child
    `i`'s slots being `i*slots ... i*slots+slots-1`, and `memories` lists the rings so a GPU
    writer can page-lock them). Finished segments come back as files of packets and are muxed here,
    in order, into `settings.path`; `close()` waits for the last ones and finalizes the file, also
    after a failure.
    """

    def __init__(
        self, settings: EncoderSettings, *, fmt: str, workers: int, segment_frames: int, slots: int = 8
    ) -> None:

        if workers < 1 or segment_frames < 1:
            raise ValueError(f"workers and segment_frames must be >= 1, got {workers} and {segment_frames}")
        self.settings = settings
        self.fmt = fmt
        self.workers = workers
        self.segment_frames = segment_frames
        self.slots = slots
        self.frames = 0
        self._assigned = 0  # frames given a slot so far: the next one's segment is _assigned // segment_frames
        self._segment_of: dict[int, int] = {}  # acquired slot -> its frame's segment
        self._next_to_mux = 0
        self._closed = False
        self._error_reported = False
        self._children: list[EncoderProcess] = []
        self._directory = tempfile.mkdtemp(prefix="streamflow-segments-", dir=shared_dir())
        try:
            for _ in range(workers):  # start them side by side, then wait for all
                self._children.append(
                    EncoderProcess(
                        settings,
                        fmt=fmt,
                        slots=slots,
                        segments=True,
                        segment_dir=self._directory,
                        backlog=segment_frames,  # a whole segment may wait while the one before is encoded
                        wait_ready=False,
                    )
                )
            for child in self._children:
                child.wait_ready()
            self._container = open_output_container(settings.path, settings.container_format)
        except BaseException:
            self._stop_children()
            raise
        self.shape = self._children[0].shape
        self._muxer = AnnexBMuxer(self._container, settings.codec, settings.time_base)
        self._frame_ticks = max(1, round(1 / (settings.rate * settings.time_base)))

    @property
    def memories(self) -> list[np.ndarray]:
        """Each child's ring, `(slots, slot_bytes)` uint8, in child order."""
        return [child.memory for child in self._children]

    @property
    def blocked_s(self) -> float:
        """Seconds `acquire` waited for a child to free a slot: > 0 means the encoders are the bottleneck."""
        return sum(child.blocked_s for child in self._children)

    @property
    def segments(self) -> int:
        return -(-self.frames // self.segment_frames)

    # -- the slot interface -----------------------------------------------------------------------
    def slot(self, index: int) -> np.ndarray:
        child, slot = divmod(index, self.slots)
        return self._children[child].slot(slot)

    def acquire(self, *, wait: bool = True) -> int | None:
        """A free slot in the ring of the child that encodes the next frame's segment."""
        with self._reporting():
            return self._acquire(wait)

    def _acquire(self, wait: bool) -> int | None:
        segment = self._assigned // self.segment_frames
        child = self._children[segment % self.workers]
        slot = child.acquire(wait=False)
        if slot is None:
            if not wait:
                return None
            began = time.perf_counter()
            while slot is None:
                self._wait_for_any_child()
                slot = child.acquire(wait=False)
            child.blocked_s += time.perf_counter() - began
        self._assigned += 1
        index = (segment % self.workers) * self.slots + slot
        self._segment_of[index] = segment
        return index

    def release(self, index: int) -> None:
        """Give back the slot `acquire` just returned (its frame was not staged)."""
        child, slot = divmod(index, self.slots)
        self._children[child].release(slot)
        del self._segment_of[index]
        self._assigned -= 1

    def submit(self, entries: list[tuple[int, int]]) -> None:
        """Hand filled slots `(slot, pts)` over, in display order; mux the segments finished by then."""
        with self._reporting():
            self._submit(entries)

    def _submit(self, entries: list[tuple[int, int]]) -> None:
        per_child: dict[int, list[tuple[int, int, int]]] = {}
        for index, pts in entries:
            child, slot = divmod(index, self.slots)
            per_child.setdefault(child, []).append((slot, pts, self._segment_of.pop(index)))
        for child, items in per_child.items():
            self._children[child].submit(items)
        self.frames += len(entries)
        self._children[self._next_to_mux % self.workers].poll()
        self._mux_finished()

    def close(self) -> None:
        """Let every child finish its last segment, mux them all and finalize the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        try:
            for child in self._children:  # all flush their last segment at the same time
                with contextlib.suppress(EncoderProcessError):
                    child.request_close()
            for child in self._children:
                try:
                    child.close()
                except EncoderProcessError as failure:
                    error = error or failure
            self._mux_finished()
        finally:
            self._container.close()
            shutil.rmtree(self._directory, ignore_errors=True)
        if error is not None and not self._error_reported:  # a failure already raised is not raised twice
            raise error

    # -- inside -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reporting(self) -> Iterator[None]:
        try:
            yield
        except EncoderProcessError:
            self._error_reported = True
            raise

    def _wait_for_any_child(self) -> None:
        select.select([child.fd for child in self._children], [], [], _POLL_S)
        for child in self._children:
            child.poll()  # raises the child's error, if it failed
        self._mux_finished()

    def _mux_finished(self) -> None:
        while True:
            finished = self._children[self._next_to_mux % self.workers].finished.pop(self._next_to_mux, None)
            if finished is None:
                return
            path, packets = finished
            with open(path, "rb") as handle:
                data = memoryview(handle.read())
            os.unlink(path)
            offset = 0
            for size, pts, dts, duration in packets:
                self._muxer.mux(bytes(data[offset : offset + size]), pts, dts, duration or self._frame_ticks)
                offset += size
            self._next_to_mux += 1

    def _stop_children(self) -> None:
        for child in self._children:
            with contextlib.suppress(BaseException):
                child.abandon()
        shutil.rmtree(self._directory, ignore_errors=True)
