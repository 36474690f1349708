"""CPU encoding in child processes: one `EncoderProcess`, or `ProcessSegmentedEncoder`'s children taking turns.

Frames go into the children's shared-memory slots: GPU frames are converted on the GPU and copied
straight into the slots (page-locked once, so the copies are asynchronous DMA), CPU frames copied
with numpy. The filled slots are handed over at the end of each batch, after one wait for its copies.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from streamflow.frame import PixelFormat
from streamflow.ops.color import nv12_to_rgb, rgb_to_nv12
from streamflow.video.encoders.base import EncodeBackend, FrameEncoder, wait_for_stream
from streamflow.video.pyav_encoder import EncoderProcess
from streamflow.video.segmented import ProcessSegmentedEncoder

__all__ = ["ProcessEncoder"]

log = logging.getLogger(__name__)


class ProcessEncoder(FrameEncoder):
    """Feeds an `EncoderProcess` or a `ProcessSegmentedEncoder` through their shared-memory slots."""

    backend = EncodeBackend.CPU

    def __init__(self, process: EncoderProcess | ProcessSegmentedEncoder, path: str) -> None:
        self.process = process
        self.path = path  # for warnings
        self._host_slots: list[torch.Tensor] | None = None  # each child's ring of slots, page-locked
        self._registered: list[int] = []  # addresses registered with cudaHostRegister
        self._staged: list[tuple[int, int]] = []  # (slot, pts) filled, not yet handed to the child
        self._copies_pending = False  # GPU copies queued on the current stream since the last wait

    def write(self, image: torch.Tensor, fmt: PixelFormat, pts: int, index: int) -> None:
        process = self.process
        slot = process.acquire(wait=False)
        if slot is None:
            # Every slot is filled or being encoded: hand over what is staged so the child can free some.
            self.flush()
            slot = process.acquire()
        assert slot is not None
        try:
            if process.fmt == "nv12":
                data = image if fmt is PixelFormat.NV12 else rgb_to_nv12(image)
            else:
                data = (nv12_to_rgb(image) if fmt is PixelFormat.NV12 else image).permute(1, 2, 0)
            if data.is_cuda:
                ring, position = divmod(slot, process.slots)
                target = self._pinned_slots(data.device)[ring][position].view(data.shape)
                target.copy_(data, non_blocking=True)
                self._copies_pending = True
            else:
                np.copyto(process.slot(slot), data.numpy())
        except BaseException:
            process.release(slot)
            raise
        self._staged.append((slot, pts))

    def flush(self) -> None:
        """Wait (once) for staged GPU copies, then hand the staged slots to the children."""
        if not self._staged:
            return
        if self._copies_pending:
            wait_for_stream(None)
            self._copies_pending = False
        staged, self._staged = self._staged, []
        self.process.submit(staged)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._unregister_slots()
            self.process.close()

    @property
    def blocked_s(self) -> float | None:
        return self.process.blocked_s

    def _pinned_slots(self, device: torch.device) -> list[torch.Tensor]:
        """Each child's ring of slots as a tensor, page-locked once so GPU copies into them are asynchronous DMA."""
        if self._host_slots is None:
            self._host_slots = []
            for memory in self.process.memories:
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
