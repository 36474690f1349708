"""Live RTSP / RTSPS input that survives the network: connection, reconnect with backoff, CPU or NVDEC decode.

`RtspReader` yields `Frame`s from one camera until `should_stop()` turns true or the reconnect
attempts run out. It knows nothing about stages: the caller passes the uri and settings, a
`should_stop` callable and a `count(name, amount)` callback for its counters.

How it works:
- Each connection has its own reader thread that owns the PyAV container from open to close, so
  the decoding thread (the caller's) never blocks on the network. PyAV's interrupt callback bounds
  every blocking FFmpeg call (`timeout` to connect, `stall_timeout` per packet), and the decoding
  side also watches a deadline in case a call ignores the interrupt.
- Packets cross to the decoding side through a small bounded queue. When the decoder falls behind
  the queue fills, and packets are skipped up to the next keyframe, as are packets older than
  `max_lag`: a live source must not build latency, and whole GOPs are the only loss a decoder
  recovers from cleanly.
- A lost or stalled connection is replaced with a fresh one (and a fresh decoder, so new SPS/PPS
  and a new resolution are picked up cleanly) after an exponential backoff. A connection that
  delivers a keyframe counts as healthy and resets the backoff.
- Uris are shown redacted everywhere (`rtsp://user:***@host/...`): logs, errors, `StreamInfo.uri`.

Counters: `reconnects`, `reconnect_attempts`, `downtime_s` (from the last packet before a loss to
the first frame after it), `packets_dropped` (skipped because the decoder fell behind, or older
than `max_lag`), `decode_errors` (corrupt packets, e.g. UDP loss). The callback is called under a
lock, from the reader threads and the decoding thread, so it need not be thread-safe itself.

Example:
    >>> reader = RtspReader("rtsp://admin:secret@10.0.0.7/stream1", transport="udp", timeout=2)
    >>> reader.display_uri, reader.av_options()
    ('rtsp://admin:***@10.0.0.7/stream1', {'rtsp_transport': 'udp', 'timeout': '2000000'})
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamflow.frame import Frame, PixelFormat, StreamInfo
from streamflow.uri import redact_text, redact_uri
from streamflow.video.probe import stream_info
from streamflow.video.pyav_decode import frame_to_tensor

if TYPE_CHECKING:
    import av.container

__all__ = ["ReconnectConfig", "RtspConnectionError", "RtspReader", "Transport", "av_options", "validate_uri"]

logger = logging.getLogger(__name__)

_SCHEMES = ("rtsp://", "rtsps://")
# Packets buffered between the network thread and the decoder (about 2 s at 30 fps). When the
# decoder falls further behind, packets are skipped up to the next keyframe: a live source must not
# build latency, and dropping whole GOPs is the only loss a decoder recovers from cleanly.
_PACKET_QUEUE = 64
_POLL_S = 0.1  # how often the decoding side looks at `should_stop` and the watchdog while waiting


class Transport(enum.StrEnum):
    """How RTP packets travel: interleaved in the RTSP TCP connection, or as UDP datagrams."""

    TCP = "tcp"
    UDP = "udp"


class ReconnectConfig(BaseModel):
    """Exponential backoff between reconnect attempts: `initial`, doubling, capped at `max` seconds.

    `attempts` is how many reconnect attempts follow a failure before the reader gives up (the
    first try does not count); None retries forever. A connection that delivers a keyframe resets
    both the delay and the attempt count.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial: float = Field(default=0.5, gt=0)
    max: float = Field(default=10.0, gt=0)
    attempts: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> ReconnectConfig:
        if self.max < self.initial:
            raise ValueError(f"reconnect.max ({self.max}) must be >= reconnect.initial ({self.initial})")
        return self


class RtspConnectionError(ConnectionError):
    """The reader gave up: the stream could not be (re)opened within `reconnect.attempts`.

    `uri` is redacted; `attempts` is how many reconnect attempts were made.
    """

    def __init__(self, message: str, *, uri: str, attempts: int) -> None:
        super().__init__(message)
        self.uri = uri
        self.attempts = attempts


def validate_uri(uri: str) -> str:
    """The redacted form of an RTSP(S) `uri`; ValueError (showing only the redacted form) otherwise.

    Checked here rather than by pydantic, whose errors echo the raw input (and its password).

    Example:
        >>> validate_uri("rtsps://bob:pw@cam/live")
        'rtsps://bob:***@cam/live'
    """
    display = redact_uri(uri)
    if not uri.lower().startswith(_SCHEMES):
        raise ValueError(f"uri must start with rtsp:// or rtsps://, got {display!r}")
    return display


