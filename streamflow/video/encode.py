"""Video writing: MP4/MKV with correct timestamps, NVENC where it exists, else PyAV libx264/libx265.

`VideoWriter` takes RGB `(3, H, W)` or NV12 `(H*3//2, W)` uint8 tensors (CPU or CUDA) with their pts
and writes them in arrival order. The backend is chosen once:

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

import enum
import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from streamflow.frame import PixelFormat
from streamflow.ops.color import nv12_to_rgb, rgb_to_nv12
from streamflow.video.annexb import AnnexBMuxer
from streamflow.video.pyav_encoder import (
    CPU_ENCODERS,
    EncoderProcess,
    EncoderProcessError,
    EncoderSettings,
    PyAVEncoder,
    open_output_container,
)
from streamflow.video.segmented import ProcessSegmentedEncoder, SegmentedEncoder

if TYPE_CHECKING:
    import av.container
    import av.video.stream

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


class VideoCodec(enum.StrEnum):
    """Output video codec."""

    H264 = "h264"
    HEVC = "hevc"


class EncodeBackend(enum.StrEnum):
    """Which encoder writes the bitstream."""

    AUTO = "auto"  # NVENC when a session opens on this GPU, else CPU (with one warning)
    NVENC = "nvenc"  # NVENC or an error
    CPU = "cpu"  # PyAV libx264/libx265


class CpuEncoderMode(enum.StrEnum):
    """Where the CPU encoder (libx264/libx265) runs."""

    THREAD = "thread"  # the calling thread (and, with encoders > 1, segment worker threads), in this process
    PROCESS = "process"  # a child process with its own GIL (see streamflow.video.pyav_encoder)


class EncodeError(RuntimeError):
    """The output cannot be written. The message is one line naming the file and the problem."""


@dataclass(frozen=True, slots=True)
class NvencProbe:
    """Result of trying to open an NVENC session."""

    available: bool
    reason: str  # why not, or the encoder that opened


_probe_lock = threading.Lock()


@functools.cache
def _probe_cached(gpu_id: int, codec: str) -> NvencProbe:
    if not torch.cuda.is_available():
        return NvencProbe(False, "no CUDA device")
    result: list[NvencProbe] = []
    # A refused session (H100) leaves PyNvVideoCodec's CUDA context current in the calling thread
    # (seen there: later torch calls in that thread fail with "invalid resource handle"). Context
    # stacks are per thread, so the probe runs in a thread of its own that ends with it.
    worker = threading.Thread(target=lambda: result.append(_open_session(gpu_id, codec)), name="nvenc-probe")
    worker.start()
    worker.join()
    return result[0] if result else NvencProbe(False, "the NVENC probe thread failed")


def _open_session(gpu_id: int, codec: str) -> NvencProbe:
    from streamflow.video.nvdec import NvdecError, import_nvc

    try:
        nvc = import_nvc()
    except NvdecError as error:
        return NvencProbe(False, str(error))
    try:
        with torch.cuda.device(gpu_id):
            encoder = nvc.CreateEncoder(256, 256, "NV12", False, codec=codec, gpu_id=gpu_id)
            del encoder
    except Exception as error:  # a refused session (error 2 on H100) is the answer, not a failure
        return NvencProbe(False, f"opening an NVENC session failed: {_one_line(error)}")
    return NvencProbe(True, f"NVENC {codec} session opened on GPU {gpu_id}")


def _one_line(error: BaseException) -> str:
    """PyNvVideoCodec's multi-line messages ("PyNvEncoderCaps :\nError code : 2\n...\nat file:line") in one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith("at ")]
    text = " ".join(line for line in lines if not line.endswith(":")) or type(error).__name__
    return text[:240]


