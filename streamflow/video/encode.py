"""Video writing: MP4/MKV with correct timestamps, NVENC where it exists, else PyAV libx264/libx265.

`VideoWriter` takes RGB `(3, H, W)` or NV12 `(H*3//2, W)` uint8 tensors (CPU or CUDA) with their pts
and writes them in arrival order. It checks the frames and keeps the output timeline; the encoding is
done by one backend of `streamflow.video.encoders` (interface in `base`, the choice in `select`),
chosen once, at the first frame:

- `nvenc`: PyNvVideoCodec encodes the CUDA tensor directly; PyAV muxes the Annex B bitstream.
  NVENC is detected by `nvenc_probe()`, which opens a real encode session (NVML reports an encoder
  on H100/H200, which have none) and caches the answer per GPU.
- `cpu`: libx264/libx265 through PyAV (`streamflow.video.pyav_encoder`), fed from pinned host
  memory (GPU frames are copied on the caller's current CUDA stream). Three ways to run it:
  - `cpu_encoder: thread`, `encoders: 1` (the default): one encoder in the calling thread, as a
    hand-written loop would;
  - `encoders: N > 1`: the video is cut into closed segments of `segment_seconds` encoded by N
    parallel libx264 encoders and muxed in order (`streamflow.video.segmented`): one encoder
    leaves most of a many-core machine idle;
  - `cpu_encoder: process`: the encoder in a child process with its own GIL, fed through pinned
    shared memory (GPU frames are copied straight into it); one child finalizes the file itself,
    even if this process dies;
  - `cpu_encoder: process`, `encoders: N > 1`: N children encode the segments in turn, and this
    process muxes them (`ProcessSegmentedEncoder`). The fastest on a many-core machine: no
    encoder shares the pipeline's GIL (docs/MEASURED.md, "Encode").

`write_batch` stages several frames and waits for the GPU once for all of them; `write` is one
frame. With the child process a frame is handed over when `write`/`write_batch` returns and
encoded soon after; `close()` waits until the file is complete.

The container is finalized on `close()`, also when writing failed, so the file stays playable.

Example:
    >>> import tempfile, pathlib, torch
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.mp4"
    >>> with VideoWriter(path, fps=30, backend="cpu") as writer:
    ...     for i in range(3):
    ...         writer.write(torch.full((3, 48, 64), 40 * i, dtype=torch.uint8), pts=i, time_base=Fraction(1, 30))
    >>> writer.frames
    3
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import torch

from streamflow.frame import PixelFormat
from streamflow.video.annexb import AnnexBMuxer
from streamflow.video.encoders.base import CpuEncoderMode, EncodeBackend, EncodeError, FrameEncoder, VideoCodec
from streamflow.video.encoders.nvenc import NvencProbe, nvenc_probe
from streamflow.video.encoders.select import (
    choose_backend,
    encoder_pix_fmt,
    open_cpu_encoder,
    open_nvenc_encoder,
)
from streamflow.video.pyav_encoder import EncoderProcessError, EncoderSettings

__all__ = [
    "AnnexBMuxer",
    "CpuEncoderMode",
    "EncodeBackend",
    "EncodeError",
    "NvencProbe",
    "VideoCodec",
    "VideoWriter",
    "nvenc_probe",
]

log = logging.getLogger(__name__)


def _container_format(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".mp4", ".m4v", ".mov"):
        return "mp4"
    if suffix == ".mkv":
        return "matroska"
    return None


class VideoWriter:
    """Write frames to an MP4/MKV file; see the module docstring.

    - `fps`: nominal frame rate (written as the stream's rate; used for frames without pts).
    - `crf` (CPU) or `bitrate` (bits/s; both backends): quality; default CRF 23 / NVENC's default.
    - `preset`: encoder preset (libx264 names like `veryfast`; NVENC `P1`..`P7`).
    - `backend`: `auto`, `nvenc` or `cpu`. `gpu_id`: GPU for NVENC and the probe.
    - `cpu_encoder`: `thread` (default) or `process`; `encoders`, `segment_seconds`: parallel
      segment encoding (in threads, or in child processes with `process`); `slots`: frames that
      may wait in each child's shared-memory ring. See the module docstring.

    Frames are written in arrival order. A frame whose pts is missing or not after the previous
    one gets the previous pts plus one frame duration, so the output's timeline never goes back.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fps: float | Fraction | None = None,
        codec: VideoCodec | str = VideoCodec.H264,
        crf: int | None = None,
        bitrate: int | None = None,
        preset: str | None = None,
        backend: EncodeBackend | str = EncodeBackend.AUTO,
        gpu_id: int | None = None,
        cpu_encoder: CpuEncoderMode | str = CpuEncoderMode.THREAD,
        encoders: int = 1,
        segment_seconds: float = 2.0,
        slots: int = 8,
    ) -> None:
        self.path = Path(path)
        self.codec = VideoCodec(codec)
        self.fps = Fraction(fps).limit_denominator(1001000) if fps else None
        self.crf = crf
        self.bitrate = bitrate
        self.preset = preset
        self.requested = EncodeBackend(backend)
        self.gpu_id = gpu_id
        self.backend: EncodeBackend | None = None
        self.frames = 0
        #: The open backend (`streamflow.video.encoders`), from the first frame on.
        self.encoder: FrameEncoder | None = None
        self._time_base: Fraction | None = None
        self._first_pts: int | None = None
        self._last_pts: int | None = None
        self._ticks = 1
        self._size: tuple[int, int] | None = None
        self.cpu_encoder = CpuEncoderMode(cpu_encoder)
        self.encoders = encoders
        self.segment_seconds = segment_seconds
        self.slots = slots
        self._closed = False
        if encoders < 1 or segment_seconds <= 0:
            raise EncodeError(f"cannot write {str(self.path)!r}: encoders must be >= 1 and segment_seconds > 0")
        if _container_format(self.path) is None:
            raise EncodeError(f"cannot write {str(self.path)!r}: unsupported container (use .mp4 or .mkv)")
        if not self.path.parent.exists():
            raise EncodeError(f"cannot write {str(self.path)!r}: directory {str(self.path.parent)!r} does not exist")

    # -- public API -------------------------------------------------------------------------------
    def write(
        self,
        image: torch.Tensor,
        fmt: PixelFormat | str = PixelFormat.RGB,
        *,
        pts: int | None = None,
        time_base: Fraction | None = None,
    ) -> None:
        """Encode one frame: RGB `(3, H, W)` or NV12 `(H*3//2, W)` uint8, on CPU or CUDA."""
        self.write_batch([(image, fmt, pts, time_base)])

    def write_batch(
        self, frames: Sequence[tuple[torch.Tensor, PixelFormat | str, int | None, Fraction | None]]
    ) -> None:
        """Encode `(image, fmt, pts, time_base)` frames in order; GPU frames cost one host wait in all."""
        try:
            for index, (image, fmt, pts, time_base) in enumerate(frames):
                self._write_one(image, PixelFormat(fmt), pts, time_base, index)
            if self.encoder is not None:
                self.encoder.flush()
        except EncodeError:
            raise
        except EncoderProcessError as error:
            raise EncodeError(f"cannot write {str(self.path)!r}: {error}") from None
        except Exception as error:
            raise EncodeError(f"cannot write {str(self.path)!r}: {error}") from error

    def close(self) -> None:
        """Flush the encoder and finalize the container. Idempotent; finalizes also after errors."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.encoder is not None:
                self.encoder.close()
        except EncoderProcessError as error:
            raise EncodeError(f"cannot finish {str(self.path)!r}: {error}") from None
        except Exception as error:
            raise EncodeError(f"cannot finish {str(self.path)!r}: {error}") from error

    @property
    def encoder_blocked_s(self) -> float | None:
        """Seconds `write` waited for a busy encoder (segment encoders, child processes; None otherwise)."""
        return self.encoder.blocked_s if self.encoder is not None else None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one frame --------------------------------------------------------------------------------
    def _write_one(
        self, image: torch.Tensor, fmt: PixelFormat, pts: int | None, time_base: Fraction | None, index: int
    ) -> None:
        if self._closed:
            raise EncodeError(f"cannot write {str(self.path)!r}: writer is closed")
        width, height = _frame_size(image, fmt)
        if self._size is None:
            self.encoder = self._open(width, height, image, fmt, time_base)
        elif (width, height) != self._size:
            raise EncodeError(
                f"cannot write {str(self.path)!r}: frame size changed from {self._size[0]}x{self._size[1]} "
                f"to {width}x{height} mid-stream"
            )
        assert self.encoder is not None
        self.encoder.write(image, fmt, self._next_pts(pts, time_base), index)
        self.frames += 1

    # -- opening ----------------------------------------------------------------------------------
    def _open(
        self, width: int, height: int, first: torch.Tensor, fmt: PixelFormat, time_base: Fraction | None
    ) -> FrameEncoder:
        import av

        if width % 2 or height % 2:
            raise EncodeError(f"cannot write {str(self.path)!r}: {width}x{height} has an odd dimension (4:2:0 output)")
        self._size = (width, height)
        rate = self.fps or (Fraction(1) / time_base if time_base and time_base >= Fraction(1, 240) else Fraction(30))
        self.fps = rate
        self._time_base = time_base or 1 / rate
        self._ticks = max(1, round(1 / (rate * self._time_base)))
        self.backend, self.gpu_id = choose_backend(self.requested, first.device, self.gpu_id, self.codec, self.path)
        container_format = _container_format(self.path)
        assert container_format is not None  # checked in __init__
        nv12_slots = first.is_cuda and self.cpu_encoder is CpuEncoderMode.PROCESS
        settings = EncoderSettings(
            str(self.path),
            container_format,
            width,
            height,
            rate,
            self._time_base,
            codec=self.codec.value,
            crf=self.crf,
            bitrate=self.bitrate,
            preset=self.preset,
            pix_fmt=encoder_pix_fmt(self.codec, fmt, nv12_slots),
        )
        try:
            if self.backend is EncodeBackend.NVENC:
                assert self.gpu_id is not None  # choose_backend names the GPU it probed
                return open_nvenc_encoder(settings, gpu_id=self.gpu_id, ticks=self._ticks)
            return open_cpu_encoder(
                settings,
                first=first,
                fmt=fmt,
                mode=self.cpu_encoder,
                encoders=self.encoders,
                segment_frames=max(1, round(self.segment_seconds * float(rate))),
                slots=self.slots,
            )
        except EncoderProcessError as error:
            raise EncodeError(f"cannot write {str(self.path)!r}: {error}") from None
        except (av.error.FFmpegError, OSError) as error:
            raise EncodeError(
                f"cannot write {str(self.path)!r}: {getattr(error, 'strerror', None) or error}"
            ) from error

    # -- timestamps -------------------------------------------------------------------------------
    def _next_pts(self, pts: int | None, time_base: Fraction | None) -> int:
        assert self._time_base is not None
        if pts is not None and time_base is not None and time_base != self._time_base:
            pts = round(pts * time_base / self._time_base)
        if pts is not None and self._first_pts is None:
            self._first_pts = pts
        if pts is None or self._last_pts is None:
            out = 0 if self._last_pts is None else self._last_pts + self._ticks
        else:
            out = pts - (self._first_pts or 0)
            if out <= self._last_pts:
                out = self._last_pts + self._ticks
        self._last_pts = out
        return out


def _frame_size(image: torch.Tensor, fmt: PixelFormat) -> tuple[int, int]:
    if image.dtype != torch.uint8:
        raise EncodeError(f"frames to encode must be uint8, got {image.dtype}")
    if fmt is PixelFormat.RGB:
        if image.dim() != 3 or image.shape[0] != 3:
            raise EncodeError(f"RGB frames to encode must be (3, H, W), got {tuple(image.shape)}")
        return int(image.shape[2]), int(image.shape[1])
    if fmt is PixelFormat.NV12:
        if image.dim() != 2 or image.shape[0] % 3:
            raise EncodeError(f"NV12 frames to encode must be (H*3//2, W), got {tuple(image.shape)}")
        return int(image.shape[1]), int(image.shape[0] * 2 // 3)
    raise EncodeError(f"cannot encode {fmt.value} frames: use rgb or nv12")
