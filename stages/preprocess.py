"""`preprocess`: frames (NV12 or RGB) -> one normalised NCHW float batch, the input of `infer`.

Each frame is converted to RGB if it is NV12 (matrix and range from the frame's `StreamInfo` unless
set here; the planes are shrunk first, so conversion runs at model size), resized into the model's
input (letterbox keeps the aspect ratio and pads, stretch fills), normalised as
`(pixel * input_scale - mean) / std` and stacked into `Batch.data`.
Frames keep their original images; each gets `frame.results["letterbox"]`, the `Letterbox` that
maps model-input pixels back to its own pixels. Frames of one batch may differ in size: frames
that share a size and format are converted together.

Example (YAML):
    - name: preprocess
      type: preprocess
      width: 640
      height: 384
      mode: letterbox
      dtype: fp16

Example (Python):
    >>> import torch
    >>> from fractions import Fraction
    >>> from streamflow.frame import Frame
    >>> from streamflow.testing import run_stage
    >>> f = Frame(image=torch.zeros(3, 72, 128, dtype=torch.uint8), pts=0, time_base=Fraction(1, 30))
    >>> out = run_stage(Preprocess(width=64, height=64), [f])
    >>> out[0].data.shape, out[0].frames[0].results["letterbox"].offset_y
    (torch.Size([1, 3, 64, 64]), 14.0)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from streamflow.frame import Batch, Frame, PixelFormat
from streamflow.ops.color import ColorMatrix
from streamflow.ops.resize import InputTransform, Letterbox, letterbox_resize, letterbox_resize_nv12
from streamflow.stage import Stage, StageConfig

__all__ = ["Preprocess"]


class Preprocess(Stage):
    """Resize, normalise and batch frames into the model input (`Batch.data`, NCHW float)."""

    class Config(StageConfig, InputTransform):
        """The model input's size, the `InputTransform` options (mode, input_scale, mean, std, pad_value,
        dtype, channel_order, antialias) flat beside it, and NV12 colour and result-key settings."""

        width: int = Field(640, gt=0, description="model input width in pixels")
        height: int = Field(384, gt=0, description="model input height in pixels")
        matrix: ColorMatrix | None = Field(None, description="NV12 input: YCbCr matrix; default: the stream's")
        full_range: bool | None = Field(None, description="NV12 input: full-range YCbCr; default: the stream's")
        key: str = Field("letterbox", description="frame.results key for the frame's Letterbox mapping")

    uses_gpu: ClassVar[bool] = True

    def process(self, item: Frame | Batch) -> Batch:
        frames = item.frames
        if not frames:
            return item if isinstance(item, Batch) else Batch([])
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault(self._group_key(frame), []).append(i)
        cfg = self.config
        size = (cfg.height, cfg.width)
        if len(groups) == 1:
            data = self._convert([frames[i] for i in range(len(frames))], size)
        else:
            data = torch.empty(len(frames), 3, cfg.height, cfg.width, dtype=cfg.dtype.torch_dtype, device=self.device)
            for indices in groups.values():
                data[indices] = self._convert([frames[i] for i in indices], size)
        if isinstance(item, Batch):
            item.data = data
            return item
        return Batch(frames, data=data)

    def _group_key(self, frame: Frame) -> tuple[object, ...]:
        if frame.format not in (PixelFormat.NV12, PixelFormat.RGB):
            raise ValueError(f"preprocess: frame {frame.index} has format {frame.format}; expected nv12 or rgb")
        return (frame.format, tuple(frame.image.shape), *self._colour(frame))

    def _colour(self, frame: Frame) -> tuple[str, bool]:
        info = frame.info
        matrix = self.config.matrix or (ColorMatrix(info.color_space) if info else ColorMatrix.BT709)
        full = self.config.full_range
        if full is None:
            full = info is not None and info.color_range == "full"
        return str(matrix), bool(full)

    def _convert(self, frames: list[Frame], size: tuple[int, int]) -> torch.Tensor:
        cfg = self.config
        images = torch.stack([f.image for f in frames]) if len(frames) > 1 else frames[0].image[None]
        images = images.to(self.device, non_blocking=True)
        if frames[0].format is PixelFormat.NV12:
            matrix, full = self._colour(frames[0])
            # Shrinks the planes before converting: colour conversion at model size, not frame size.
            x, lb = letterbox_resize_nv12(images, size, cfg, matrix=matrix, full_range=full)
        else:
            x, lb = letterbox_resize(images, size, cfg)
        for frame in frames:
            frame.results[cfg.key] = lb
        return x

    @staticmethod
    def letterbox_of(frame: Frame, key: str = "letterbox") -> Letterbox | None:
        """The mapping this stage stored on `frame` (None if it did not see the frame)."""
        value = frame.results.get(key)
        return value if isinstance(value, Letterbox) else None
