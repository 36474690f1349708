"""`sr_output`: turns a super-resolution model's output into the frames' new images, ready to encode.

The `infer` stage leaves the raw model output in `Batch.results[result]`, a float tensor
`(B, 3, H', W')` (first axis = frame, RGB, nominally in [0, 1]). This stage clamps it, converts
it to uint8 and makes row i the image of frame i: RGB `(3, H', W')`, or NV12 `(H' * 3 // 2, W')`
with `format: nv12` (what hardware encoders take), on the device the output is on. The frames'
`StreamInfo` gets the new width and height, the model output and the stacked model input are
dropped from the batch (they are large and no longer needed).

Example (YAML):
    - name: postprocess
      type: sr_output
      result: output     # the key the infer stage wrote
      format: rgb        # rgb | nv12

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

from streamflow.frame import Batch, Frame, PixelFormat
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
        if output.dim() != 4 or output.shape[0] != len(frames) or output.shape[1] != 3:
            raise ValueError(
                f"sr_output: results[{key!r}] has shape {tuple(output.shape)}; expected ({len(frames)}, 3, H, W), "
                "one RGB image per frame"
            )
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
        if not self.config.keep_output:
            del results[key]
        if isinstance(item, Batch):
            item.data = None
        return item

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
