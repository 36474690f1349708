"""Which encoder backend writes a file, and opening it.

`auto` takes NVENC when a session opens on the frames' GPU, else the CPU (a warning only where a
GPU exists, since without one nobody expects NVENC). On the CPU, `cpu_encoder` and `encoders` pick
one of four ways to run libx264/libx265: one encoder in this thread, N segment encoders in threads,
one child process, or N child processes taking segments in turn.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import torch

from streamflow.frame import PixelFormat
from streamflow.video.encoders.base import (
    CpuEncoderMode,
    EncodeBackend,
    EncodeError,
    FrameEncoder,
    VideoCodec,
)
from streamflow.video.encoders.nvenc import NvencEncoder, nvenc_probe
from streamflow.video.encoders.process import ProcessEncoder
from streamflow.video.encoders.thread import ThreadEncoder
from streamflow.video.pyav_encoder import (
    CPU_ENCODERS,
    EncoderProcess,
    EncoderSettings,
    PyAVEncoder,
    open_output_container,
)
from streamflow.video.segmented import ProcessSegmentedEncoder, SegmentedEncoder

__all__ = ["choose_backend", "encoder_pix_fmt", "open_cpu_encoder", "open_nvenc_encoder"]

log = logging.getLogger(__name__)


def choose_backend(
    requested: EncodeBackend, device: torch.device, gpu_id: int | None, codec: VideoCodec, path: Path
) -> tuple[EncodeBackend, int | None]:
    """The backend for `requested` and frames on `device`, and the GPU it probed (`gpu_id` or the frames')."""
    if requested is EncodeBackend.CPU:
        return EncodeBackend.CPU, gpu_id
    gpu = gpu_id if gpu_id is not None else (device.index or 0 if device.type == "cuda" else 0)
    probe = nvenc_probe(gpu, codec.value)
    if probe.available:
        log.info("%s: encoding with NVENC on GPU %d", path, gpu)
        return EncodeBackend.NVENC, gpu
    if requested is EncodeBackend.NVENC:
        raise EncodeError(f"cannot write {str(path)!r} with NVENC: {probe.reason}")
    if not torch.cuda.is_available():
        # Without a GPU nobody expects NVENC: say which encoder runs, nothing to warn about.
        log.info("%s: encoding on the CPU with %s (no CUDA device)", path, CPU_ENCODERS[codec])
    else:
        log.warning("%s: NVENC unavailable (%s); encoding on the CPU with %s", path, probe.reason, CPU_ENCODERS[codec])
    return EncodeBackend.CPU, gpu


def open_cpu_encoder(
    settings: EncoderSettings,
    *,
    first: torch.Tensor,
    fmt: PixelFormat,
    mode: CpuEncoderMode,
    encoders: int,
    segment_frames: int,
    slots: int,
) -> FrameEncoder:
    """libx264/libx265 in this thread, in segment threads, in a child process or in segment children."""
    if mode is CpuEncoderMode.PROCESS:
        # GPU frames travel to a child as NV12 (converted on the GPU: half the bytes of RGB);
        # CPU frames in the format they come in.
        slot_format = "nv12" if first.is_cuda or fmt is PixelFormat.NV12 else "rgb24"
        process: EncoderProcess | ProcessSegmentedEncoder
        if encoders > 1:
            process = ProcessSegmentedEncoder(
                settings, fmt=slot_format, workers=encoders, segment_frames=segment_frames, slots=slots
            )
        else:
            process = EncoderProcess(settings, fmt=slot_format, slots=slots)
        return ProcessEncoder(process, settings.path)
    if encoders > 1:
        return ThreadEncoder(SegmentedEncoder(settings, workers=encoders, segment_frames=segment_frames))
    return ThreadEncoder(PyAVEncoder(settings))


def open_nvenc_encoder(settings: EncoderSettings, *, gpu_id: int, ticks: int) -> FrameEncoder:
    """An NVENC session muxed by PyAV into `settings.path` (crf and pix_fmt are libx264's, not used)."""
    container = open_output_container(settings.path, settings.container_format)
    return NvencEncoder(
        container,
        codec=settings.codec,
        width=settings.width,
        height=settings.height,
        fps=Fraction(settings.rate),
        time_base=settings.time_base,
        ticks=ticks,
        gpu_id=gpu_id,
        preset=settings.preset,
        bitrate=settings.bitrate,
    )


def encoder_pix_fmt(codec: VideoCodec, fmt: PixelFormat, nv12_slots: bool) -> str:
    """NV12 straight into libx264 when that is what it will be fed (libx265 takes no NV12)."""
    if codec is VideoCodec.H264 and (fmt is PixelFormat.NV12 or nv12_slots):
        return "nv12"
    return "yuv420p"
