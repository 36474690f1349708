"""CPU video encoding (libx264/libx265 through PyAV), in this process or in a child process of its own.

Why a child process: libx264 itself runs without the GIL, but feeding it from Python takes the GIL
several times a frame (frame construction, `encode`, `mux`), and every time another pipeline thread
holds the GIL the encoder waits for it: one busy pure-Python thread beside it slows it several
times over. A child process has its own interpreter and GIL, and it finishes the file even if the
parent dies. One child alone was slower than encoding in the stage's thread in the super-resolution
pipeline (handing frames over costs more than it frees); what pays is several children encoding
closed segments in turn (`segments=True`, driven by `streamflow.video.segmented.ProcessSegmentedEncoder`).
The figures are in docs/MEASURED.md, "Encode".

`EncoderProcess` is the parent's handle. Frames travel through a ring of fixed-size slots in shared
memory (a file in /dev/shm, unlinked as soon as the child has mapped it, so nothing leaks even if
both processes die); a line of JSON per frame on the child's stdin names the slot and pts, and the
child answers `free <slot>` once it has copied the slot. The child ignores SIGINT (the parent
decides when to finish) and finalizes the file on `close`, on an error, and when its stdin closes
without `close` (the parent died), so what was encoded stays playable.

This module imports no torch: the child starts in a fraction of a second (`python -P this_file`).

Example (in-process):
    >>> import tempfile, pathlib, numpy as np
    >>> from fractions import Fraction
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.mp4"
    >>> settings = EncoderSettings(str(path), "mp4", 64, 48, Fraction(30), Fraction(1, 30))
    >>> encoder = PyAVEncoder(settings)
    >>> for pts in range(3):
    ...     encoder.encode(np.full((72, 64), 128, np.uint8), "nv12", pts)
    >>> encoder.close()
    >>> encoder.frames
    3
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Any

import numpy as np

__all__ = [
    "CPU_ENCODERS",
    "EncoderProcess",
    "EncoderProcessError",
    "EncoderSettings",
    "Packet",
    "PyAVEncoder",
    "SegmentCodec",
    "configure_encoder",
    "frame_shape",
    "shared_dir",
    "video_frame",
]

CPU_ENCODERS = {"h264": "libx264", "hevc": "libx265"}
_INPUT_FORMATS = ("nv12", "rgb24")
_START_TIMEOUT_S = 60.0  # child start: interpreter + PyAV import; slow only on a loaded machine
_CLOSE_TIMEOUT_S = 300.0  # flushing x264's lookahead and writing the index


class EncoderProcessError(RuntimeError):
    """The encoder child failed or went away; the message is one line."""


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """Everything the encoder needs to open the output; picklable as JSON for the child."""

    path: str
    container_format: str  # "mp4" | "matroska"
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    codec: str = "h264"
    crf: int | None = None
    bitrate: int | None = None
    preset: str | None = None
    # What the encoder is fed: "nv12" when the frames are NV12 (libx264 takes them as they are: no
    # conversion pass, one GIL release fewer a frame), else "yuv420p". The bitstream is 4:2:0 either way.
    pix_fmt: str = "yuv420p"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["rate"] = [self.rate.numerator, self.rate.denominator]
        data["time_base"] = [self.time_base.numerator, self.time_base.denominator]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderSettings:
        data = dict(data)
        data["rate"] = Fraction(*data["rate"])
        data["time_base"] = Fraction(*data["time_base"])
        return cls(**data)


def frame_shape(fmt: str, width: int, height: int) -> tuple[int, ...]:
    """Array shape of one frame: NV12 `(H*3//2, W)`, RGB `(H, W, 3)`."""
    if fmt == "nv12":
        return (height * 3 // 2, width)
    if fmt == "rgb24":
        return (height, width, 3)
    raise ValueError(f"unsupported input format {fmt!r}; use one of {_INPUT_FORMATS}")


# MP4 is written fragmented: a header without samples first, then self-contained fragments (each
# with its own index) at every keyframe and at least once a second. What was written stays
# playable when the process is killed, the machine loses power or the disk fills up; a
# classic MP4 keeps its only index in memory until the end and is unplayable without it.
# (Fast start, the index in front, is the opposite trade: it needs the whole file first.)
_FRAGMENT_US = 1_000_000
_FRAGMENTED_MP4 = {
    # delay_moov: the header waits for the first fragment, so its edit list knows the B-frame
    # delay and the first frame still shows at its own time (0), as in a classic MP4.
    "movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof",
    "frag_duration": str(_FRAGMENT_US),
    "flush_packets": "1",  # a finished fragment reaches the file at once, not when a buffer fills
}


def open_output_container(path: str, container_format: str) -> Any:
    """Open `path` for writing with PyAV; MP4/MOV fragmented so partial files stay playable."""
    import av

    options = _FRAGMENTED_MP4 if container_format in ("mp4", "mov") else {}
    return av.open(path, "w", format=container_format, options=dict(options))


class PyAVEncoder:
    """libx264/libx265 into an MP4/MKV container; frames are NV12 or RGB numpy arrays with their pts."""

    def __init__(self, settings: EncoderSettings) -> None:

        self.settings = settings
        self.frames = 0
        self._closed = False
        self._container = open_output_container(settings.path, settings.container_format)
        try:
            stream: Any = self._container.add_stream(CPU_ENCODERS[settings.codec], rate=settings.rate)
            configure_encoder(stream.codec_context, settings)
        except BaseException:
            self._container.close()
            raise
        self._stream = stream

    def encode(self, array: np.ndarray, fmt: str, pts: int) -> None:
        """Encode one frame (`fmt` "nv12" or "rgb24"); the array may be reused once this returns."""
        self.encode_frame(self.frame_from(array, fmt), pts)

    def frame_from(self, array: np.ndarray, fmt: str) -> Any:
        """A PyAV frame holding its own copy of `array`, in the encoder's pixel format."""
        return video_frame(array, fmt, self.settings.pix_fmt)

    def encode_frame(self, frame: Any, pts: int) -> None:
        """Encode a frame made by `frame_from`."""
        frame.pts = pts
        frame.time_base = self.settings.time_base
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finalize the container; idempotent, and the file is closed even if flushing fails."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()


