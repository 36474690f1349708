"""`rtsp`: a live camera source (RTSP / RTSPS) that survives the network.

A thin stage over `streamflow.video.rtsp.RtspReader`, which owns the connection (a reader thread
per connection, reconnects) and the decoder: PyAV on the CPU, or NVDEC when the stage runs on a GPU.
Each frame carries `arrival_time`, the wall-clock time its packet arrived, so the run stats report
capture-to-sink latency.

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

from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import Field, field_validator

from streamflow.frame import Frame, PixelFormat
from streamflow.stage import Source, StageConfig
from streamflow.uri import redact_uri
from streamflow.video.rtsp import ReconnectConfig, RtspConnectionError, RtspReader, Transport, av_options, validate_uri

__all__ = ["ReconnectConfig", "RtspConnectionError", "RtspSource", "Transport"]


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
        #: The uri as it may be shown anywhere (logs, errors, `StreamInfo.uri`).
        self.display_uri = validate_uri(self.config.uri)
        self._reader: RtspReader | None = None

    def _make_reader(self) -> RtspReader:
        config = self.config
        return RtspReader(
            config.uri,
            transport=config.transport,
            timeout=config.timeout,
            stall_timeout=config.stall_timeout,
            reconnect=config.reconnect,
            max_lag=config.max_lag,
            options=config.options,
            output=config.format,
            source_id=config.source_id,
            gpu_id=(self.device.index or 0) if self.on_gpu else None,
            should_stop=self.stopping.is_set,
            count=self.count,
            log=self.log,
            name=self.name,
        )

    def av_options(self) -> dict[str, str]:
        """FFmpeg options for `av.open`: transport and socket timeout (microseconds), then user extras."""
        return av_options(self.config.transport, self.config.timeout, self.config.options)

    def generate(self) -> Iterator[Frame]:
        self._reader = self._make_reader()
        yield from self._reader.frames()

    def teardown(self) -> None:
        if self._reader is not None:
            self._reader.close()
