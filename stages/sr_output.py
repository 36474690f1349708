"""`sr_output`: turns a super-resolution model's output into the frames' new images, ready to encode.

The `infer` stage leaves the raw model output in `Batch.results[result]`, a float tensor
`(B, 3, H', W')` (first axis = frame, RGB, nominally in [0, 1]). A model that emits M frames per
input (`frames_out: M`, e.g. BMF's SR engine) gives `(B, 3M, H', W')`, or `(B, H', W', 3M)` with
`layout: nhwc`: M RGB frames on the channel axis, oldest first; row r's frames go to the frames
that row serves (`Batch.results["frames_per_row"]`, set by the `window` stage), and outputs past the
end of a stream are dropped. This stage clamps the output, converts it to uint8 and makes it the
images of the frames in order: RGB `(3, H', W')`, or NV12 `(H' * 3 // 2, W')`
with `format: nv12` (what hardware encoders take), on the device the output is on. The frames'
`StreamInfo` gets the new width and height, the model output and the stacked model input are
dropped from the batch (they are large and no longer needed).

Example (YAML):
    - name: postprocess
      type: sr_output
      result: output     # the key the infer stage wrote
      format: rgb        # rgb | nv12
      frames_out: 1      # frames per model output row (3 for BMF's SR engine)
      layout: nchw       # nchw | nhwc

Example (Python):
    >>> import torch
    >>> from fractions import Fraction
    >>> from streamflow.frame import Batch, Frame
    >>> from streamflow.testing import run_stage
    >>> f = Frame(image=torch.zeros(3, 2, 2, dtype=torch.uint8), pts=0, time_base=Fraction(1, 30))
    >>> batch = Batch([f], results={"output": torch.full((1, 3, 4, 4), 2.0)})
    >>> out = run_stage(SuperResolutionOutput(result="output"), [batch])
    >>> out[0].frames[0].image.shape, int(out[0].frames[0].image.max())
    (torch.Size([3, 4, 4]), 255)
"""

from __future__ import annotations

import dataclasses
import enum
from typing import ClassVar

import torch
from pydantic import Field

from streamflow.frame import FRAMES_PER_ROW, Batch, Frame, Layout, PixelFormat, row_frame_counts
from streamflow.ops.color import ColorMatrix, rgb_to_nv12
from streamflow.stage import Stage, StageConfig

__all__ = ["OutputFormat", "SuperResolutionOutput"]


class OutputFormat(enum.StrEnum):
    """Pixel format of the frames this stage emits."""

    RGB = "rgb"  # uint8 (3, H, W): software encoders (PyAV) and further torch processing
    NV12 = "nv12"  # uint8 (H * 3 // 2, W): what NVENC and most hardware encoders consume


class SuperResolutionOutput(Stage):
    """Clamps the model output, converts it to uint8 and sets it as each frame's image."""

    class Config(StageConfig):
        result: str | None = Field(
            None, description="key of the model output in Batch.results; default: the only tensor result"
        )
        format: OutputFormat = Field(OutputFormat.RGB, description="pixel format of the output frames")
        matrix: ColorMatrix = Field(ColorMatrix.BT709, description="NV12 output: YCbCr matrix (HD video: bt709)")
        full_range: bool = Field(False, description="NV12 output: full-range YCbCr instead of limited (TV) range")
        keep_output: bool = Field(False, description="keep the float model output in Batch.results")
        frames_out: int = Field(1, ge=1, description="RGB frames per output row, stacked on the channel axis")
        layout: Layout = Field(Layout.NCHW, description="nchw: (B, 3M, H, W); nhwc: (B, H, W, 3M)")

    uses_gpu: ClassVar[bool] = True

    def process(self, item: Frame | Batch) -> Frame | Batch:
        results = item.results
        key = self._key(results)
        output = results[key]
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            raise TypeError(f"sr_output: results[{key!r}] must be a float tensor, got {type(output).__name__}")
        frames = item.frames
        if isinstance(item, Frame) and output.dim() == 3:
            output = output.unsqueeze(0)
        output = self._per_frame(output, row_frame_counts(item), key)
        # One fused pass for the whole batch; +0.5 then truncation rounds to nearest (values are >= 0 after clamp).
        images = output.float().clamp(0.0, 1.0).mul_(255.0).add_(0.5).to(torch.uint8)
        height, width = images.shape[-2:]
        if self.config.format is OutputFormat.NV12:
            images = rgb_to_nv12(images, matrix=self.config.matrix.value, full_range=self.config.full_range)
            fmt = PixelFormat.NV12
        else:
            fmt = PixelFormat.RGB
        for frame, image in zip(frames, images, strict=True):
            frame.image = image
            frame.format = fmt
            if frame.info is not None:
                frame.info = dataclasses.replace(frame.info, width=int(width), height=int(height))
        results.pop(FRAMES_PER_ROW, None)
        if not self.config.keep_output:
            del results[key]
        if isinstance(item, Batch):
            item.data = None
        return item

    def _per_frame(self, output: torch.Tensor, counts: list[int], key: str) -> torch.Tensor:
        """(frames, 3, H, W): one RGB image per frame, in order, from the rows' stacked frames."""
        cfg = self.config
        m = cfg.frames_out
        expected = "(B, H, W, 3M)" if cfg.layout is Layout.NHWC else "(B, 3M, H, W)"
        channels = output.shape[-1] if cfg.layout is Layout.NHWC else output.shape[1] if output.dim() == 4 else -1
        if output.dim() != 4 or output.shape[0] != len(counts) or channels != 3 * m or max(counts, default=0) > m:
            raise ValueError(
                f"sr_output: results[{key!r}] has shape {tuple(output.shape)}; expected {expected} with "
                f"B = {len(counts)} rows and M = {m} frames per row (frames_out): "
                f"one RGB image per frame, {sum(counts)} frames"
            )
        if cfg.layout is Layout.NHWC:
            output = output.permute(0, 3, 1, 2)  # a view: the uint8 conversion below makes it contiguous
        frames = output.reshape(len(counts), m, 3, *output.shape[-2:])
        if all(c == m for c in counts):
            return frames.flatten(0, 1)
        # A stream's last row serves fewer than M frames: its outputs past the end are dropped.
        return torch.cat([frames[r, :c] for r, c in enumerate(counts)])

    def _key(self, results: dict[str, object]) -> str:
        if self.config.result is not None:
            if self.config.result not in results:
                raise KeyError(
                    f"sr_output: no result named {self.config.result!r}; this item has {sorted(results) or 'none'}"
                )
            return self.config.result
        tensors = [k for k, v in results.items() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise KeyError(f"sr_output: set `result` to the model output's name; tensor results found: {tensors}")
        return tensors[0]
