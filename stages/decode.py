"""`decode`: a source that decodes a video file or stream into frames (NVDEC on a GPU, PyAV on CPU).

On a CUDA device, H.264/HEVC/VP9 8-bit 4:2:0 inputs decode on NVDEC: local files through
PyNvVideoCodec's batch decoder (decoder-side RGB, one copy per batch), network and raw Annex B
streams through PyAV demux + `PacketDecoder`. Anything NVDEC can't decode falls back to PyAV with
one warning line naming the reason (or fails if `backend: nvdec` was asked for). On CPU, PyAV.

Frames carry pts and time base, index, `source_id` and a `StreamInfo`. With `emit_batch > 1` the
stage emits `Batch`es of up to that many frames (fewer Python hand-offs per frame). Packets the
decoder rejects are counted in the `bad_packets` counter; an input that can't be opened or yields
no frame at all stops the pipeline with one line naming the file and the problem. Uris are shown
(logs, errors, `StreamInfo.uri`) with their password masked. `rtsp://` cameras are rejected when
the stage is built: they need the live `rtsp` source, which reconnects.

Example (YAML):
    - name: cam1
      type: decode
      uri: input.mp4
      format: rgb        # or nv12
      backend: auto      # auto | nvdec | cpu
      emit_batch: 8
      loop: true         # replay, for benchmarks
      realtime: true     # pace at the file's frame rate: N paced files emulate N cameras
      max_frames: 3000
      start_frame: 120   # skip frames 0..119; the rest keep their index (resume after a failover)

Example (Python):
    >>> import tempfile, pathlib
    >>> from streamflow.testing import ListSink
    >>> from streamflow import Pipeline
    >>> from streamflow.video.synth import write_clip
    >>> clip = write_clip(pathlib.Path(tempfile.mkdtemp()) / "x.mp4", width=64, height=48, frames=4)
    >>> sink = ListSink()
    >>> _ = Pipeline([Decode(uri=str(clip), name="cam"), sink], device="cpu").run_sync()
    >>> [(f.source_id, f.index, tuple(f.image.shape)) for f in sink.frames][:2]
    [('cam', 0, (3, 48, 64)), ('cam', 1, (3, 48, 64))]
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from streamflow.frame import Batch, Frame, Item, PixelFormat
from streamflow.stage import Source, StageConfig
from streamflow.uri import redact_uri
from streamflow.video.probe import Probe, VideoInputError, is_url, probe
from streamflow.video.pyav_decode import PyAVDecoder

__all__ = ["Decode", "DecodeBackend", "DecodeFormat"]

log = logging.getLogger(__name__)

# Frames per NVDEC batch call when frames are emitted one by one: enough to amortise the Python
# round trip, small enough to keep latency and pool memory low.
_NVDEC_BATCH = 8
# Containers whose index gives PyNvVideoCodec's batch decoders a frame count (they need one).
_INDEXED_CONTAINERS = ("mov", "mp4", "matroska", "webm")
# Live cameras: a file-style decoder would end the pipeline at the first network hiccup.
_LIVE_SCHEMES = ("rtsp://", "rtsps://")


class DecodeBackend(enum.StrEnum):
    """Which decoder to use."""

    AUTO = "auto"  # NVDEC on a CUDA device when it supports the stream, else PyAV (one warning)
    NVDEC = "nvdec"  # NVDEC or a clear error
    CPU = "cpu"  # PyAV on the CPU (frames moved to the stage's device)


class DecodeFormat(enum.StrEnum):
    """Layout of the decoded frames."""

    NV12 = "nv12"  # as decoded: uint8 (H*3//2, W)
    RGB = "rgb"  # uint8 (3, H, W), converted with the stream's matrix and range


class _Path(enum.Enum):
    CPU = "pyav"
    NVDEC_FILE = "nvdec-batch"
    NVDEC_PACKETS = "nvdec-packets"


class Decode(Source):
    """Decode `uri` into frames; see the module docstring for the options and behaviour."""

    class Config(StageConfig):
        uri: str = Field(min_length=1, repr=False)  # repr shows the redacted form (see __repr_args__)
        backend: DecodeBackend = DecodeBackend.AUTO
        format: DecodeFormat = DecodeFormat.RGB
        loop: bool = False
        max_frames: int | None = Field(default=None, ge=1)
        start: float | None = Field(default=None, ge=0, description="seconds")
        # Resuming a source elsewhere (cluster failover) needs exact frame numbers: frames before
        # `start_frame` are decoded and skipped, and the rest keep their index in the file (a seek
        # by time would be approximate for variable frame rates and would renumber from 0).
        start_frame: int | None = Field(default=None, ge=0, description="first frame index to emit")
        end: float | None = Field(default=None, gt=0, description="seconds")
        emit_batch: int = Field(default=1, ge=1, description="frames per emitted Batch; 1 emits Frames")
        emit_wait_ms: float = Field(
            default=100.0,
            ge=0,
            description="paced: the longest a frame waits for later ones to fill its batch (0: what is due at once)",
        )
        source_id: str | None = Field(default=None, description="default: the stage name")
        realtime: bool = Field(
            default=False, description="pace frames at the file's frame rate, like a camera (live: drops when behind)"
        )

        @field_validator("uri")
        @classmethod
        def _local_file_exists(cls, uri: str) -> str:
            # A missing local file is a config error (exit 2, naming the field), found before anything
            # starts; network uris (scheme://) can only be checked by opening them, at setup.
            if "://" not in uri and not Path(uri).exists():
                raise ValueError(f"file not found: {uri!r} (relative paths are from {Path.cwd()})")
            return uri

        @model_validator(mode="after")
        def _check_times(self) -> Decode.Config:
            if self.start is not None and self.end is not None and self.end <= self.start:
                raise ValueError(f"end ({self.end}) must be after start ({self.start})")
            return self

        def __repr_args__(self) -> Any:
            yield "uri", redact_uri(self.uri)
            yield from super().__repr_args__()

    uses_gpu: ClassVar[bool] = True
    input_path_fields: ClassVar[tuple[str, ...]] = ("uri",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The uri as it may be shown anywhere (logs, errors, `StreamInfo.uri`): password masked.
        self.display_uri = redact_uri(self.config.uri)
        # Checked here rather than by pydantic, whose errors echo the raw input (and its password).
        if self.config.uri.lower().startswith(_LIVE_SCHEMES):
            raise ValueError(
                f"decode cannot read the live stream {self.display_uri!r}: use `type: rtsp` "
                "(a live source with reconnects)"
            )
        self.probe: Probe | None = None
        self._decoded = 0  # frames decoded in this run, emitted or skipped (`start_frame`)
        self.path: _Path = _Path.CPU
        self._packets_read: int | None = None  # by the last CPU pass, to explain lost frames
        # A paced file stands in for a camera: the runner treats it as live (drop_oldest after it).
        self.live = self.config.realtime

    @property
    def source_id(self) -> str:
        return self.config.source_id or self.name

    # -- setup: probe and choose the decoder ------------------------------------------------------
    def setup(self) -> None:
        config = self.config
        if config.backend is DecodeBackend.NVDEC and not self.on_gpu:
            raise VideoInputError(
                f"cannot decode {self.display_uri!r} with backend nvdec: stage device is {self.device}"
            )
        self.probe = probe(config.uri, display_uri=self.display_uri)
        self.path = self._choose_path(self.probe)
        log.debug("%s: decoding %s via %s", self.name, self.display_uri, self.path.value)

    def _choose_path(self, found: Probe) -> _Path:
        config = self.config
        if config.backend is DecodeBackend.CPU or not self.on_gpu:
            return _Path.CPU
        from streamflow.video.nvdec import NvdecError, nvdec_unsupported_reason

        try:
            reason = nvdec_unsupported_reason(found)
        except NvdecError as error:
            reason = str(error)
        if reason is not None:
            if config.backend is DecodeBackend.NVDEC:
                raise VideoInputError(f"cannot decode {self.display_uri!r} with NVDEC: {reason}")
            log.warning("%s: %s: %s; decoding with PyAV on the CPU", self.name, self.display_uri, reason)
            return _Path.CPU
        indexed = any(name in found.container for name in _INDEXED_CONTAINERS)
        if not is_url(config.uri) and indexed and found.info.frame_count:
            return _Path.NVDEC_FILE
        return _Path.NVDEC_PACKETS

    # -- generate ---------------------------------------------------------------------------------
    def generate(self) -> Iterator[Item]:
        group: list[Frame] = []
        size = self.config.emit_batch
        self._decoded = 0
        hold_s = self.config.emit_wait_ms / 1000
        group_began = 0.0
        for frame in self._frames():
            if isinstance(frame, float):
                # A paced source is about to wait until `frame` (monotonic) for its next frame: hand on what
                # it has if that wait would hold the group's first frame longer than emit_wait_ms.
                if group and frame - group_began > hold_s:
                    yield Batch(group)
                    group = []
                continue
            if size == 1:
                yield frame
                continue
            if not group:
                group_began = time.monotonic()
            group.append(frame)
            if len(group) >= size:
                yield Batch(group)
                group = []
        if group:
            yield Batch(group)
        if self._decoded == 0 and not self.stopping.is_set():
            bad = int(self.counters.get("bad_packets", 0))
            raise VideoInputError(f"cannot read video {self.display_uri!r}: no decodable frame ({bad} bad packets)")

    def frame_shortfall(self, delivered: int) -> str | None:
        """Frames the container states minus what came out, with the likely reason (see `Source`)."""
        config = self.config
        stated = self.probe.info.frame_count if self.probe is not None else None
        if stated is None or config.loop or config.start is not None or config.end is not None:
            return None  # nothing stated, or only part of the input asked for
        expected = stated if config.max_frames is None else min(stated, config.max_frames)
        # A count estimated from the duration (MKV, TS) can be one off by rounding.
        allowed = 0 if self.probe is not None and self.probe.frame_count_exact else 1
        if delivered >= expected - allowed:
            return None
        reasons = []
        bad = int(self.counters.get("bad_packets", 0))
        if bad:
            reasons.append(f"{bad} bad packets")
        if self._packets_read is not None and self._packets_read < expected:
            reasons.append(f"demuxing ended after {self._packets_read} packets: file truncated or damaged")
        why = ", ".join(reasons) or "the decoder returned fewer frames than packets"
        kind = "states" if allowed == 0 else "implies (from its duration)"
        return (
            f"source {self.display_uri!r} (stage {self.name!r}): the container {kind} {expected} frames, "
            f"{delivered} delivered, {expected - delivered} lost ({why})"
        )

    def _frames(self) -> Iterator[Frame | float]:
        """Every frame; a paced source also yields, before it waits, when its next frame is due (monotonic).

        So that `emit_batch` does not hold a camera's frames back without bound: a batch of 8 filled at 30
        fps would delay its first frame by 233 ms (`emit_wait_ms` caps that).
        """
        frames = self._all_passes()
        if not self.config.realtime:
            yield from frames
            return
        # Paced by presentation time from the first frame on; a late frame goes at once (no catch-up burst
        # beyond what the decoder fell behind). The arrival time is what a camera frame would carry.
        started: float | None = None
        first_time = 0.0
        for frame in frames:
            if frame.time is not None:
                if started is None:
                    started, first_time = time.monotonic(), frame.time
                due = started + (frame.time - first_time)
                if due > time.monotonic():
                    yield due
                    if self.stopping.wait(max(0.0, due - time.monotonic())):
                        return
            frame.arrival_time = time.time()
            yield frame

    def _all_passes(self) -> Iterator[Frame]:
        """All frames over every loop pass, with pts and index continuing across passes."""
        config = self.config
        assert self.probe is not None, "setup() runs before generate()"
        info = self.probe.info
        ticks = max(1, round(1 / ((info.fps or Fraction(30)) * info.time_base)))
        index = 0
        pts_offset = 0
        skip = config.start_frame or 0
        while True:
            first_pts: int | None = None
            last_pts: int | None = None
            for frame in self._one_pass(None if config.max_frames is None else config.max_frames - index):
                if first_pts is None:
                    first_pts = frame.pts
                last_pts = frame.pts
                if frame.pts is not None:
                    frame.pts += pts_offset
                frame.index = index
                frame.source_id = self.source_id
                index += 1
                self._decoded += 1
                if index > skip:
                    yield frame
                if config.max_frames is not None and index >= config.max_frames:
                    return
                if self.stopping.is_set():
                    return
            if not config.loop or last_pts is None or self.stopping.is_set():
                return
            # The replay continues the timeline one frame after the last frame shown.
            pts_offset += last_pts - (first_pts or 0) + ticks
            self.count("loops")

    def _one_pass(self, limit: int | None) -> Iterator[Frame]:
        if self.path is _Path.NVDEC_FILE:
            yield from self._nvdec_file_pass(limit)
        elif self.path is _Path.NVDEC_PACKETS:
            yield from self._nvdec_packet_pass()
        else:
            yield from self._cpu_pass()

    def _cpu_pass(self) -> Iterator[Frame]:
        config = self.config
        decoder = PyAVDecoder(
            config.uri,
            output=PixelFormat(config.format.value),
            start=config.start,
            end=config.end,
            source_id=self.source_id,
            display_uri=self.display_uri,
            should_stop=self.stopping.is_set,
        )
        reported: dict[str, int] = {}
        for frame in decoder:
            self._sync_counters(decoder.stats, reported)
            if self.on_gpu:
                frame.image = frame.image.to(self.device, non_blocking=True)
            yield frame
        self._sync_counters(decoder.stats, reported)
        self._packets_read = decoder.stats["packets"]

    def _nvdec_file_pass(self, limit: int | None) -> Iterator[Frame]:
        from streamflow.video.nvdec import NvdecFileDecoder

        config = self.config
        assert self.probe is not None
        info = self.probe.info
        start_frame = round(config.start * float(info.fps)) if config.start and info.fps else 0
        decoder = NvdecFileDecoder(
            config.uri,
            self.probe,
            output=PixelFormat(config.format.value),
            batch_size=max(config.emit_batch, _NVDEC_BATCH),
            gpu_id=self.device.index or 0,
            start_frame=start_frame,
            source_id=self.source_id,
        )
        for batch in decoder.batches(max_frames=limit):
            for frame in batch:
                if config.end is not None and frame.time is not None and frame.time >= config.end - 1e-9:
                    return
                yield frame
            if self.stopping.is_set():
                return

    def _nvdec_packet_pass(self) -> Iterator[Frame]:
        from streamflow.video.nvdec import packet_decode_frames

        config = self.config
        assert self.probe is not None
        stats: dict[str, int] = {"bad_packets": 0}
        reported: dict[str, int] = {}
        for frame in packet_decode_frames(
            config.uri,
            self.probe,
            gpu_id=self.device.index or 0,
            output=PixelFormat(config.format.value),
            source_id=self.source_id,
            stats=stats,
            should_stop=self.stopping.is_set,
        ):
            self._sync_counters(stats, reported)
            if config.start is not None and frame.time is not None and frame.time < config.start - 1e-9:
                continue
            if config.end is not None and frame.time is not None and frame.time >= config.end - 1e-9:
                return
            yield frame
        self._sync_counters(stats, reported)

    def _sync_counters(self, stats: dict[str, int], reported: dict[str, int]) -> None:
        """Publish what the decoder counted since the last call as stage counters."""
        for name in ("bad_packets", "resolution_changes"):
            value = stats.get(name, 0)
            if value > reported.get(name, 0):
                self.count(name, value - reported.get(name, 0))
                reported[name] = value