def configure_encoder(context: Any, settings: EncoderSettings) -> None:
    """Set up a libx264/libx265 codec context (a stream's, or a standalone one) from `settings`.

    One place for size, clock, BT.709 limited-range tags and rate control, so the single encoder
    and the segment encoders (`streamflow.video.segmented`) write the same stream parameters.
    """
    context.width, context.height, context.pix_fmt = settings.width, settings.height, settings.pix_fmt
    context.time_base = settings.time_base
    context.framerate = settings.rate
    context.colorspace, context.color_primaries, context.color_trc, context.color_range = 1, 1, 1, 1
    options: dict[str, str] = {"preset": settings.preset or "veryfast"}
    if settings.bitrate:
        context.bit_rate = int(settings.bitrate)
    else:
        options["crf"] = str(settings.crf if settings.crf is not None else 23)
    if settings.codec == "hevc":
        options["x265-params"] = "log-level=error"
    context.options = options


Packet = tuple[bytes, int | None, int | None, int | None]  # data (Annex B), pts, dts, duration


class SegmentCodec:
    """One closed segment: a fresh libx264/libx265 context, so it starts with an IDR frame and
    references nothing before it. Packets come out as Annex B bytes with their pts, dts and duration,
    for `AnnexBMuxer` (every segment of a video has the same settings, hence the same parameter sets).
    """

    def __init__(self, settings: EncoderSettings) -> None:
        import av

        self._context: Any = av.CodecContext.create(CPU_ENCODERS[settings.codec], "w")
        configure_encoder(self._context, settings)

    def encode(self, frame: Any) -> list[Packet]:
        """Encode one frame made by `video_frame` (pts and time base set); returns the packets ready so far."""
        return [(bytes(p), p.pts, p.dts, p.duration) for p in self._context.encode(frame)]

    def finish(self) -> list[Packet]:
        """Flush the encoder: the segment's remaining packets."""
        return [(bytes(p), p.pts, p.dts, p.duration) for p in self._context.encode(None)]


