"""`window`: a sliding window of consecutive frames per source, stacked as a multi-frame model input.

For every input frame the stage emits one model input: the frame and its neighbours, converted
to float RGB in [0, 1] and stacked on the channel axis, `(3 * size, H, W)`, oldest first, the
frame itself at position `(size - 1) // 2`. The inputs travel as `Batch.data` `(B, 3 * size, H, W)`
(B = 1, or up to `emit_batch` frames of one source), on the device the frames are on; the
`infer` stage reads `Batch.data`.

Edges: a frame needs `size - 1 - (size - 1) // 2` later frames before its window is complete, so
output lags input by that many frames. Neighbours before the first frame repeat the first frame,
and at end of stream (`flush`) neighbours after the last frame repeat the last frame, so the
output has exactly as many frames as the input, in order, with the input's pts; clips shorter
than the window work too. A change of resolution within a source ends one sequence and starts
another (the old tail is padded and emitted first).

Example (YAML):
    - name: window
      type: window
      size: 5          # the model's window (channels = 3 * size)
      emit_batch: 4    # up to 4 frames per emitted Batch

Example (Python):
    >>> from streamflow.testing import make_frames, run_stage
    >>> out = run_stage(Window(size=5), make_frames(3))
    >>> [(b.frames[0].pts, tuple(b.data.shape)) for b in out]
    [(0, (1, 15, 4, 4)), (1, (1, 15, 4, 4)), (2, (1, 15, 4, 4))]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import Field

from streamflow.frame import Batch, Frame, PixelFormat
from streamflow.ops.color import ColorMatrix, nv12_to_rgb
from streamflow.stage import Stage, StageConfig

__all__ = ["Window"]


@dataclass(slots=True)
class _Sequence:
    """Frames of one source since its start (or last resolution change) that a window still needs."""

    shape: tuple[int, ...]
    buffer: deque[tuple[Frame, torch.Tensor]] = field(default_factory=deque)
    base: int = 0  # sequence index of buffer[0]
    received: int = 0  # frames received in this sequence
    emitted: int = 0  # frames whose window has been built
    ready: list[tuple[Frame, torch.Tensor]] = field(default_factory=list)  # built, not yet sent


class Window(Stage):
    """Stacks each frame with its neighbours into a `(3 * size, H, W)` model input; see the module docstring."""

    class Config(StageConfig):
        size: int = Field(5, ge=1, description="frames per window; the model's input has 3 * size channels")
        emit_batch: int = Field(1, ge=1, description="frames of one source gathered into one emitted Batch")
        matrix: ColorMatrix | None = Field(
            None, description="NV12 input: YCbCr matrix; default: the stream's colour space, else bt709"
        )
        full_range: bool | None = Field(
            None, description="NV12 input: full-range YCbCr; default: the stream's colour range, else limited"
        )

    uses_gpu: ClassVar[bool] = True

    def setup(self) -> None:
        self._before = (self.config.size - 1) // 2
        self._after = self.config.size - 1 - self._before
        self._sequences: dict[str, _Sequence] = {}

    def process(self, item: Frame | Batch) -> list[Batch]:
        out: list[Batch] = []
        frames = item.frames
        for frame, image in zip(frames, self._to_float_all(frames), strict=True):
            seq = self._sequences.get(frame.source_id)
            if seq is not None and seq.shape != tuple(image.shape):
                # New resolution: the old sequence ended; pad its tail rather than mix sizes in a window.
                self._drain(seq, out, final=True)
                seq = None
            if seq is None:
                seq = self._sequences[frame.source_id] = _Sequence(shape=tuple(image.shape))
            seq.buffer.append((frame, image))
            seq.received += 1
            self._drain(seq, out, final=False)
        return out

    def flush(self) -> list[Batch]:
        out: list[Batch] = []
        for seq in self._sequences.values():
            self._drain(seq, out, final=True)
        self._sequences.clear()
        return out

    def end_source(self, source_id: str) -> list[Batch]:
        # That source's tail is padded now, without waiting for the other sources to end.
        out: list[Batch] = []
        seq = self._sequences.pop(source_id, None)
        if seq is not None:
            self._drain(seq, out, final=True)
        return out

    def teardown(self) -> None:
        self._sequences = {}

    # -- internals ---------------------------------------------------------------------------------
    def _to_float_all(self, frames: list[Frame]) -> list[torch.Tensor]:
        """Float RGB images of `frames`; NV12 frames of one size and colour space convert in one batched call.

        One call for a batch of frames instead of one per frame: the same kernels, a fraction of the
        Python (and GIL) time per frame, which the pipeline's other threads are waiting for.
        """
        if len(frames) > 1 and all(f.format is PixelFormat.NV12 for f in frames):
            settings = {(tuple(f.image.shape), self._nv12_settings(f)) for f in frames}
            if len(settings) == 1:
                ((_, (matrix, full)),) = settings
                stacked = torch.stack([f.image for f in frames])
                rgb = nv12_to_rgb(stacked, matrix=matrix, full_range=full).float().div_(255.0)
                return list(rgb.unbind(0))
        return [self._to_float(frame) for frame in frames]

    def _nv12_settings(self, frame: Frame) -> tuple[str, bool]:
        info = frame.info
        matrix = self.config.matrix or (info.color_space if info is not None else ColorMatrix.BT709)
        full = self.config.full_range
        if full is None:
            full = info is not None and info.color_range == "full"
        return str(matrix), full

    def _to_float(self, frame: Frame) -> torch.Tensor:
        image = frame.image
        if frame.format is PixelFormat.NV12:
            matrix, full = self._nv12_settings(frame)
            image = nv12_to_rgb(image, matrix=matrix, full_range=full)
        elif frame.format is PixelFormat.TENSOR and image.is_floating_point():
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"window: float frames must be (3, H, W) RGB in [0, 1], got {tuple(image.shape)}")
            return image.float()
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"window: expected uint8 RGB (3, H, W) or NV12 frames, got {frame.format} "
                f"{image.dtype} {tuple(image.shape)}"
            )
        return image.float().div_(255.0)

    def _drain(self, seq: _Sequence, out: list[Batch], *, final: bool) -> None:
        """Build every window that is complete (all of them when `final`) and send full batches."""
        size = self.config.size
        last = seq.received - 1
        while seq.emitted < seq.received and (final or seq.emitted + self._after <= last):
            i = seq.emitted
            picks = [min(max(i - self._before + k, 0), last) for k in range(size)]
            if picks[0] != i - self._before or picks[-1] != i + self._after:
                self.count("padded_windows")
            stacked = torch.cat([seq.buffer[j - seq.base][1] for j in picks], dim=0)
            seq.ready.append((seq.buffer[i - seq.base][0], stacked))
            seq.emitted += 1
            # Frame 0 stays while start padding may still need it; otherwise keep only what later windows read.
            keep_from = max(seq.emitted - self._before, 0)
            while seq.base < keep_from and len(seq.buffer) > 1:
                seq.buffer.popleft()
                seq.base += 1
            if len(seq.ready) >= self.config.emit_batch:
                out.append(self._batch(seq.ready))
                seq.ready = []
        if final and seq.ready:
            out.append(self._batch(seq.ready))
            seq.ready = []

    @staticmethod
    def _batch(ready: list[tuple[Frame, torch.Tensor]]) -> Batch:
        return Batch(frames=[f for f, _ in ready], data=torch.stack([t for _, t in ready]))
