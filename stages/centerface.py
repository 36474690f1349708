"""`centerface`: decodes CenterFace's raw outputs into per-frame face boxes, scores and landmarks.

Reads the four outputs the `infer` stage left in `Batch.results` (by ONNX output name, first axis =
frame): heatmap, scale, offset, landmarks. Thresholds the heatmap, decodes boxes and landmarks,
runs NMS per frame (`torchvision.ops.batched_nms`, on the outputs' device) and maps everything back
to each frame's own pixels through the `Letterbox` that `preprocess` stored on it. Attaches to
every frame:

- `results["boxes"]`: (N, 4) float32 x1, y1, x2, y2 in frame pixels
- `results["scores"]`: (N,)
- `results["landmarks"]`: (N, 5, 2) x, y

The raw outputs, the model input and `results["letterbox"]` are dropped unless `keep_outputs`.
A model whose outputs are not CenterFace's fails the first batch with an error naming the expected
and the actual output names and shapes.

Example (YAML):
    - name: postprocess
      type: centerface
      threshold: 0.5
      nms_iou: 0.3

Example (Python):
    >>> import torch
    >>> from fractions import Fraction
    >>> from streamflow.frame import Batch, Frame
    >>> from streamflow.testing import run_stage
    >>> f = Frame(image=torch.zeros(3, 32, 32, dtype=torch.uint8), pts=0, time_base=Fraction(1, 30))
    >>> heat = torch.zeros(1, 1, 8, 8); heat[0, 0, 4, 4] = 0.9
    >>> z = torch.zeros(1, 2, 8, 8)
    >>> b = Batch([f], results={"537": heat, "538": z, "539": z, "540": torch.zeros(1, 10, 8, 8)})
    >>> run_stage(CenterFace(), [b])[0].frames[0].results["boxes"].tolist()
    [[16.0, 16.0, 20.0, 20.0]]
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from streamflow.detection import attach_detections, frame_letterboxes, load_nms
from streamflow.frame import Batch, Frame
from streamflow.models.centerface import OUTPUT_NAMES, check_outputs, decode
from streamflow.stage import Stage, StageConfig

__all__ = ["CenterFace"]


class CenterFace(Stage):
    """The `centerface` stage: CenterFace's outputs to face boxes (heatmap threshold, decode, NMS, mapping back)."""

    class Config(StageConfig):
        threshold: float = Field(0.5, gt=0.0, lt=1.0, description="minimum heatmap score of a face")
        nms_iou: float = Field(0.3, gt=0.0, le=1.0, description="boxes overlapping more than this are merged")
        outputs: tuple[str, str, str, str] = Field(
            OUTPUT_NAMES, description="result keys of heatmap, scale, offset, landmarks (ONNX output names)"
        )
        letterbox_key: str = Field("letterbox", description="frame.results key of preprocess's Letterbox")
        max_candidates: int = Field(4096, gt=0, description="cap on heatmap cells above threshold, per batch")
        keep_outputs: bool = Field(
            False, description="keep the raw model outputs, the model input and the frames' letterbox mapping"
        )

    uses_gpu: ClassVar[bool] = True

    def setup(self) -> None:
        # The NMS operator is loaded here, before frames flow, not inside the first batch's time.
        load_nms()
        # So are the decoding's kernels: on a GPU their first launch loads them (a third of a second
        # on the H200, docs/MEASURED.md), which would otherwise delay the first batch's results.
        heatmap = torch.zeros(1, 1, 4, 4, device=self.device)
        heatmap[0, 0, 1, 1] = 1.0  # one face: thresholding, NMS and the box arithmetic all run
        zeros = torch.zeros(1, 2, 4, 4, device=self.device)
        decode(heatmap, zeros, zeros, torch.zeros(1, 10, 4, 4, device=self.device), threshold=self.config.threshold)

    def process(self, item: Frame | Batch) -> Frame | Batch:
        cfg = self.config
        frames = item.frames
        heatmap, scale, offset, landmarks = check_outputs(item.results, cfg.outputs)
        if heatmap.shape[0] != len(frames):
            raise ValueError(f"centerface: outputs have {heatmap.shape[0]} rows but the batch has {len(frames)} frames")
        transforms = frame_letterboxes(frames, cfg.letterbox_key, "centerface")
        detections = decode(
            heatmap,
            scale,
            offset,
            landmarks,
            threshold=cfg.threshold,
            nms_iou=cfg.nms_iou,
            transforms=transforms,
            max_candidates=cfg.max_candidates,
        )
        found = attach_detections(
            item, detections, outputs=cfg.outputs, letterbox_key=cfg.letterbox_key, keep_outputs=cfg.keep_outputs
        )
        self.count("faces", found)
        return item

    @staticmethod
    def detections(frame: Frame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (boxes, scores, landmarks) this stage attached to `frame`."""
        return frame.results["boxes"], frame.results["scores"], frame.results["landmarks"]
