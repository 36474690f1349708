"""`annotate`: draws detections into each frame's image in place, on the frame's device.

`mode: boxes` draws box outlines (and landmarks with `landmarks: true`), `blur` blurs every box,
`pixelate` replaces it with coarse tiles (face anonymisation). Works on RGB `(3, H, W)` and NV12
`(H*3//2, W)` frames with tensor ops only: no copy to the CPU, no per-box Python loop. Reads
`results["boxes"]` (N, 4) xyxy frame pixels and `results["landmarks"]` (N, K, 2), as the
`centerface` stage writes them; frames without boxes pass unchanged.

Example (YAML):
    - name: annotate
      type: annotate
      mode: blur        # boxes | blur | pixelate

Example (Python):
    >>> import torch
    >>> from fractions import Fraction
    >>> from streamflow.frame import Frame
    >>> from streamflow.testing import run_stage
    >>> f = Frame(image=torch.zeros(3, 16, 16, dtype=torch.uint8), pts=0, time_base=Fraction(1, 30))
    >>> f.results["boxes"] = torch.tensor([[2.0, 2.0, 10.0, 10.0]])
    >>> out = run_stage(Annotate(color=(255, 0, 0), thickness=1), [f])
    >>> int(out[0].image[0, 2, 5]), int(out[0].image[0, 5, 5])
    (255, 0)
"""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar

import torch
from pydantic import Field

from streamflow.frame import Batch, Frame, PixelFormat
from streamflow.ops.draw import FrameLayout, blur_boxes, draw_boxes, draw_points, pixelate_boxes
from streamflow.stage import Stage, StageConfig

__all__ = ["Annotate", "AnnotateMode"]

Channel = Annotated[int, Field(ge=0, le=255)]


class AnnotateMode(enum.StrEnum):
    """What is drawn for each detection."""

    BOXES = "boxes"  # outlines (and landmarks if enabled)
    BLUR = "blur"  # blur the box region
    PIXELATE = "pixelate"  # coarse tiles over the box region


class Annotate(Stage):
    """Draws boxes or blurs/pixelates them in each frame's image, in place."""

    class Config(StageConfig):
        mode: AnnotateMode = Field(AnnotateMode.BOXES, description="boxes | blur | pixelate")
        color: tuple[Channel, Channel, Channel] = Field((0, 255, 0), description="RGB colour of box outlines")
        thickness: int = Field(2, ge=1, description="box outline width in pixels")
        landmarks: bool = Field(True, description="boxes mode: also draw landmarks (if present)")
        landmark_color: tuple[Channel, Channel, Channel] = Field((255, 0, 0), description="RGB colour of landmarks")
        landmark_radius: int = Field(2, ge=0, description="landmark square half-size in pixels")
        strength: int = Field(16, ge=2, description="blur: feature size removed / pixelate: tile size, in pixels")
        margin: float = Field(0.0, ge=0.0, description="blur/pixelate: grow each box by this fraction per side")
        boxes_key: str = Field("boxes", description="frame.results key of the (N, 4) boxes")
        landmarks_key: str = Field("landmarks", description="frame.results key of the (N, K, 2) landmarks")

    uses_gpu: ClassVar[bool] = True

    def process(self, item: Frame | Batch) -> Frame | Batch:
        for frame in item.frames:
            self._annotate(frame)
        return item

    def _annotate(self, frame: Frame) -> None:
        cfg = self.config
        boxes = frame.results.get(cfg.boxes_key)
        if boxes is None:
            return
        if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise ValueError(f"annotate: results[{cfg.boxes_key!r}] must be an (N, 4) tensor, got {shape}")
        if frame.format is PixelFormat.RGB:
            layout = FrameLayout.RGB
        elif frame.format is PixelFormat.NV12:
            layout = FrameLayout.NV12
        else:
            raise ValueError(f"annotate: frame {frame.index} has format {frame.format}; expected rgb or nv12")
        image = frame.image
        if boxes.shape[0] == 0:
            return
        boxes = boxes.to(image.device, non_blocking=True)
        if cfg.mode is AnnotateMode.BOXES:
            draw_boxes(image, boxes, color=cfg.color, thickness=cfg.thickness, layout=layout)
            points = frame.results.get(cfg.landmarks_key)
            if cfg.landmarks and isinstance(points, torch.Tensor) and points.numel():
                draw_points(image, points, color=cfg.landmark_color, radius=cfg.landmark_radius, layout=layout)
            return
        if cfg.margin:
            grow = (boxes[:, 2:] - boxes[:, :2]) * cfg.margin
            boxes = torch.cat([boxes[:, :2] - grow, boxes[:, 2:] + grow], dim=1)
        if cfg.mode is AnnotateMode.BLUR:
            blur_boxes(image, boxes, strength=cfg.strength, layout=layout)
        else:
            pixelate_boxes(image, boxes, block=cfg.strength, layout=layout)