def video_frame(array: np.ndarray, fmt: str, pix_fmt: str = "yuv420p") -> Any:
    """A PyAV frame with its own copy of an NV12 or RGB array, in the encoder's `pix_fmt`, tagged BT.709 limited."""
    import av

    height, width = (array.shape[0] * 2 // 3, array.shape[1]) if fmt == "nv12" else array.shape[:2]
    frame = av.VideoFrame(width, height, fmt)
    # numpy copies into the frame's planes with the GIL released; `VideoFrame.from_ndarray` holds
    # it for the whole copy, an order of magnitude longer (docs/MEASURED.md), and the GIL is what
    # the pipeline's other threads wait for.
    rows = (array[:height], array[height:]) if fmt == "nv12" else (array.reshape(height, width * 3),)
    for plane, source in zip(frame.planes, rows, strict=True):
        target = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        np.copyto(target[: source.shape[0], : source.shape[1]], source)
    if fmt == "rgb24":
        # Same matrix and range as the stream is tagged with.
        frame = frame.reformat(format=pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
    frame.colorspace, frame.color_range = 1, 1
    return frame


def shared_dir() -> str:
    """Where shared memory files go: /dev/shm (RAM) where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class EncoderProcess:
    """Parent side of an encoder running in a child process; see the module docstring.

    `acquire()` a free slot, fill `slot(index)` (a writable uint8 view), then `submit()` the filled
    slots with their pts in display order. `close()` waits until the child is done.

    Two kinds of child:
    - `segments=False`: a `PyAVEncoder` writing `settings.path` itself (and finalizing it even if
      this process dies);
    - `segments=True`: closed segments (`SegmentCodec`) and no file. Each submitted frame names its
      segment; when a segment ends (a frame of a later segment arrives, or `close`) the child writes
      its packets to a file in `segment_dir` and announces it; `finished` maps the segment index to
      `(path, packets)` where packets are `(size, pts, dts, duration)` in order. The caller muxes
      them (`streamflow.video.segmented.ProcessSegmentedEncoder`). The child copies each frame out
      of its slot at once and keeps up to `backlog` frames waiting for x264, so a caller that hands
      several children a segment each in turn keeps them all busy with a small ring.

    `wait_ready=False` returns once the child is started; call `wait_ready()` before anything else
    (so several children start side by side).
    """

    def __init__(
        self,
        settings: EncoderSettings,
        *,
        fmt: str,
        slots: int = 8,
        segments: bool = False,
        segment_dir: str | None = None,
        backlog: int = 0,
        wait_ready: bool = True,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if segments and not segment_dir:
            raise ValueError("segments=True needs a segment_dir")
        self.settings = settings
        self.fmt = fmt
        self.slots = slots
        self.shape = frame_shape(fmt, settings.width, settings.height)
        self.slot_bytes = int(np.prod(self.shape))
        self.frames = 0
        self.blocked_s = 0.0  # time `acquire` waited for the child to free a slot
        self.finished: dict[int, tuple[str, list[tuple[int, int | None, int | None, int | None]]]] = {}
        self._free: deque[int] = deque(range(slots))
        self._in_flight = 0
        self._buffer = b""
        self._closed = False
        self._close_sent = False
        self._ready = False
        self._error: str | None = None
        self._memory_path = os.path.join(shared_dir(), f"streamflow-encode-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        fd = os.open(self._memory_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, slots * self.slot_bytes)
            self._map = mmap.mmap(fd, slots * self.slot_bytes)
        finally:
            os.close(fd)
        self.memory = np.frombuffer(self._map, dtype=np.uint8).reshape(slots, self.slot_bytes)
        try:
            # -P: don't put this file's folder (streamflow/video) first on sys.path; the child
            # imports only the standard library, numpy and PyAV.
            self._child = subprocess.Popen(
                [sys.executable, "-P", os.path.abspath(__file__)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
            assert self._child.stdin is not None and self._child.stdout is not None
            self._stdin: IO[bytes] = self._child.stdin
            self._stdout_fd = self._child.stdout.fileno()
            os.set_blocking(self._stdout_fd, False)
            hello = {
                "settings": settings.to_json(),
                "fmt": fmt,
                "memory": self._memory_path,
                "slots": slots,
                "segments": segment_dir if segments else None,
                "backlog": backlog,
            }
            self._send([hello])
        except BaseException:
            self._forget_memory_name()
            self._kill()
            raise
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until the child has opened the encoder (raises with its one-line error if it could not)."""
        if self._ready:
            return
        try:
            self._expect("ready", _START_TIMEOUT_S)
            self._ready = True
        except BaseException:
            self._kill()
            raise
        finally:
            # The child has mapped the memory (or failed): the name is no longer needed.
            self._forget_memory_name()

    def _forget_memory_name(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._memory_path)

    # -- frames -----------------------------------------------------------------------------------
    def slot(self, index: int) -> np.ndarray:
        """Writable view of slot `index`, shaped like one frame."""
        return self.memory[index].reshape(self.shape)

    def acquire(self, *, wait: bool = True) -> int | None:
        """A free slot's index; waits for the child to free one when `wait`, else None if none is free."""
        if not self._free:
            self._read_replies(0.0)
        if not self._free and wait:
            began = time.perf_counter()
            while not self._free:
                self._read_replies(None)
            self.blocked_s += time.perf_counter() - began
        return self._free.popleft() if self._free else None

    def submit(self, entries: list[tuple[int, int]] | list[tuple[int, int, int]]) -> None:
        """Hand filled slots `(slot, pts)` (segment children: `(slot, pts, segment)`) to the child, in display order."""
        if not entries:
            return
        self._check()
        keys = ("slot", "pts", "seg")
        self._send([dict(zip(keys, entry, strict=False)) for entry in entries])
        self._in_flight += len(entries)
        self.frames += len(entries)

    def release(self, slot: int) -> None:
        """Give back a slot that was acquired but not submitted."""
        self._free.append(slot)

    def poll(self) -> None:
        """Read what the child has said so far (freed slots, finished segments) without waiting."""
        self._check()

    @property
    def memories(self) -> list[np.ndarray]:
        """The ring, as a list (the interface `ProcessSegmentedEncoder` shares)."""
        return [self.memory]

    @property
    def fd(self) -> int:
        """The child's reply pipe, for `select` over several children."""
        return self._stdout_fd

    # -- end --------------------------------------------------------------------------------------
    def request_close(self) -> None:
        """Tell the child to finish now, without waiting (`close()` waits); lets several children flush together."""
        if not self._close_sent and self._error is None and self._child.poll() is None:
            self._close_sent = True
            self._send([{"close": True}])

    def abandon(self) -> None:
        """Stop the child without a `close`: a file child finalizes what it has, a segment child drops its work."""
        self._closed = True
        self._forget_memory_name()
        self._kill()

    def close(self) -> int:
        """Flush and finish (the file, or the last segment); returns the frames handed over. Raises on failure."""
        if self._closed:
            return self.frames
        self._closed = True
        try:
            if self._error is None:
                self.request_close()
                # Also when the child has exited already: its last replies are still in the pipe.
                self._expect("closed", _CLOSE_TIMEOUT_S)
            self._child.wait(timeout=_CLOSE_TIMEOUT_S)
        except BaseException:
            self._kill()
            raise
        finally:
            self._release_memory()
        if self._error is not None:
            raise EncoderProcessError(self._error)
        return self.frames

    def _kill(self) -> None:
        child = getattr(self, "_child", None)
        if child is not None and child.poll() is None:
            # Closing stdin makes the child finalize what it has; kill only if it does not end.
            with contextlib.suppress(OSError):
                child.stdin.close()
            try:
                child.wait(timeout=_CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._release_memory()

    def _release_memory(self) -> None:
        memory = getattr(self, "memory", None)
        if memory is not None:
            del self.memory
            with contextlib.suppress(BufferError):  # a caller still holds a view: the GC unmaps it later
                self._map.close()

    # -- the pipe ---------------------------------------------------------------------------------
    def _check(self) -> None:
        self._read_replies(0.0)
        if self._error is not None:
            raise EncoderProcessError(self._error)

    def _send(self, messages: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(m, separators=(",", ":")) + "\n" for m in messages).encode()
        try:
            self._stdin.write(data)
            self._stdin.flush()
        except (BrokenPipeError, OSError):
            with contextlib.suppress(EncoderProcessError):
                self._read_replies(1.0)  # the child's last words, if it left any
            raise EncoderProcessError(self._error or self._exit_reason()) from None

    def _exit_reason(self) -> str:
        code = self._child.poll()
        return f"the encoder process exited with code {code}" if code is not None else "the encoder process stopped"

    def _read_replies(self, timeout: float | None) -> list[str]:
        """Read what the child has said (waiting up to `timeout` s for something, None = until it says something)."""
        if timeout is not None and timeout <= 0:
            ready = True  # the pipe is non-blocking: just try, one system call instead of two
        else:
            ready = bool(select.select([self._stdout_fd], [], [], timeout)[0])
        lines: list[str] = []
        if not ready:
            return lines
        try:
            chunk = os.read(self._stdout_fd, 1 << 16)
        except BlockingIOError:
            return lines
        if not chunk:  # the child closed its stdout: it has exited or is about to
            if self._error is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._child.wait(timeout=5.0)
                self._error = self._exit_reason()
            raise EncoderProcessError(self._error)
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            kind, _, rest = line.partition(" ")
            if kind == "free":
                self._free.append(int(rest))
                self._in_flight -= 1
            elif kind == "segment":
                done = json.loads(rest)
                self.finished[int(done["segment"])] = (done["path"], [tuple(p) for p in done["packets"]])
            elif kind == "error":
                self._error = self._error or rest
            lines.append(line)
        return lines

    def _expect(self, word: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EncoderProcessError(f"the encoder process did not answer {word!r} within {timeout:.0f} s")
            lines = self._read_replies(remaining)
            if self._error is not None:
                raise EncoderProcessError(self._error)
            if any(line.split(" ", 1)[0] == word for line in lines):
                return


# -- the child ------------------------------------------------------------------------------------
def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:400]


def _child_main() -> int:
    # Ctrl-C reaches the whole process group: the parent drains and then sends `close`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    parent_gone = False
    say_lock = threading.Lock()  # segment children answer from two threads

    def say(line: str) -> None:
        nonlocal parent_gone
        with say_lock:
            if parent_gone:
                return
            try:
                stdout.write((line + "\n").encode())
                stdout.flush()
            except (BrokenPipeError, OSError):
                # The parent died: nobody reads the replies any more, but every frame it handed over is
                # still encoded and the file finalized.
                parent_gone = True

    hello = json.loads(stdin.readline() or "{}")
    encoder: PyAVEncoder | None = None
    try:
        settings = EncoderSettings.from_json(hello["settings"])
        fmt, slots = hello["fmt"], int(hello["slots"])
        shape = frame_shape(fmt, settings.width, settings.height)
        slot_bytes = int(np.prod(shape))
        with open(hello["memory"], "r+b") as handle:
            shared = mmap.mmap(handle.fileno(), slots * slot_bytes)
        memory = np.frombuffer(shared, dtype=np.uint8).reshape(slots, slot_bytes)
        if hello.get("segments"):
            return _child_segments(hello, settings, memory, shape, fmt, say)
        encoder = PyAVEncoder(settings)
        say("ready")
        for raw in stdin:
            message = json.loads(raw)
            if message.get("close"):
                break
            slot = int(message["slot"])
            frame = encoder.frame_from(memory[slot].reshape(shape), fmt)
            say(f"free {slot}")  # the frame is PyAV's own copy: the parent may refill the slot already
            encoder.encode_frame(frame, int(message["pts"]))
        encoder.close()
        say(f"closed {encoder.frames}")
        return 0
    except BaseException as error:  # report in one line, keep what was written playable
        with contextlib.suppress(BaseException):
            say(f"error {_one_line(error)}")
        if encoder is not None:
            with contextlib.suppress(BaseException):
                encoder.close()
        return 1


def _child_segments(
    hello: dict[str, Any],
    settings: EncoderSettings,
    memory: np.ndarray,
    shape: tuple[int, ...],
    fmt: str,
    say: Callable[[str], None],
) -> int:
    """Segment child: this thread copies frames out of their slots, a second one encodes them.

    The copy frees the slot at once, so the parent's ring stays small; the frames wait here
    (at most `backlog`) while x264 works on the segment before. A segment ends when a frame of a
    later one arrives or at `close`; its packets go to one file, announced with their sizes and
    timestamps. Without `close` (the parent died) nothing is written and the folder is removed.
    """
    directory = str(hello["segments"])
    work: queue.Queue[tuple[Any, int, int] | None] = queue.Queue(maxsize=max(1, int(hello.get("backlog") or 1)))
    failures: list[BaseException] = []
    orphaned = threading.Event()

    def encode_segments() -> None:
        codec: SegmentCodec | None = None
        segment, packets = -1, []
        while True:
            item = work.get()
            if failures:
                if item is None:
                    return
                continue  # keep taking frames so the reader never blocks on a dead encoder
            try:
                if item is None or item[2] != segment:
                    if codec is not None and not orphaned.is_set():
                        packets.extend(codec.finish())
                        path = os.path.join(directory, f"segment-{segment:08d}.h26x")
                        with open(path, "wb") as handle:
                            handle.write(b"".join(data for data, *_ in packets))
                        table = [[len(data), pts, dts, duration] for data, pts, dts, duration in packets]
                        say("segment " + json.dumps({"segment": segment, "path": path, "packets": table}))
                    if item is None:
                        return
                    codec, segment, packets = SegmentCodec(settings), item[2], []
                frame, pts, _ = item
                frame.pts, frame.time_base = pts, settings.time_base
                assert codec is not None
                packets.extend(codec.encode(frame))
            except BaseException as error:  # reported by the reader, in one line
                failures.append(error)

    encoder = threading.Thread(target=encode_segments, name="x264-segments", daemon=True)
    encoder.start()
    say("ready")
    closed = False
    try:
        for raw in sys.stdin.buffer:
            message = json.loads(raw)
            if message.get("close"):
                closed = True
                break
            if failures:
                break
            slot = int(message["slot"])
            frame = video_frame(memory[slot].reshape(shape), fmt, settings.pix_fmt)
            work.put((frame, int(message["pts"]), int(message["seg"])))  # waits while the backlog is full
            say(f"free {slot}")
    finally:
        if not closed:
            orphaned.set()
        work.put(None)
        encoder.join()
    if not closed and not failures:
        shutil.rmtree(directory, ignore_errors=True)  # the parent died: nobody will mux these
        return 1
    if failures:
        raise failures[0]
    say("closed")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
