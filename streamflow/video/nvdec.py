"""NVDEC decoding with PyNvVideoCodec into torch CUDA tensors that the caller owns.

Two paths, picked per input:

- **Files**: `NvdecFileDecoder` uses PyNvVideoCodec's own demuxer and its batch decoder
  (`ThreadedDecoder`, which decodes ahead in a C++ thread, or `SimpleDecoder`) with
  `get_batch_frames`; RGB is converted inside the decoder (`OutputColorType.RGBP`). A batch of
  frames costs one Python round trip and one `torch.stack` copy.
- **Network streams / raw elementary streams**: PyAV demuxes (with `h264_mp4toannexb` /
  `hevc_mp4toannexb`), and `PacketDecoder` feeds each packet to `CreateDecoder`.

PyNvVideoCodec reuses its output buffers, so every frame is copied out (`torch.from_dlpack` +
copy, on the current torch stream; dlpack makes that stream wait for the decoder) before the next
decode call. `PyNvVideoCodec` itself is imported lazily: importing it on a machine without the
NVIDIA driver raises.

Example (GPU only):
    >>> dec = PacketDecoder("h264")  # doctest: +SKIP
    >>> for nv12, pts in dec.decode(annexb_bytes, pts=0): ...  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from streamflow.frame import Frame, PixelFormat, StreamInfo
from streamflow.ops.color import nv12_to_rgb
from streamflow.video.bitstream import sequence_size
from streamflow.video.probe import Probe, demux_packets, open_input

if TYPE_CHECKING:
    import av.container
    import av.video.stream

__all__ = [
    "NVDEC_CODECS",
    "NvdecError",
    "NvdecFileDecoder",
    "PacketDecoder",
    "import_nvc",
    "iter_annexb_packets",
    "nvdec_unsupported_reason",
    "packet_decode_frames",
]

log = logging.getLogger(__name__)

#: FFmpeg codec name -> `PyNvVideoCodec.cudaVideoCodec` member, for the codecs NVDEC decodes on
#: data-centre GPUs. AV1 is tried where the GPU reports it (not on H100).
NVDEC_CODECS: dict[str, str] = {"h264": "H264", "hevc": "HEVC", "vp9": "VP9", "av1": "AV1"}
_ANNEXB_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
# Containers where SimpleDecoder's frame index is exact: the MP4/MOV sample table lists every frame.
# Elsewhere (Matroska/WebM cues list only key frames) PyNvVideoCodec warns "Seek accuracy may be
# impacted" and its get_batch_frames() returned neighbouring frames for some indices, while
# ThreadedDecoder on the same file was exact (HEVC in MKV; docs/MEASURED.md, "Decode").
_SIMPLE_DECODER_CONTAINERS = frozenset({"mov", "mp4"})

_nvc_lock = threading.Lock()
_nvc_module: ModuleType | None = None


class NvdecError(RuntimeError):
    """NVDEC cannot decode this input. The message is one line naming the input and the reason."""


def import_nvc() -> ModuleType:
    """Import PyNvVideoCodec once; raise `NvdecError` with one clear line when it is unusable.

    Its import loads the driver's encode library, so it fails on machines without an NVIDIA driver.
    """
    global _nvc_module
    with _nvc_lock:
        if _nvc_module is None:
            # PyNvVideoCodec logs multi-line troubleshooting text at ERROR level before raising.
            nvc_log = logging.getLogger("PyNvVideoCodec")
            previous = nvc_log.level
            nvc_log.setLevel(logging.CRITICAL)
            try:
                import PyNvVideoCodec
            except Exception as error:  # any import failure means: no NVDEC here
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise NvdecError(f"PyNvVideoCodec is not usable here: {first}") from error
            finally:
                nvc_log.setLevel(previous)
            _nvc_module = PyNvVideoCodec
        return _nvc_module


def nvdec_unsupported_reason(probe: Probe) -> str | None:
    """Why NVDEC can't decode this stream (one phrase), or None if it can.

    Example:
        >>> from fractions import Fraction
        >>> from streamflow.frame import StreamInfo
        >>> info = StreamInfo(width=64, height=48, codec="mpeg4", time_base=Fraction(1, 30))
        >>> nvdec_unsupported_reason(Probe(info, "yuv420p", 8, None, 0, 0, "mp4"))
        'NVDEC does not decode mpeg4'
    """
    codec = probe.info.codec
    if codec not in NVDEC_CODECS:
        return f"NVDEC does not decode {codec}"
    if not probe.is_8bit_420:
        return f"{codec} {probe.pix_fmt} ({probe.bit_depth}-bit) is not 8-bit 4:2:0, which the NV12 path needs"
    if codec == "av1" and not _gpu_decodes("av1"):
        return "this GPU's NVDEC does not decode AV1"
    if probe.info.width % 2 or probe.info.height % 2:
        return f"{probe.info.width}x{probe.info.height} has an odd dimension, which NV12 cannot hold"
    return None


def _gpu_decodes(codec: str) -> bool:
    nvc = import_nvc()
    try:
        caps = nvc.GetDecoderCaps(
            gpuid=torch.cuda.current_device(),
            codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[codec]),
            chromaformat=_chroma_420(nvc),
            bitdepth=8,
        )
    except Exception as error:  # an unknown codec or a driver refusal both mean "no"
        log.debug("GetDecoderCaps(%s) failed: %s", codec, error)
        return False
    return bool(caps.get("supported", caps.get("is_supported", 0)))


def _chroma_420(nvc: ModuleType) -> Any:
    # PyNvVideoCodec 2.2.4 has no `cudaVideoChromaFormat.YUV420`; pick the 4:2:0 member by name.
    enum_type = nvc.cudaVideoChromaFormat
    for name in dir(enum_type):
        if "420" in name:
            return getattr(enum_type, name)
    raise AttributeError("PyNvVideoCodec.cudaVideoChromaFormat has no 4:2:0 member")


def _as_nv12(frame: Any) -> torch.Tensor:
    """A decoder NV12 frame as a `(H*3//2, W)` uint8 view (no copy)."""
    view = torch.from_dlpack(frame)
    if view.dim() == 3 and view.shape[-1] == 1:
        view = view[..., 0]
    return view


def _as_rgbp(frame: Any) -> torch.Tensor:
    """A decoder planar-RGB frame as a `(3, H, W)` uint8 view (no copy)."""
    view = torch.from_dlpack(frame)
    if view.dim() == 2:  # (3*H, W) planes one after another
        return view.view(3, view.shape[0] // 3, view.shape[1])
    if view.dim() == 3 and view.shape[0] != 3 and view.shape[-1] == 3:  # HWC
        return view.permute(2, 0, 1)
    return view


def _frame_pts(frame: Any) -> int | None:
    getter = getattr(frame, "getPTS", None)
    if getter is None:
        return None
    try:
        return int(getter())
    except Exception:  # frames without timestamps raise or return garbage
        return None


class PacketDecoder:
    """One NVDEC session fed with Annex B packets (from PyAV, RTSP, ...).

    `decode(data, pts)` returns the frames that became ready as `(nv12, pts)` pairs: each `nv12` is
    a CUDA uint8 `(H*3//2, W)` tensor the caller owns (already copied out of the decoder's pool
    on the current torch stream). `flush()` returns the frames still inside the decoder. Decoding
    copies `data`'s bytes into NVDEC before `decode` returns, so the caller may reuse its buffer.

    A packet whose sequence header announces a new picture size (a camera that renegotiated)
    drains the current NVDEC session and opens a new one, so frames after the change come out at
    the new size (NVDEC's in-place reconfigure would scale them to the old size, see
    `streamflow.video.bitstream`). `size` is the size of the current sequence, `sessions` counts the
    sessions opened.

    Example (GPU only):
        >>> dec = PacketDecoder("hevc", gpu_id=0)  # doctest: +SKIP
        >>> frames = dec.decode(packet_bytes, pts=1024) + dec.flush()  # doctest: +SKIP
    """

    def __init__(self, codec: str, *, gpu_id: int = 0, max_size: tuple[int, int] | None = None) -> None:
        if codec not in NVDEC_CODECS:
            raise NvdecError(f"NVDEC does not decode {codec} (supported: {', '.join(NVDEC_CODECS)})")
        self._nvc = import_nvc()
        self.codec = codec
        self.gpu_id = gpu_id
        self.device = torch.device("cuda", gpu_id)
        self.max_size = max_size
        #: (width, height) announced by the current sequence header; None until the first one.
        self.size: tuple[int, int] | None = None
        self.sessions = 0
        self._decoder = self._open()

    def _open(self) -> Any:
        try:
            decoder = self._nvc.CreateDecoder(
                gpuid=self.gpu_id,
                codec=getattr(self._nvc.cudaVideoCodec, NVDEC_CODECS[self.codec]),
                cudacontext=0,  # the primary context: the one torch uses
                cudastream=0,
                usedevicememory=True,  # otherwise frames land in host memory
                maxwidth=self.max_size[0] if self.max_size else 0,
                maxheight=self.max_size[1] if self.max_size else 0,
            )
        except Exception as error:  # PyNvVideoCodec raises plain Exception subclasses
            raise NvdecError(f"cannot open an NVDEC {self.codec} decoder on GPU {self.gpu_id}: {error}") from error
        self.sessions += 1
        return decoder

    def _packet(self, data: bytes | memoryview | np.ndarray | None, pts: int | None) -> tuple[Any, np.ndarray]:
        packet = self._nvc.PacketData()
        buffer = np.empty(0, np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)
        packet.bsl_data = buffer.ctypes.data
        packet.bsl = buffer.size
        if pts is not None:
            packet.pts = int(pts)
        return packet, buffer  # the buffer must outlive Decode()

    def _run(self, packet: Any) -> list[tuple[torch.Tensor, int | None]]:
        with torch.cuda.device(self.device):
            frames = self._decoder.Decode(packet)
            if not frames:
                return []
            # Copy every frame out of the reused pool before the next Decode() can overwrite it.
            return [(_as_nv12(frame).clone(), _frame_pts(frame)) for frame in frames]

    def decode(
        self, data: bytes | memoryview | np.ndarray, pts: int | None = None
    ) -> list[tuple[torch.Tensor, int | None]]:
        """Decode one Annex B access unit; return the frames it completed (in display order)."""
        drained: list[tuple[torch.Tensor, int | None]] = []
        size = sequence_size(self.codec, data)
        if size is not None:
            if self.size is not None and size != self.size:
                # A new size needs a new session: an in-place reconfigure would scale to the old size.
                log.info(
                    "NVDEC %s: picture size changed from %dx%d to %dx%d: opening a new session",
                    self.codec,
                    *self.size,
                    *size,
                )
                drained = self.flush()
                self._decoder = self._open()
            self.size = size
        packet, buffer = self._packet(data, pts)
        try:
            return drained + self._run(packet)
        finally:
            del buffer

    def flush(self) -> list[tuple[torch.Tensor, int | None]]:
        """Signal end of stream; return the frames still buffered in the decoder."""
        packet, buffer = self._packet(None, None)
        try:
            return self._run(packet)
        finally:
            del buffer


def iter_annexb_packets(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    on_bad_packet: Callable[[str], None] | None = None,
) -> Iterator[tuple[memoryview | bytes, int | None]]:
    """Demux `stream` with PyAV and yield `(annexb_bytes, pts)` packets ready for `PacketDecoder`.

    MP4/MKV store H.264/HEVC with length prefixes; the `*_mp4toannexb` filter rewrites them into
    start codes and inserts parameter sets before keyframes (a no-op on streams already in Annex B).
    Demux errors end the iteration after `on_bad_packet(reason)`.
    """
    import av
    import av.bitstream

    codec = stream.codec_context.name
    bsf = av.bitstream.BitStreamFilterContext(_ANNEXB_FILTERS[codec], stream) if codec in _ANNEXB_FILTERS else None

    def stopped(error: BaseException) -> None:
        if on_bad_packet is not None:
            on_bad_packet(f"demuxing stopped: {error}")

    for packet in demux_packets(container, stream, stopped):
        if packet.size == 0:
            continue
        if packet.is_corrupt and on_bad_packet is not None:
            on_bad_packet(f"corrupt packet at pts {packet.pts}")
        filtered = bsf.filter(packet) if bsf is not None else [packet]
        for out in filtered:
            yield memoryview(out), out.pts if out.pts is not None else packet.pts


def packet_decode_frames(
    uri: str | Path,
    probe: Probe,
    *,
    gpu_id: int = 0,
    output: PixelFormat = PixelFormat.NV12,
    source_id: str = "0",
    options: dict[str, str] | None = None,
    stats: dict[str, int] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[Frame]:
    """Decode `uri` with PyAV demux + `PacketDecoder`, yielding CUDA `Frame`s (one pass, no looping).

    Frames without a pts (raw streams) are numbered at the nominal frame rate.
    """
    stats = stats if stats is not None else {}
    stats.setdefault("bad_packets", 0)
    info = probe.info
    ticks = _frame_ticks(info)

    def bad(reason: str) -> None:
        stats["bad_packets"] += 1
        log.debug("%s: %s", info.uri, reason)

    container = open_input(uri, options)
    try:
        stream = container.streams.video[0]
        decoder = PacketDecoder(info.codec, gpu_id=gpu_id)
        index = 0
        timed = False  # raw elementary streams have no pts: NVDEC then returns meaningless ones
        for data, pts in _with_flush(iter_annexb_packets(container, stream, bad)):
            timed = timed or pts is not None
            try:
                ready = decoder.flush() if data is None else decoder.decode(data, pts)
            except Exception as error:  # NVDEC rejects broken bitstreams with plain exceptions
                if data is None:
                    bad(f"NVDEC failed to flush: {error}")
                    continue
                # A size change the bitstream scan missed fails past the session's maximum size:
                # drain it and retry on a fresh session.
                log.info("%s: NVDEC session failed (%s); starting a new one", info.uri, error)
                ready = _drain(decoder)
                decoder = PacketDecoder(info.codec, gpu_id=gpu_id)
                stats["decoder_resets"] = stats.get("decoder_resets", 0) + 1
                try:
                    ready += decoder.decode(data, pts)
                except Exception as retry_error:
                    bad(f"NVDEC rejected a packet: {retry_error}")
            for nv12, frame_pts in ready:
                height, width = nv12.shape[0] * 2 // 3, nv12.shape[1]
                if (width, height) != (info.width, info.height):
                    if index > 0:
                        stats["resolution_changes"] = stats.get("resolution_changes", 0) + 1
                    info = _resized(info, width, height)
                image = (
                    nv12
                    if output is PixelFormat.NV12
                    else nv12_to_rgb(nv12, matrix=info.color_space, full_range=info.color_range == "full")
                )
                yield Frame(
                    image=image,
                    pts=frame_pts if frame_pts is not None and timed else index * ticks,
                    time_base=info.time_base,
                    source_id=source_id,
                    index=index,
                    format=output,
                    info=info,
                )
                index += 1
            if should_stop():
                return
    finally:
        container.close()


def _drain(decoder: PacketDecoder) -> list[tuple[torch.Tensor, int | None]]:
    try:
        return decoder.flush()
    except Exception as error:  # a broken session may not flush: its buffered frames are lost
        log.debug("flushing a failed NVDEC session failed: %s", error)
        return []


def _with_flush(
    packets: Iterator[tuple[memoryview | bytes, int | None]],
) -> Iterator[tuple[memoryview | bytes | None, int | None]]:
    yield from packets
    yield None, None


def _resized(info: StreamInfo, width: int, height: int) -> StreamInfo:
    import dataclasses

    return dataclasses.replace(info, width=width, height=height)


def _frame_ticks(info: StreamInfo) -> int:
    rate = info.fps or Fraction(30)
    return max(1, round(1 / (rate * info.time_base)))


class NvdecFileDecoder:
    """Batch decode of a seekable file with PyNvVideoCodec's demuxer and batch decoder.

    `batches()` yields lists of `Frame`s (up to `batch_size` each) whose images are views into one
    owned CUDA tensor per batch (`(N, 3, H, W)` for RGB, `(N, H*3//2, W)` for NV12). RGB is
    converted inside the decoder. `threaded=True` uses `ThreadedDecoder` (decodes ahead in its own
    C++ thread), else `SimpleDecoder`, but only for MP4/MOV: in other containers SimpleDecoder's
    frame index is not exact, so `ThreadedDecoder` is used with one warning (`threaded` then reads
    True).

    Example (GPU only):
        >>> dec = NvdecFileDecoder("clip.mp4", probe("clip.mp4"), output=PixelFormat.RGB)  # doctest: +SKIP
        >>> first = next(dec.batches())  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        probe: Probe,
        *,
        output: PixelFormat = PixelFormat.NV12,
        batch_size: int = 16,
        gpu_id: int = 0,
        threaded: bool = True,
        start_frame: int = 0,
        source_id: str = "0",
    ) -> None:
        self.path = str(path)
        self.probe = probe
        self.output = PixelFormat(output)
        self.batch_size = max(1, batch_size)
        self.gpu_id = gpu_id
        formats = set(probe.container.split(","))
        if not threaded and not formats & _SIMPLE_DECODER_CONTAINERS:
            log.warning(
                "%s: SimpleDecoder's frame index is not exact in %s containers (only MP4/MOV); using ThreadedDecoder",
                probe.info.uri,
                probe.container,
            )
            threaded = True
        self.threaded = threaded
        self.start_frame = start_frame
        self.source_id = source_id
        self.stats: dict[str, int] = {"frames": 0, "bad_packets": 0}
        self._nvc = import_nvc()
        self._decoder: Any = None

    def _open(self) -> Any:
        nvc = self._nvc
        color = nvc.OutputColorType.RGBP if self.output is PixelFormat.RGB else nvc.OutputColorType.NATIVE
        try:
            with torch.cuda.device(self.gpu_id):
                if self.threaded:
                    return nvc.ThreadedDecoder(
                        self.path,
                        buffer_size=self.batch_size,
                        gpu_id=self.gpu_id,
                        use_device_memory=True,
                        output_color_type=color,
                        start_frame=self.start_frame,
                    )
                decoder = nvc.SimpleDecoder(
                    self.path, gpu_id=self.gpu_id, use_device_memory=True, output_color_type=color
                )
                if self.start_frame:
                    decoder.seek_to_index(self.start_frame)
                return decoder
        except Exception as error:  # PyNvVideoCodec raises plain Exception
            raise NvdecError(f"cannot decode {self.probe.info.uri!r} with NVDEC: {str(error).strip()}") from error

    def batches(self, max_frames: int | None = None) -> Iterator[list[Frame]]:
        """Yield batches of owned CUDA frames, in display order, until the file ends or `max_frames`."""
        self._decoder = self._open()
        info = self.probe.info
        ticks = _frame_ticks(info)
        start_pts = self.probe.start_pts or 0
        index = 0
        # The latest batch's frames and their tensor views point into the decoder's frame pool, and
        # the copy out of them runs on the GPU after `torch.stack` returns; `copied` marks its end.
        frames: list[Any] = []
        views: list[torch.Tensor] = []
        copied: torch.cuda.Event | None = None
        try:
            while max_frames is None or index < max_frames:
                want = self.batch_size if max_frames is None else min(self.batch_size, max_frames - index)
                with torch.cuda.device(self.gpu_id):
                    frames = self._decoder.get_batch_frames(want)
                    if not frames:
                        return
                    views = [(_as_rgbp if self.output is PixelFormat.RGB else _as_nv12)(f) for f in frames]
                    # ThreadedDecoder returns the stream's pts; SimpleDecoder's getPTS() runs 2 frames early
                    # (-1024, -512, 0... for 0, 512, 1024...), so its frames are numbered instead.
                    pts_list = [_frame_pts(f) if self.threaded else None for f in frames]
                    # One copy for the whole batch: the decoder's pool is reused by the next call.
                    batch = torch.stack(views)
                    copied = torch.cuda.Event()
                    copied.record()
                out: list[Frame] = []
                for i in range(len(frames)):
                    frame_index = self.start_frame + index + i
                    pts = pts_list[i]
                    if pts is None:
                        pts = start_pts + frame_index * ticks
                    out.append(
                        Frame(
                            image=batch[i],
                            pts=pts,
                            time_base=info.time_base,
                            source_id=self.source_id,
                            index=index + i,
                            format=self.output,
                            info=info,
                        )
                    )
                index += len(out)
                self.stats["frames"] += len(out)
                yield out
        finally:
            # The pool goes with the decoder: the last copy out of it must be done, and the views
            # into it released, before the decoder ends (a view outliving it would release pool
            # memory that is already gone). The end of a source or of a pass of a looping one.
            if copied is not None:
                copied.synchronize()
            del views, frames
            self.close()

    def close(self) -> None:
        """Stop the decoder's thread (ThreadedDecoder) and drop it."""
        decoder, self._decoder = self._decoder, None
        if decoder is not None and hasattr(decoder, "end"):
            try:
                decoder.end()
            except Exception as error:  # ending an already finished decoder may raise
                log.debug("ThreadedDecoder.end() failed: %s", error)
