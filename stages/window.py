"""`window`: a sliding window of consecutive frames per source, stacked as a multi-frame model input.

For every input frame the stage emits one model input: the frame and its neighbours, converted
to float RGB in [0, 1] and stacked on the channel axis, `(3 * size, H, W)`, oldest first, the
frame itself at position `(size - 1) // 2`. The inputs travel as `Batch.data` `(B, 3 * size, H, W)`
(B = 1, or up to `emit_batch` frames of one source), on the device the frames are on; the
`infer` stage reads `Batch.data`.

Models that emit several frames per inference (BMF's SR engine: 7 frames in, 3 out) are described
by `frames_out` (M), `layout` and `dtype`: each model input then serves M consecutive frames, the
middle M of its `size` frames (the first of them at position `(size - M) // 2`), and the window
advances M frames per input. The emitted Batch holds every frame an input serves, in order, and
`Batch.results["frames_per_row"]` says how many frames each data row serves (M, fewer only in a
stream's last input), which `infer` and `sr_output` read. `layout: nhwc` stacks as `(H, W, 3 * size)`
instead; `dtype: uint8` gives pixel values 0..255 instead of floats in [0, 1].

Edges: a frame needs `size - 1 - (size - 1) // 2` later frames before its window is complete (with
M > 1, the last frame an input serves needs `size - M - (size - M) // 2`), so output lags input by
that many frames. Neighbours before the first frame repeat the first frame, and at end of stream
(`flush`) neighbours after the last frame repeat the last frame. An input whose M frames run past
the end of the stream serves only the real ones (the model's extra outputs are dropped), so the
output has exactly as many frames as the input, each once, in order, with the input's pts; clips
shorter than the window work too. (BMF's demo instead feeds the last frame again until its window
is full and writes every output, so a stream of L frames comes out rounded up to a multiple of M.)
A change of resolution within a source ends one sequence and starts another (the old tail is
padded and emitted first).

Example (YAML):
    - name: window
      type: window
      size: 5          # the model's window (channels = 3 * size)
      emit_batch: 4    # up to 4 frames per emitted Batch

    - name: window      # BMF's SR engine: input:0 (1, 360, 640, 21), 3 frames out per inference
      type: window
      size: 7
      frames_out: 3
      layout: nhwc

Example (Python):
    >>> from streamflow.testing import make_frames, run_stage
    >>> out = run_stage(Window(size=5), make_frames(3))
    >>> [(b.frames[0].pts, tuple(b.data.shape)) for b in out]
    [(0, (1, 15, 4, 4)), (1, (1, 15, 4, 4)), (2, (1, 15, 4, 4))]
    >>> out = run_stage(Window(size=7, frames_out=3, layout="nhwc"), make_frames(4))
    >>> [([f.pts for f in b.frames], tuple(b.data.shape), b.results["frames_per_row"]) for b in out]
    [([0, 1, 2], (1, 4, 4, 21), [3]), ([3], (1, 4, 4, 21), [1])]
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from streamflow.frame import FRAMES_PER_ROW, Batch, Frame, Layout, PixelFormat
from streamflow.ops.color import ColorMatrix, nv12_to_rgb
from streamflow.stage import Stage, StageConfig

__all__ = ["InputDtype", "Window"]


class InputDtype(enum.StrEnum):
    """Element type of the stacked input, as the model declares it."""

    FLOAT = "float"  # float32, pixels in [0, 1]
    UINT8 = "uint8"  # uint8, pixels 0..255


@dataclass(slots=True)
class _Sequence:
    """Frames of one source since its start (or last resolution change) that a window still needs."""

    shape: tuple[int, ...]
    buffer: deque[tuple[Frame, torch.Tensor]] = field(default_factory=deque)
    base: int = 0  # sequence index of buffer[0]
    received: int = 0  # frames received in this sequence
    emitted: int = 0  # frames served by the inputs built so far
    ready: list[tuple[list[Frame], torch.Tensor]] = field(default_factory=list)  # built, not yet sent


class Window(Stage):
    """Stacks each frame (or each M frames) with its neighbours into one model input; see the module docstring."""

    class Config(StageConfig):
        size: int = Field(5, ge=1, description="frames per window; the model's input has 3 * size channels")
        frames_out: int = Field(1, ge=1, description="frames the model emits per input; the window advances by this")
        layout: Layout = Field(Layout.NCHW, description="nchw: (3 * size, H, W) per input; nhwc: (H, W, 3 * size)")
        dtype: InputDtype = Field(InputDtype.FLOAT, description="float: [0, 1] float32; uint8: 0..255")
        emit_batch: int = Field(1, ge=1, description="model inputs (rows) of one source gathered into one Batch")
        matrix: ColorMatrix | None = Field(
            None, description="NV12 input: YCbCr matrix; default: the stream's colour space, else bt709"
        )
        full_range: bool | None = Field(
            None, description="NV12 input: full-range YCbCr; default: the stream's colour range, else limited"
        )
        chroma: Literal["nearest", "linear"] = Field(
            "nearest", description="NV12 input: chroma upsampling (linear: interpolated at 4:2:0's siting)"
        )

        @model_validator(mode="after")
        def _frames_fit(self) -> Window.Config:
            if self.frames_out > self.size:
                raise ValueError(f"frames_out {self.frames_out} must be at most size {self.size}")
            return self

    uses_gpu: ClassVar[bool] = True

    def setup(self) -> None:
        cfg = self.config
        self._before = (cfg.size - cfg.frames_out) // 2  # input frames before the first frame served
        self._after = cfg.size - cfg.frames_out - self._before  # input frames after the last frame served
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
                rgb = nv12_to_rgb(stacked, matrix=matrix, full_range=full, chroma=self.config.chroma)
                rgb = rgb.float().div_(255.0)
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
            image = nv12_to_rgb(image, matrix=matrix, full_range=full, chroma=self.config.chroma)
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
        """Build every input that is complete (all of them when `final`) and send full batches."""
        size, step = self.config.size, self.config.frames_out
        last = seq.received - 1
        while seq.emitted < seq.received and (final or seq.emitted + step - 1 + self._after <= last):
            first = seq.emitted  # the first frame this input serves
            picks = [min(max(first - self._before + k, 0), last) for k in range(size)]
            if picks[0] != first - self._before or picks[-1] != first - self._before + size - 1:
                self.count("padded_windows")
            stacked = self._stack([seq.buffer[j - seq.base][1] for j in picks])
            served = range(first, min(first + step, seq.received))  # only real frames, past the end too
            seq.ready.append(([seq.buffer[i - seq.base][0] for i in served], stacked))
            seq.emitted += len(served)
            # Frame 0 stays while start padding may still need it; otherwise keep only what later inputs read.
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

    def _stack(self, images: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.cat(images, dim=0)  # (3 * size, H, W), frame-major: f0 R G B, f1 R G B, ...
        if self.config.dtype is InputDtype.UINT8:
            stacked = stacked.mul(255.0).round_().to(torch.uint8)
        if self.config.layout is Layout.NHWC:
            stacked = stacked.permute(1, 2, 0).contiguous()
        return stacked

    def _batch(self, ready: list[tuple[list[Frame], torch.Tensor]]) -> Batch:
        frames = [f for served, _ in ready for f in served]
        batch = Batch(frames=frames, data=torch.stack([t for _, t in ready]))
        if self.config.frames_out > 1:
            batch.results[FRAMES_PER_ROW] = [len(served) for served, _ in ready]
        return batch