def av_options(transport: Transport | str, timeout: float, extra: dict[str, str] | None = None) -> dict[str, str]:
    """FFmpeg options for `av.open`: transport and socket timeout (microseconds), then `extra`.

    Example:
        >>> av_options("tcp", 2.5, {"buffer_size": "1048576"})
        {'rtsp_transport': 'tcp', 'timeout': '2500000', 'buffer_size': '1048576'}
    """
    options = {"rtsp_transport": Transport(transport).value, "timeout": str(int(timeout * 1_000_000))}
    options.update(extra or {})
    return options


def _explain(error: BaseException) -> str:
    """One line about an FFmpeg/OS error, without the uri FFmpeg puts in `filename` (it has the password)."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return redact_text(str(text).splitlines()[0].split("; last error log:")[0].rstrip("."))


@dataclasses.dataclass(frozen=True, slots=True)
class _Opened:
    info: StreamInfo
    extradata: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Packet:
    data: bytes
    pts: int | None
    keyframe: bool
    arrival: float  # time.time() when the packet left the demuxer


class _End:
    """The reader thread is done (its reason is on the connection)."""


_END = _End()


class _Connection:
    """One RTSP session, read by its own thread so that the decoding thread never blocks on the network."""

    def __init__(self, reader: RtspReader, serial: int) -> None:
        self.uri = reader.uri
        self.display_uri = reader.display_uri
        self.options = reader.av_options()
        self.timeout = reader.timeout
        self.stall_timeout = reader.stall_timeout
        self.count = reader.count_threadsafe
        self.log = reader.log
        self.packets: queue.Queue[_Opened | _Packet | _End] = queue.Queue(_PACKET_QUEUE)
        self.stop = threading.Event()
        self.reason = "connection closed"
        self.started_at = time.monotonic()
        self.last_packet_at: float | None = None
        #: monotonic time by which the current blocking FFmpeg call must have returned, else None.
        self.deadline: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"rtsp-reader-{reader.name}-{serial}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        container: av.container.InputContainer | None = None
        try:
            import av

            # PyAV restarts the open timeout for the stream probe, so opening may take twice `timeout`.
            self.deadline = time.monotonic() + 2 * self.timeout
            try:
                container = av.open(self.uri, "r", options=self.options, timeout=(self.timeout, self.stall_timeout))
            except (av.error.FFmpegError, OSError) as error:
                # An interrupted RTSP handshake surfaces as ExitError or as InvalidDataError (the
                # reply was cut short): the elapsed time tells a timeout from a real refusal.
                timed_out = time.monotonic() - self.started_at >= 0.95 * self.timeout
                cut_short = timed_out and isinstance(error, av.error.InvalidDataError)
                if isinstance(error, av.error.ExitError) or cut_short:
                    self.reason = f"connect timed out after {self.timeout:g} s (no RTSP reply)"
                else:
                    self.reason = f"cannot open stream: {_explain(error)}"
                return
            finally:
                self.deadline = None
            if not container.streams.video:
                self.reason = "the stream has no video track"
                return
            stream = container.streams.video[0]
            info, _ = stream_info(container, stream, self.display_uri)
            extradata = stream.codec_context.extradata
            self._offer(_Opened(info, bytes(extradata) if extradata else None), force=True)
            self._read(av, container, stream)
        except Exception as error:  # reported to the decoding side, which decides to reconnect
            self.reason = f"read failed: {type(error).__name__}: {_explain(error)}"
        finally:
            self.log.debug("%s: reader %s ends: %s", self.display_uri, self.thread.name, self.reason)
            self.deadline = None
            if container is not None:
                with contextlib.suppress(Exception):  # closing a broken session may fail; nothing to save
                    container.close()
            self._offer(_END, force=True)

    def _read(self, av: Any, container: av.container.InputContainer, stream: Any) -> None:
        stall = self.stall_timeout
        packets = container.demux(stream)
        skipping = False
        while not self.stop.is_set():
            self.deadline = time.monotonic() + stall
            try:
                packet = next(packets, None)
            except av.error.ExitError:
                self.reason = f"no packet for {stall:g} s (stalled)"
                return
            except (av.error.FFmpegError, OSError) as error:
                self.reason = f"connection lost: {_explain(error)}"
                return
            finally:
                self.deadline = None
            if packet is None:
                self.reason = "the server ended the stream"
                return
            if packet.size == 0:  # demux's flush packets carry nothing
                continue
            self.last_packet_at = time.monotonic()
            if skipping and not packet.is_keyframe:
                self.count("packets_dropped", 1)
                continue
            skipping = not self._offer(_Packet(bytes(packet), packet.pts, bool(packet.is_keyframe), time.time()))
            if skipping:
                self.count("packets_dropped", 1)

    def _offer(self, item: _Opened | _Packet | _End, *, force: bool = False) -> bool:
        """Queue without blocking the network; False if the decoder is too far behind."""
        try:
            self.packets.put_nowait(item)
        except queue.Full:
            if not force:
                return False
            # Control items must get through: make room by discarding the oldest packet.
            with contextlib.suppress(queue.Empty):
                self.packets.get_nowait()
            with contextlib.suppress(queue.Full):
                self.packets.put_nowait(item)
        return True

    def close(self, wait: float) -> bool:
        """Ask the reader to stop; True if it finished within `wait` seconds."""
        self.stop.set()
        self.thread.join(wait)
        return not self.thread.is_alive()


Decoded = list[tuple[torch.Tensor, int | None]]


class _CpuDecoder:
    """PyAV (FFmpeg) software decoder; one per connection so each stream starts from a clean state."""

    def __init__(self, info: StreamInfo, extradata: bytes | None, output: PixelFormat) -> None:
        import av

        self._av = av
        self.ctx: Any = av.CodecContext.create(info.codec, "r")
        if extradata:
            self.ctx.extradata = extradata
        self.output = output
        self.info = info

    def decode(self, data: bytes, pts: int | None) -> Decoded:
        packet = self._av.Packet(data)
        packet.pts = pts
        return [self._convert(frame) for frame in self.ctx.decode(packet)]

    def flush(self) -> Decoded:
        return [self._convert(frame) for frame in self.ctx.decode(None)]

    def _convert(self, frame: Any) -> tuple[torch.Tensor, int | None]:
        # The same conversion as file decoding (the stream's matrix and range), so a camera read on
        # the CPU gives the pictures that NVDEC and the `decode` stage give.
        return frame_to_tensor(frame, self.output, self.info), frame.pts

    def close(self) -> None:
        self.ctx = None


class _NvdecDecoder:
    """NVDEC through `PacketDecoder`; NV12 comes out on the GPU and is converted there if RGB is wanted."""

    def __init__(self, info: StreamInfo, extradata: bytes | None, output: PixelFormat, gpu_id: int) -> None:
        from streamflow.video.nvdec import PacketDecoder  # PyNvVideoCodec fails to import without a driver

        self.decoder: Any = PacketDecoder(info.codec, gpu_id=gpu_id)
        # RTSP carries SPS/PPS in the SDP (FFmpeg puts them in extradata, Annex B); NVDEC needs them in band.
        self.prefix = extradata if extradata and extradata[:3] in (b"\0\0\1", b"\0\0\0") else b""
        self.output = output
        self.matrix = info.color_space
        self.full_range = info.color_range == "full"

    def decode(self, data: bytes, pts: int | None) -> Decoded:
        if self.prefix:
            data, self.prefix = self.prefix + data, b""
        return self._convert(self.decoder.decode(data, pts))

    def flush(self) -> Decoded:
        return self._convert(self.decoder.flush())

    def _convert(self, frames: Decoded) -> Decoded:
        if self.output is PixelFormat.NV12:
            return frames
        from streamflow.ops.color import nv12_to_rgb

        return [(nv12_to_rgb(nv12, matrix=self.matrix, full_range=self.full_range), pts) for nv12, pts in frames]

    def close(self) -> None:
        self.decoder = None


class RtspReader:
    """Frames of one live RTSP/RTSPS stream, reconnecting as needed; see the module docstring.

    - `transport`: `tcp` (interleaved) or `udp`. `timeout`: seconds to connect and for each socket
      operation. `stall_timeout`: seconds without a packet before the connection counts as lost.
    - `reconnect`: the backoff; `RtspConnectionError` once its `attempts` run out.
    - `max_lag`: seconds a packet may wait for the decoder (None: no limit).
    - `options`: extra FFmpeg demuxer options, after the transport and timeout ones.
    - `output`: `rgb` or `nv12`; `gpu_id`: decode with NVDEC on that GPU, None: PyAV on the CPU.
    - `should_stop`: polled between packets and during backoff; `frames()` returns once it is true.
    - `count(name, amount)`: receives the counters; `log`: where warnings go; `name`: for thread names.

    `frames()` may be iterated once at a time; `close()` (after iterating) waits for reader threads
    still inside an FFmpeg call.
    """

    def __init__(
        self,
        uri: str,
        *,
        transport: Transport | str = Transport.TCP,
        timeout: float = 5.0,
        stall_timeout: float = 5.0,
        reconnect: ReconnectConfig | None = None,
        max_lag: float | None = 1.0,
        options: dict[str, str] | None = None,
        output: PixelFormat | str = PixelFormat.RGB,
        source_id: str = "0",
        gpu_id: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        count: Callable[[str, float], None] | None = None,
        log: logging.Logger | None = None,
        name: str = "rtsp",
    ) -> None:
        #: The uri as it may be shown anywhere (logs, errors, `StreamInfo.uri`).
        self.display_uri = validate_uri(uri)
        self.uri = uri
        self.transport = Transport(transport)
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.reconnect = reconnect or ReconnectConfig()
        self.max_lag = max_lag
        self.options = dict(options or {})
        self.output = PixelFormat(output)
        if self.output not in (PixelFormat.RGB, PixelFormat.NV12):
            raise ValueError(f"unsupported output format {self.output.value!r}: use rgb or nv12")
        self.source_id = source_id
        self.gpu_id = gpu_id
        self.should_stop = should_stop or (lambda: False)
        self._count = count or (lambda name, amount: None)
        self._count_lock = threading.Lock()
        self.log = log or logger
        self.name = name
        self._connection: _Connection | None = None
        self._stragglers: list[_Connection] = []
        self._serial = 0
        self._index = 0

    def av_options(self) -> dict[str, str]:
        """FFmpeg options for `av.open` (see `av_options`)."""
        return av_options(self.transport, self.timeout, self.options)

    def count_threadsafe(self, counter: str, amount: float = 1) -> None:
        with self._count_lock:
            self._count(counter, amount)

    # -- the reconnect loop -----------------------------------------------------------------------
    def frames(self) -> Iterator[Frame]:
        """Frames until `should_stop()`; raises `RtspConnectionError` when the attempts run out."""
        backoff = self.reconnect
        delay = backoff.initial
        attempt = 0  # reconnect attempts since the stream was last healthy
        lost_at: float | None = None  # monotonic time the stream stopped delivering; None while healthy
        while not self.should_stop():
            self._serial += 1
            connection = _Connection(self, self._serial)
            self._connection = connection
            connection.start()
            healthy = False
            pump = self._pump(connection)
            try:
                for frame in pump:
                    if not healthy:
                        healthy = True
                        if lost_at is not None:
                            down = time.monotonic() - lost_at
                            self.count_threadsafe("reconnects")
                            self.count_threadsafe("downtime_s", down)
                            self.log.info("%s: stream back after %.1f s without frames", self.display_uri, down)
                        lost_at, attempt, delay = None, 0, backoff.initial
                    yield frame
            finally:
                pump.close()  # frees the decoder now, not when the generator is collected
                self._release(connection)
            if self.should_stop():
                return
            if lost_at is None:
                lost_at = connection.last_packet_at or connection.started_at
            attempt += 1
            if backoff.attempts is not None and attempt > backoff.attempts:
                raise RtspConnectionError(
                    f"rtsp source {self.name!r}: giving up on {self.display_uri} after "
                    f"{attempt - 1} reconnect attempt(s): {connection.reason}",
                    uri=self.display_uri,
                    attempts=attempt - 1,
                )
            limit = f"/{backoff.attempts}" if backoff.attempts is not None else ""
            self.log.warning(
                "%s: %s; reconnect attempt %d%s in %.1f s",
                self.display_uri, connection.reason, attempt, limit, delay,
            )  # fmt: skip
            self.count_threadsafe("reconnect_attempts")
            if self._wait(delay):
                return
            delay = min(delay * 2, backoff.max)

    def _wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking to poll `should_stop`; True if it turned true."""
        end = time.monotonic() + seconds
        while not self.should_stop():
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_POLL_S, left))
        return True

    def _pump(self, connection: _Connection) -> Generator[Frame, None, None]:
        """Decode one connection's packets into frames until it ends or `should_stop()`."""
        decoder: _CpuDecoder | _NvdecDecoder | None = None
        info: StreamInfo | None = None
        arrivals: dict[int | None, float] = {}
        waiting_for_key = True
        decoded_any = False  # packets before the first keyframe of a connection are not drops
        decode_errors = 0
        max_lag = self.max_lag
        try:
            while not self.should_stop():
                try:
                    item = connection.packets.get(timeout=_POLL_S)
                except queue.Empty:
                    deadline = connection.deadline
                    if deadline is not None and time.monotonic() > deadline + max(1.0, 0.5 * self.stall_timeout):
                        # FFmpeg ignored its interrupt: abandon the reader (it exits when the call returns).
                        connection.reason = f"no packet for {self.stall_timeout:g} s (watchdog)"
                        return
                    if not connection.thread.is_alive() and connection.packets.empty():
                        return
                    continue
                if isinstance(item, _End):
                    return
                if isinstance(item, _Opened):
                    info = item.info
                    decoder = self._make_decoder(info, item.extradata)
                    continue
                if decoder is None or info is None:  # pragma: no cover  (the reader sends _Opened first)
                    raise RuntimeError("rtsp reader sent a packet before the stream description")
                lagging = max_lag is not None and time.time() - item.arrival > max_lag
                if lagging and not item.keyframe and not waiting_for_key:
                    # Only whole GOPs can be skipped: the decoder resumes cleanly at a keyframe.
                    waiting_for_key = True
                    self.count_threadsafe("packets_dropped")
                    continue
                if waiting_for_key:
                    # Decoding from a P-frame gives grey garbage until the next keyframe: wait for one.
                    if not item.keyframe:
                        if decoded_any:
                            self.count_threadsafe("packets_dropped")
                        continue
                    waiting_for_key = False
                decoded_any = True
                if len(arrivals) > 256:  # pts the decoder never returned (corrupt packets)
                    arrivals.clear()
                arrivals[item.pts] = item.arrival
                try:
                    decoded = decoder.decode(item.data, item.pts)
                except Exception as error:
                    # Corrupt data (UDP loss, a cut mid-packet) is expected on a live link; the decoder
                    # resynchronises at the next keyframe.
                    self.count_threadsafe("decode_errors")
                    decode_errors += 1
                    if decode_errors == 1:
                        self.log.warning(
                            "%s: decode error (counted; more are not logged): %s", self.display_uri, _explain(error)
                        )
                    continue
                for image, pts in decoded:
                    info = self._frame_info(info, image)
                    yield Frame(
                        image=image,
                        pts=pts,
                        time_base=info.time_base,
                        source_id=self.source_id,
                        index=self._index,
                        format=self.output,
                        info=info,
                        arrival_time=arrivals.pop(pts, item.arrival),
                    )
                    self._index += 1
        finally:
            # Frames still inside the decoder of a lost connection are dropped, not flushed: they are
            # late by now and may be half-decoded after a cut.
            if decoder is not None:
                decoder.close()

    def _make_decoder(self, info: StreamInfo, extradata: bytes | None) -> _CpuDecoder | _NvdecDecoder:
        if self.gpu_id is not None:
            return _NvdecDecoder(info, extradata, self.output, self.gpu_id)
        return _CpuDecoder(info, extradata, self.output)

    def _frame_info(self, info: StreamInfo, image: torch.Tensor) -> StreamInfo:
        """The stream info with the decoded size (a camera may change resolution mid-stream)."""
        if self.output is PixelFormat.NV12:
            height, width = image.shape[-2] * 2 // 3, image.shape[-1]
        else:
            height, width = image.shape[-2], image.shape[-1]
        if (height, width) != (info.height, info.width):
            info = dataclasses.replace(info, width=width, height=height)
        return info

    def _release(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None
        if not connection.close(wait=0.5):
            # Still inside an FFmpeg call; its interrupt ends it within the timeout. Joined in close().
            self._stragglers.append(connection)
        self._stragglers = [c for c in self._stragglers if c.thread.is_alive()]

    def close(self) -> None:
        """Stop the current connection and wait (bounded) for reader threads still inside FFmpeg."""
        if self._connection is not None:
            self._release(self._connection)
        limit = max(self.timeout, self.stall_timeout) + 1.0
        for connection in self._stragglers:
            if not connection.close(wait=limit):
                self.log.warning(
                    "%s: reader thread %s did not stop within %.0f s", self.display_uri, connection.thread.name, limit
                )
        self._stragglers = []
