"""`rtsp`: a live camera source (RTSP / RTSPS) that survives the network.

PyAV demuxes the stream (TCP interleaved by default, or UDP) in a reader thread; the stage's own
thread decodes: with PyAV on the CPU, or with NVDEC (`streamflow.video.nvdec.PacketDecoder`) when the
stage runs on a GPU. Each frame carries `arrival_time`, the wall-clock time its packet arrived, so the
run stats report capture-to-sink latency.

Live semantics:
- `live = True`: the runner makes the edge after this source `drop_oldest`, so a slow consumer
  drops old frames (counted on that edge) instead of letting latency grow or stalling ingest. If
  decoding itself falls behind, packets older than `max_lag` are skipped up to the next keyframe.
- When the connection fails or no packet arrives for `stall_timeout` seconds, the source
  reconnects with exponential backoff (`reconnect.initial` doubling up to `reconnect.max`). The
  pipeline keeps running meanwhile. Each connection gets a fresh decoder, so new SPS/PPS and a new
  resolution are picked up cleanly.
- The stream ends only when the pipeline stops or `reconnect.attempts` run out; the latter raises
  `RtspConnectionError` (a `ConnectionError`; the CLI exits with 1).
- Credentials never reach logs, errors or stats: uris are shown as `rtsp://user:***@host/...`.

Counters (in the run stats of this stage): `reconnects` (connections re-established after the stream
was lost or could not be opened), `reconnect_attempts`, `downtime_s` (from the last packet before a
loss to the first keyframe after it), `packets_dropped` (the decoder fell behind the network: packets
skipped up to the next keyframe, or older than `max_lag`), `decode_errors` (corrupt packets, e.g. UDP loss).

Example (YAML):
    - name: camera
      type: rtsp
      uri: ${RTSP_URI:-rtsp://127.0.0.1:8554/live}
      transport: tcp          # tcp | udp
      timeout: 5              # seconds: connect and socket I/O
      stall_timeout: 5        # seconds without a packet before reconnecting
      reconnect: {initial: 0.5, max: 10, attempts: null}   # null = retry forever
      max_lag: 1              # seconds; a decoder further behind skips to the next keyframe
      format: rgb             # rgb | nv12

Example (Python):
    >>> src = RtspSource(uri="rtsp://admin:secret@10.0.0.7/stream1", transport="udp")
    >>> src.display_uri, src.config.transport.value, src.config.reconnect.attempts
    ('rtsp://admin:***@10.0.0.7/stream1', 'udp', None)
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import queue
import threading
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from streamflow.frame import Frame, PixelFormat, StreamInfo
from streamflow.stage import Source, StageConfig
from streamflow.uri import redact_text, redact_uri
from streamflow.video.probe import stream_info

if TYPE_CHECKING:
    import av.container

__all__ = ["ReconnectConfig", "RtspConnectionError", "RtspSource", "Transport"]

_SCHEMES = ("rtsp://", "rtsps://")
# Packets buffered between the network thread and the decoder (about 2 s at 30 fps). When the
# decoder falls further behind, packets are skipped up to the next keyframe: a live source must not
# build latency, and dropping whole GOPs is the only loss a decoder recovers from cleanly.
_PACKET_QUEUE = 64
_POLL_S = 0.1  # how often the decode thread looks at `stopping` and the watchdog while waiting


class Transport(enum.StrEnum):
    """How RTP packets travel: interleaved in the RTSP TCP connection, or as UDP datagrams."""

    TCP = "tcp"
    UDP = "udp"


class ReconnectConfig(BaseModel):
    """Exponential backoff between reconnect attempts: `initial`, doubling, capped at `max` seconds.

    `attempts` is how many reconnect attempts follow a failure before the source gives up (the
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
    """The source gave up: the stream could not be (re)opened within `reconnect.attempts`.

    `uri` is redacted; `attempts` is how many reconnect attempts were made.
    """

    def __init__(self, message: str, *, uri: str, attempts: int) -> None:
        super().__init__(message)
        self.uri = uri
        self.attempts = attempts


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
    """One RTSP session, read by its own thread so that the decode thread never blocks on the network.

    The reader owns the PyAV container from open to close. PyAV's interrupt callback bounds every
    blocking FFmpeg call (`open_timeout` for connect and probe, `read_timeout` per packet); the
    decode thread also watches `deadline` in case a call ignores the interrupt.
    """

    def __init__(self, source: RtspSource, serial: int) -> None:
        self.source = source
        self.packets: queue.Queue[_Opened | _Packet | _End] = queue.Queue(_PACKET_QUEUE)
        self.stop = threading.Event()
        self.reason = "connection closed"
        self.started_at = time.monotonic()
        self.last_packet_at: float | None = None
        #: monotonic time by which the current blocking FFmpeg call must have returned, else None.
        self.deadline: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"rtsp-reader-{source.name}-{serial}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        config = self.source.config
        container: av.container.InputContainer | None = None
        try:
            import av

            # PyAV restarts the open timeout for the stream probe, so opening may take twice `timeout`.
            self.deadline = time.monotonic() + 2 * config.timeout
            try:
                container = av.open(
                    self.source.config.uri,
                    "r",
                    options=self.source.av_options(),
                    timeout=(config.timeout, config.stall_timeout),
                )
            except (av.error.FFmpegError, OSError) as error:
                # An interrupted RTSP handshake surfaces as ExitError or as InvalidDataError (the
                # reply was cut short): the elapsed time tells a timeout from a real refusal.
                timed_out = time.monotonic() - self.started_at >= 0.95 * config.timeout
                cut_short = timed_out and isinstance(error, av.error.InvalidDataError)
                if isinstance(error, av.error.ExitError) or cut_short:
                    self.reason = f"connect timed out after {config.timeout:g} s (no RTSP reply)"
                else:
                    self.reason = f"cannot open stream: {_explain(error)}"
                return
            finally:
                self.deadline = None
            if not container.streams.video:
                self.reason = "the stream has no video track"
                return
            stream = container.streams.video[0]
            info, _ = stream_info(container, stream, self.source.display_uri)
            extradata = stream.codec_context.extradata
            self._offer(_Opened(info, bytes(extradata) if extradata else None), force=True)
            self._read(av, container, stream)
        except Exception as error:  # reported to the decode thread, which decides to reconnect
            self.reason = f"read failed: {type(error).__name__}: {_explain(error)}"
        finally:
            self.source.log.debug("%s: reader %s ends: %s", self.source.display_uri, self.thread.name, self.reason)
            self.deadline = None
            if container is not None:
                with contextlib.suppress(Exception):  # closing a broken session may fail; nothing to save
                    container.close()
            self._offer(_END, force=True)

    def _read(self, av: Any, container: av.container.InputContainer, stream: Any) -> None:
        stall = self.source.config.stall_timeout
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
                self.source.count_safe("packets_dropped")
                continue
            skipping = not self._offer(_Packet(bytes(packet), packet.pts, bool(packet.is_keyframe), time.time()))
            if skipping:
                self.source.count_safe("packets_dropped")

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


class _CpuDecoder:
    """PyAV (FFmpeg) software decoder; one per connection so each stream starts from a clean state."""

    def __init__(self, info: StreamInfo, extradata: bytes | None, fmt: PixelFormat) -> None:
        import av

        self._av = av
        self.ctx: Any = av.CodecContext.create(info.codec, "r")
        if extradata:
            self.ctx.extradata = extradata
        self.fmt = fmt

    def decode(self, data: bytes, pts: int | None) -> list[tuple[torch.Tensor, int | None]]:
        packet = self._av.Packet(data)
        packet.pts = pts
        return [self._convert(frame) for frame in self.ctx.decode(packet)]

    def flush(self) -> list[tuple[torch.Tensor, int | None]]:
        return [self._convert(frame) for frame in self.ctx.decode(None)]

    def _convert(self, frame: Any) -> tuple[torch.Tensor, int | None]:
        if self.fmt is PixelFormat.NV12:
            return torch.from_numpy(frame.to_ndarray(format="nv12")), frame.pts
        rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
        return rgb.permute(2, 0, 1).contiguous(), frame.pts

    def close(self) -> None:
        self.ctx = None


class _NvdecDecoder:
    """NVDEC through `PacketDecoder`; NV12 comes out on the GPU and is converted there if RGB is wanted."""

    def __init__(self, info: StreamInfo, extradata: bytes | None, fmt: PixelFormat, gpu_id: int) -> None:
        from streamflow.video.nvdec import PacketDecoder  # PyNvVideoCodec fails to import without a driver

        self.decoder: Any = PacketDecoder(info.codec, gpu_id=gpu_id)
        # RTSP carries SPS/PPS in the SDP (FFmpeg puts them in extradata, Annex B); NVDEC needs them in band.
        self.prefix = extradata if extradata and extradata[:3] in (b"\0\0\1", b"\0\0\0") else b""
        self.fmt = fmt
        self.matrix = info.color_space
        self.full_range = info.color_range == "full"

    def decode(self, data: bytes, pts: int | None) -> list[tuple[torch.Tensor, int | None]]:
        if self.prefix:
            data, self.prefix = self.prefix + data, b""
        return self._convert(self.decoder.decode(data, pts))

    def flush(self) -> list[tuple[torch.Tensor, int | None]]:
        return self._convert(self.decoder.flush())

    def _convert(self, frames: list[tuple[torch.Tensor, int | None]]) -> list[tuple[torch.Tensor, int | None]]:
        if self.fmt is PixelFormat.NV12:
            return frames
        from streamflow.ops.color import nv12_to_rgb

        return [(nv12_to_rgb(nv12, matrix=self.matrix, full_range=self.full_range), pts) for nv12, pts in frames]

    def close(self) -> None:
        self.decoder = None


class RtspSource(Source):
    """Live RTSP/RTSPS source with stall detection and reconnect; see the module docstring."""

    class Config(StageConfig):
        uri: str = Field(repr=False)  # repr shows the redacted form (see __repr_args__)
        transport: Transport = Transport.TCP
        #: Seconds allowed to connect (and for each socket operation).
        timeout: float = Field(default=5.0, gt=0)
        #: Seconds without a packet after which the connection counts as lost.
        stall_timeout: float = Field(default=5.0, gt=0)
        reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
        format: PixelFormat = PixelFormat.RGB
        source_id: str = "0"
        #: Seconds a packet may wait for the decoder; older ones are skipped up to the next keyframe
        #: (counted in `packets_dropped`), so a decoder that falls behind cannot build latency. None: never.
        max_lag: float | None = Field(default=1.0, gt=0)
        #: Extra FFmpeg demuxer options (strings), e.g. {"buffer_size": "1048576"}.
        options: dict[str, str] = Field(default_factory=dict)

        @field_validator("format")
        @classmethod
        def _image_format(cls, value: PixelFormat) -> PixelFormat:
            if value not in (PixelFormat.RGB, PixelFormat.NV12):
                raise ValueError("format must be rgb or nv12")
            return value

        def __repr_args__(self) -> Any:
            yield "uri", redact_uri(self.uri)
            yield from super().__repr_args__()

    live = True
    uses_gpu: ClassVar[bool] = True

    def __init__(self, config: StageConfig | None = None, /, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        uri = self.config.uri
        #: The uri as it may be shown anywhere (logs, errors, `StreamInfo.uri`).
        self.display_uri = redact_uri(uri)
        # Checked here rather than by pydantic, whose errors echo the raw input (and its password).
        if not uri.lower().startswith(_SCHEMES):
            raise ValueError(f"uri must start with rtsp:// or rtsps://, got {self.display_uri!r}")
        self._connection: _Connection | None = None
        self._stragglers: list[_Connection] = []
        self._serial = 0
        self._index = 0
        self._count_lock = threading.Lock()

    def count_safe(self, counter: str, amount: float = 1) -> None:
        """`count()` for counters that the reader thread and the decode thread both update."""
        with self._count_lock:
            self.count(counter, amount)

    def av_options(self) -> dict[str, str]:
        """FFmpeg options for `av.open`: transport and socket timeout (microseconds), then user extras."""
        options = {
            "rtsp_transport": self.config.transport.value,
            "timeout": str(int(self.config.timeout * 1_000_000)),
        }
        options.update(self.config.options)
        return options

    # -- the source --------------------------------------------------------------------------
    def generate(self) -> Iterator[Frame]:
        config = self.config
        backoff = config.reconnect
        delay = backoff.initial
        attempt = 0  # reconnect attempts since the stream was last healthy
        lost_at: float | None = None  # monotonic time the stream stopped delivering; None while healthy
        while not self.stopping.is_set():
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
                            self.count("reconnects")
                            self.count("downtime_s", down)
                            self.log.info("%s: stream back after %.1f s without frames", self.display_uri, down)
                        lost_at, attempt, delay = None, 0, backoff.initial
                    yield frame
            finally:
                pump.close()  # frees the decoder now, not when the generator is collected
                self._release(connection)
            if self.stopping.is_set():
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
            self.count("reconnect_attempts")
            if self.stopping.wait(delay):
                return
            delay = min(delay * 2, backoff.max)

    def _pump(self, connection: _Connection) -> Generator[Frame, None, None]:
        """Decode one connection's packets into frames until it ends or the pipeline stops."""
        decoder: _CpuDecoder | _NvdecDecoder | None = None
        info: StreamInfo | None = None
        arrivals: dict[int | None, float] = {}
        waiting_for_key = True
        decoded_any = False  # packets before the first keyframe of a connection are not drops
        decode_errors = 0
        max_lag = self.config.max_lag
        try:
            while not self.stopping.is_set():
                try:
                    item = connection.packets.get(timeout=_POLL_S)
                except queue.Empty:
                    deadline = connection.deadline
                    if deadline is not None and time.monotonic() > deadline + max(1.0, 0.5 * self.config.stall_timeout):
                        # FFmpeg ignored its interrupt: abandon the reader (it exits when the call returns).
                        connection.reason = f"no packet for {self.config.stall_timeout:g} s (watchdog)"
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
                    self.count_safe("packets_dropped")
                    continue
                if waiting_for_key:
                    # Decoding from a P-frame gives grey garbage until the next keyframe: wait for one.
                    if not item.keyframe:
                        if decoded_any:
                            self.count_safe("packets_dropped")
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
                    self.count("decode_errors")
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
                        source_id=self.config.source_id,
                        index=self._index,
                        format=self.config.format,
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
        if self.on_gpu:
            return _NvdecDecoder(info, extradata, self.config.format, self.device.index or 0)
        return _CpuDecoder(info, extradata, self.config.format)

    def _frame_info(self, info: StreamInfo, image: torch.Tensor) -> StreamInfo:
        """The stream info with the decoded size (a camera may change resolution mid-stream)."""
        if self.config.format is PixelFormat.NV12:
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
            # Still inside an FFmpeg call; its interrupt ends it within the timeout. Join it at teardown.
            self._stragglers.append(connection)
        self._stragglers = [c for c in self._stragglers if c.thread.is_alive()]

    def teardown(self) -> None:
        if self._connection is not None:
            self._release(self._connection)
        limit = max(self.config.timeout, self.config.stall_timeout) + 1.0
        for connection in self._stragglers:
            if not connection.close(wait=limit):
                self.log.warning(
                    "%s: reader thread %s did not stop within %.0f s", self.display_uri, connection.thread.name, limit
                )
        self._stragglers = []
