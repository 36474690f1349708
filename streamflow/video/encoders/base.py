"""The interface every encoder backend implements, and the names the writer and its backends share.

`VideoWriter` (`streamflow.video.encode`) owns what is the same for every backend: the output path
checks, frame-size checks and the output timeline. A backend only turns frames into a file:

- `write(image, fmt, pts, index)`: one frame, already checked, with its output pts; `index` is its
  position in the current batch (backends that stage GPU copies keep one buffer per position);
- `flush()`: the end of a batch: wait once for the batch's GPU copies and hand the frames on;
- `close()`: finish and finalize the file; called once, also after errors;
- `blocked_s`: seconds spent waiting for a busy encoder, where the backend can tell.
"""

from __future__ import annotations

import abc
import enum
from typing import ClassVar

import torch

from streamflow.frame import PixelFormat

__all__ = ["CpuEncoderMode", "EncodeBackend", "EncodeError", "FrameEncoder", "VideoCodec", "wait_for_stream"]


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


class FrameEncoder(abc.ABC):
    """One open encoder writing one file; see the module docstring."""

    backend: ClassVar[EncodeBackend]

    @abc.abstractmethod
    def write(self, image: torch.Tensor, fmt: PixelFormat, pts: int, index: int) -> None:
        """Take one frame (RGB `(3, H, W)` or NV12 `(H*3//2, W)` uint8, CPU or CUDA) with its output pts."""

    @abc.abstractmethod
    def flush(self) -> None:
        """End of a batch: wait for its GPU copies once and hand the frames on."""

    @abc.abstractmethod
    def close(self) -> None:
        """Finish encoding and finalize the file."""

    @property
    def blocked_s(self) -> float | None:
        """Seconds `write` waited for a busy encoder; None where the backend cannot tell."""
        return None


def wait_for_stream(device: torch.device | None) -> None:
    """Block this thread until the current stream's queued work is done, sleeping rather than spinning a core."""
    done = torch.cuda.Event(blocking=True)
    done.record(torch.cuda.current_stream(device))
    done.synchronize()