def nvenc_probe(gpu_id: int = 0, codec: str = "h264") -> NvencProbe:
    """Whether NVENC can encode `codec` on `gpu_id`, by opening (and closing) a real session. Cached.

    Example:
        >>> nvenc_probe().available if not torch.cuda.is_available() else False
        False
    """
    with _probe_lock:
        return _probe_cached(gpu_id, codec)


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
        self._container: av.container.OutputContainer | None = None
        self._time_base: Fraction | None = None
        self._first_pts: int | None = None
        self._last_pts: int | None = None
        self._ticks = 1
        self._size: tuple[int, int] | None = None
        self.cpu_encoder = CpuEncoderMode(cpu_encoder)
        self.encoders = encoders
        self.segment_seconds = segment_seconds
        self.slots = slots
        if encoders < 1 or segment_seconds <= 0:
            raise EncodeError(f"cannot write {str(self.path)!r}: encoders must be >= 1 and segment_seconds > 0")
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}
        self._host_frames: list[tuple[np.ndarray, str, int]] = []  # copied (or copying) to host, not yet encoded
        # GPU-to-host copies queued on the current stream since the last wait (`_wait_for_copies`).
        self._copies_pending = False
        self._encoder: PyAVEncoder | SegmentedEncoder | None = None
        self._process: EncoderProcess | ProcessSegmentedEncoder | None = None
        self._host_slots: list[torch.Tensor] | None = None  # each child's ring of slots, page-locked
        self._registered: list[int] = []  # addresses registered with cudaHostRegister
        self._staged: list[tuple[int, int]] = []  # (slot, pts) filled, not yet handed to the child
        self._nvenc: Any = None
        self._annexb: AnnexBMuxer | None = None
        self._closed = False
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
            self._encode_on_host()
            self._commit()
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
            if self._process is not None:
                try:
                    self._commit()
                finally:
                    self._unregister_slots()
                    self._process.close()
            elif self._encoder is not None:
                self._encoder.close()
            elif self._container is not None:
                try:
                    if self._nvenc is not None and self._annexb is not None:
                        self._annexb.mux(bytes(self._nvenc.EndEncode()), None, None, self._ticks)
                finally:
                    self._container.close()
        except EncoderProcessError as error:
            raise EncodeError(f"cannot finish {str(self.path)!r}: {error}") from None
        except Exception as error:
            raise EncodeError(f"cannot finish {str(self.path)!r}: {error}") from error
        finally:
            self._container = None

    @property
    def encoder_blocked_s(self) -> float | None:
        """Seconds `write` waited for a busy encoder (segment encoders, child processes; None otherwise)."""
        if isinstance(self._encoder, SegmentedEncoder):
            return self._encoder.blocked_s
        return self._process.blocked_s if self._process is not None else None

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
            self._open(width, height, image, fmt, time_base)
        elif (width, height) != self._size:
            raise EncodeError(
                f"cannot write {str(self.path)!r}: frame size changed from {self._size[0]}x{self._size[1]} "
                f"to {width}x{height} mid-stream"
            )
        out_pts = self._next_pts(pts, time_base)
        if self.backend is EncodeBackend.NVENC:
            self._write_nvenc(image, fmt, out_pts)
        elif self._process is not None:
            self._stage_for_process(image, fmt, out_pts)
        else:
            self._stage_on_host(image, fmt, out_pts, index)
        self.frames += 1

    # -- opening ----------------------------------------------------------------------------------
    def _open(self, width: int, height: int, first: torch.Tensor, fmt: PixelFormat, time_base: Fraction | None) -> None:
        import av

        if width % 2 or height % 2:
            raise EncodeError(f"cannot write {str(self.path)!r}: {width}x{height} has an odd dimension (4:2:0 output)")
        self._size = (width, height)
        rate = self.fps or (Fraction(1) / time_base if time_base and time_base >= Fraction(1, 240) else Fraction(30))
        self.fps = rate
        self._time_base = time_base or 1 / rate
        self._ticks = max(1, round(1 / (rate * self._time_base)))
        self.backend = self._choose_backend(first.device)
        container_format = _container_format(self.path)
        assert container_format is not None  # checked in __init__
        if self.backend is EncodeBackend.CPU:
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
                pix_fmt=_encoder_pix_fmt(self.codec, fmt, first.is_cuda and self.cpu_encoder is CpuEncoderMode.PROCESS),
            )
            try:
                segment = max(1, round(self.segment_seconds * float(rate)))
                # GPU frames travel to a child as NV12 (converted on the GPU: half the bytes of RGB);
                # CPU frames in the format they come in.
                slot_format = "nv12" if first.is_cuda or fmt is PixelFormat.NV12 else "rgb24"
                if self.cpu_encoder is CpuEncoderMode.PROCESS and self.encoders > 1:
                    self._process = ProcessSegmentedEncoder(
                        settings, fmt=slot_format, workers=self.encoders, segment_frames=segment, slots=self.slots
                    )
                elif self.cpu_encoder is CpuEncoderMode.PROCESS:
                    self._process = EncoderProcess(settings, fmt=slot_format, slots=self.slots)
                elif self.encoders > 1:
                    self._encoder = SegmentedEncoder(settings, workers=self.encoders, segment_frames=segment)
                else:
                    self._encoder = PyAVEncoder(settings)
            except EncoderProcessError as error:
                raise EncodeError(f"cannot write {str(self.path)!r}: {error}") from None
            except (av.error.FFmpegError, OSError) as error:
                raise EncodeError(
                    f"cannot write {str(self.path)!r}: {getattr(error, 'strerror', None) or error}"
                ) from error
            return
        try:
            self._container = open_output_container(str(self.path), container_format)
        except (av.error.FFmpegError, OSError) as error:
            raise EncodeError(
                f"cannot write {str(self.path)!r}: {getattr(error, 'strerror', None) or error}"
            ) from error
        self._open_nvenc(width, height)

    def _choose_backend(self, device: torch.device) -> EncodeBackend:
        if self.requested is EncodeBackend.CPU:
            return EncodeBackend.CPU
        gpu = self.gpu_id if self.gpu_id is not None else (device.index or 0 if device.type == "cuda" else 0)
        self.gpu_id = gpu
        probe = nvenc_probe(gpu, self.codec.value)
        if probe.available:
            log.info("%s: encoding with NVENC on GPU %d", self.path, gpu)
            return EncodeBackend.NVENC
        if self.requested is EncodeBackend.NVENC:
            raise EncodeError(f"cannot write {str(self.path)!r} with NVENC: {probe.reason}")
        if not torch.cuda.is_available():
            # Without a GPU nobody expects NVENC: say which encoder runs, nothing to warn about.
            log.info("%s: encoding on the CPU with %s (no CUDA device)", self.path, CPU_ENCODERS[self.codec])
        else:
            log.warning(
                "%s: NVENC unavailable (%s); encoding on the CPU with %s",
                self.path,
                probe.reason,
                CPU_ENCODERS[self.codec],
            )
        return EncodeBackend.CPU

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

    # -- CPU path, in this thread -----------------------------------------------------------------
    def _stage_on_host(self, image: torch.Tensor, fmt: PixelFormat, pts: int, index: int) -> None:
        """Start the frame's copy to host memory; `_encode_on_host` encodes the batch after one wait."""
        if fmt is PixelFormat.RGB:
            image, name = image.permute(1, 2, 0).contiguous(), "rgb24"
        else:
            name = "nv12"
        if image.device.type != "cuda":
            self._host_frames.append((image.contiguous().numpy(), name, pts))
            return
        # Pinned staging buffers, one per position in the batch, copied on the current (stage) stream.
        key = (*image.shape, index)
        buffer = self._pinned.get(key)
        if buffer is None:
            buffer = self._pinned[key] = torch.empty(image.shape, dtype=image.dtype, pin_memory=True)
        buffer.copy_(image, non_blocking=True)
        self._host_frames.append((buffer.numpy(), name, pts))
        self._copies_pending = True

    def _encode_on_host(self) -> None:
        if not self._host_frames:
            return
        self._wait_for_copies()
        staged, self._host_frames = self._host_frames, []
        assert self._encoder is not None
        for array, name, pts in staged:
            self._encoder.encode(array, name, pts)

    def _wait_for_copies(self) -> None:
        """One host wait for every GPU-to-host copy queued since the last one."""
        if self._copies_pending:
            _wait_for_stream(None)
            self._copies_pending = False

    # -- CPU path, in a child process -------------------------------------------------------------
    def _stage_for_process(self, image: torch.Tensor, fmt: PixelFormat, pts: int) -> None:
        process = self._process
        assert process is not None
        slot = process.acquire(wait=False)
        if slot is None:
            # Every slot is filled or being encoded: hand over what is staged so the child can free some.
            self._commit()
            slot = process.acquire()
        assert slot is not None
        try:
            if process.fmt == "nv12":
                data = image if fmt is PixelFormat.NV12 else rgb_to_nv12(image)
            else:
                data = (nv12_to_rgb(image) if fmt is PixelFormat.NV12 else image).permute(1, 2, 0)
            if data.is_cuda:
                ring, index = divmod(slot, process.slots)
                target = self._pinned_slots(data.device)[ring][index].view(data.shape)
                target.copy_(data, non_blocking=True)
                self._copies_pending = True
            else:
                np.copyto(process.slot(slot), data.numpy())
        except BaseException:
            process.release(slot)
            raise
        self._staged.append((slot, pts))

    def _commit(self) -> None:
        """Wait (once) for staged GPU copies, then hand the staged slots to the child process."""
        if not self._staged or self._process is None:
            return
        self._wait_for_copies()
        staged, self._staged = self._staged, []
        self._process.submit(staged)

    def _pinned_slots(self, device: torch.device) -> list[torch.Tensor]:
        """Each child's ring of slots as a tensor, page-locked once so GPU copies into them are asynchronous DMA."""
        if self._host_slots is None:
            assert self._process is not None
            self._host_slots = []
            for memory in self._process.memories:
                ring = torch.from_numpy(memory)
                with torch.cuda.device(device):
                    code = torch.cuda.cudart().cudaHostRegister(ring.data_ptr(), ring.numel(), 0)
                if int(code) == 0:
                    self._registered.append(ring.data_ptr())
                else:  # still correct (the copy is staged by the driver), only slower
                    log.warning("%s: cannot page-lock the encoder's shared memory (CUDA error %s)", self.path, code)
                self._host_slots.append(ring)
        return self._host_slots

    def _unregister_slots(self) -> None:
        for address in self._registered:
            torch.cuda.cudart().cudaHostUnregister(address)
        self._registered = []
        self._host_slots = None

    # -- NVENC path -------------------------------------------------------------------------------
    def _open_nvenc(self, width: int, height: int) -> None:
        from streamflow.video.nvdec import import_nvc

        nvc = import_nvc()
        options: dict[str, Any] = {"codec": self.codec.value, "gpu_id": self.gpu_id, "bf": 0}
        options["fps"] = round(float(self.fps or 30))
        options["preset"] = self.preset or "P4"
        if self.bitrate:
            options["bitrate"] = int(self.bitrate)
        with torch.cuda.device(self.gpu_id or 0):
            self._nvenc = nvc.CreateEncoder(width, height, "NV12", False, **options)
        assert self._container is not None and self._time_base is not None
        self._annexb = AnnexBMuxer(self._container, self.codec.value, self._time_base)

    def _write_nvenc(self, image: torch.Tensor, fmt: PixelFormat, pts: int) -> None:
        nv12 = image if fmt is PixelFormat.NV12 else rgb_to_nv12(image)
        nv12 = nv12.to(torch.device("cuda", self.gpu_id or 0)).contiguous()
        # NVENC ignores the producer's stream: wait until the frame is written before handing it over.
        _wait_for_stream(nv12.device)
        assert self._annexb is not None
        self._annexb.mux(bytes(self._nvenc.Encode(nv12)), pts, None, self._ticks)


def _wait_for_stream(device: torch.device | None) -> None:
    """Block this thread until the current stream's queued work is done, sleeping rather than spinning a core."""
    done = torch.cuda.Event(blocking=True)
    done.record(torch.cuda.current_stream(device))
    done.synchronize()


def _encoder_pix_fmt(codec: VideoCodec, fmt: PixelFormat, nv12_slots: bool) -> str:
    """NV12 straight into libx264 when that is what it will be fed (libx265 takes no NV12)."""
    if codec is VideoCodec.H264 and (fmt is PixelFormat.NV12 or nv12_slots):
        return "nv12"
    return "yuv420p"


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
