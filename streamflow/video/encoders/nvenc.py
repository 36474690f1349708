"""NVENC through PyNvVideoCodec: the CUDA frame is encoded on the GPU and PyAV muxes the Annex B bitstream.

`nvenc_probe()` opens a real encode session to find out whether NVENC works (NVML reports an
encoder on data-centre GPUs that have none) and caches the answer per GPU and codec.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch

from streamflow.frame import PixelFormat
from streamflow.ops.color import rgb_to_nv12
from streamflow.video.annexb import AnnexBMuxer
from streamflow.video.encoders.base import EncodeBackend, FrameEncoder, wait_for_stream

if TYPE_CHECKING:
    import av.container

__all__ = ["NvencEncoder", "NvencProbe", "nvenc_probe"]


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


class NvencEncoder(FrameEncoder):
    """One NVENC session writing into an open container (which `close()` finalizes)."""

    backend = EncodeBackend.NVENC

    def __init__(
        self,
        container: av.container.OutputContainer,
        *,
        codec: str,
        width: int,
        height: int,
        fps: Fraction,
        time_base: Fraction,
        ticks: int,
        gpu_id: int,
        preset: str | None,
        bitrate: int | None,
    ) -> None:
        from streamflow.video.nvdec import import_nvc

        self.container = container
        self.gpu_id = gpu_id
        self.ticks = ticks  # pts units per frame
        self._annexb: AnnexBMuxer | None = None
        try:
            nvc = import_nvc()
            options: dict[str, Any] = {"codec": codec, "gpu_id": gpu_id, "bf": 0}
            options["fps"] = round(float(fps))
            options["preset"] = preset or "P4"
            if bitrate:
                options["bitrate"] = int(bitrate)
            with torch.cuda.device(gpu_id):
                self._nvenc: Any = nvc.CreateEncoder(width, height, "NV12", False, **options)
        except BaseException:
            container.close()
            raise
        self._annexb = AnnexBMuxer(container, codec, time_base)

    def write(self, image: torch.Tensor, fmt: PixelFormat, pts: int, index: int) -> None:
        nv12 = image if fmt is PixelFormat.NV12 else rgb_to_nv12(image)
        nv12 = nv12.to(torch.device("cuda", self.gpu_id)).contiguous()
        # NVENC ignores the producer's stream: wait until the frame is written before handing it over.
        wait_for_stream(nv12.device)
        assert self._annexb is not None
        self._annexb.mux(bytes(self._nvenc.Encode(nv12)), pts, None, self.ticks)

    def flush(self) -> None:
        """Nothing staged: each frame was encoded by `write` (NVENC needs it on the GPU, written)."""

    def close(self) -> None:
        try:
            if self._annexb is not None:
                self._annexb.mux(bytes(self._nvenc.EndEncode()), None, None, self.ticks)
        finally:
            self.container.close()
