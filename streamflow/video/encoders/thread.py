"""CPU encoding in this process: one libx264/libx265 encoder in the calling thread, or segment encoders in threads.

GPU frames are copied to pinned host buffers on the caller's current CUDA stream; the batch is
encoded after one wait for all of its copies.
"""

from __future__ import annotations

import numpy as np
import torch

from streamflow.frame import PixelFormat
from streamflow.video.encoders.base import EncodeBackend, FrameEncoder, wait_for_stream
from streamflow.video.pyav_encoder import PyAVEncoder
from streamflow.video.segmented import SegmentedEncoder

__all__ = ["ThreadEncoder"]


class ThreadEncoder(FrameEncoder):
    """Feeds a `PyAVEncoder` (one encoder) or a `SegmentedEncoder` (N segment threads) from this thread."""

    backend = EncodeBackend.CPU

    def __init__(self, encoder: PyAVEncoder | SegmentedEncoder) -> None:
        self.encoder = encoder
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}
        self._host_frames: list[tuple[np.ndarray, str, int]] = []  # copied (or copying) to host, not yet encoded
        self._copies_pending = False  # GPU-to-host copies queued on the current stream since the last wait

    def write(self, image: torch.Tensor, fmt: PixelFormat, pts: int, index: int) -> None:
        """Start the frame's copy to host memory; `flush` encodes the batch after one wait."""
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

    def flush(self) -> None:
        if not self._host_frames:
            return
        if self._copies_pending:
            wait_for_stream(None)
            self._copies_pending = False
        staged, self._host_frames = self._host_frames, []
        for array, name, pts in staged:
            self.encoder.encode(array, name, pts)

    def close(self) -> None:
        self.encoder.close()

    @property
    def blocked_s(self) -> float | None:
        return self.encoder.blocked_s if isinstance(self.encoder, SegmentedEncoder) else None
