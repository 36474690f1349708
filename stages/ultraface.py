"""`ultraface`: decodes UltraFace's outputs into per-frame face boxes and scores.

Reads the two outputs the `infer` stage left in `Batch.results` (by ONNX output name, first axis =
frame): `scores` (N, P, 2) and `boxes` (N, P, 4). Keeps priors whose face score passes `threshold`,
scales their boxes to input pixels (decoding raw SSD locations against the prior boxes first with
`boxes: locations`), maps them back to each frame's own pixels through the `Letterbox` that
`preprocess` stored on it, and runs NMS per frame (`streamflow.detection.batched_nms`, torchvision's
operator, on the outputs' device), all in one pass over the batch. Attaches to every frame the
same keys as `centerface`, so `annotate` and `jsonl` take either detector:

- `results["boxes"]`: (N, 4) float32 x1, y1, x2, y2 in frame pixels
- `results["scores"]`: (N,)
- `results["landmarks"]`: (N, 0, 2): UltraFace predicts no landmarks

The raw outputs, the model input and `results["letterbox"]` are dropped unless `keep_outputs`.

Example (YAML):
    - name: faces
      type: ultraface
      threshold: 0.7
      nms_iou: 0.3

Example (Python):
    >>> import torch
    >>> from fractions import Fraction
    >>> from streamflow.frame import Batch, Frame
    >>> from streamflow.testing import run_stage
    >>> f = Frame(image=torch.zeros(3, 480, 640, dtype=torch.uint8), pts=0, time_base=Fraction(1, 30))
    >>> scores = torch.zeros(1, 4, 2); scores[0, 1] = torch.tensor([0.05, 0.95])
    >>> boxes = torch.tensor([0.25, 0.25, 0.5, 0.5]).expand(1, 4, 4)
    >>> b = Batch([f], results={"scores": scores, "boxes": boxes})
    >>> run_stage(UltraFace(), [b])[0].frames[0].results["boxes"].tolist()
    [[160.0, 120.0, 320.0, 240.0]]
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from streamflow.detection import attach_detections, frame_letterboxes, load_nms
from streamflow.frame import Batch, Frame
from streamflow.models.ultraface import INPUT_HW, OUTPUT_NAMES, BoxEncoding, check_outputs, decode
from streamflow.stage import Stage, StageConfig

__all__ = ["UltraFace"]


class UltraFace(Stage):
    """Score threshold, box decode, mapping back to frame pixels, NMS; see the module docstring."""

    class Config(StageConfig):
        threshold: float = Field(0.7, gt=0.0, lt=1.0, description="minimum face score (softmax) of a prior")
        nms_iou: float = Field(0.3, gt=0.0, le=1.0, description="boxes overlapping more than this are merged")
        outputs: tuple[str, str] = Field(OUTPUT_NAMES, description="result keys of scores and boxes (ONNX names)")
        boxes: BoxEncoding = Field(
            BoxEncoding.CORNERS,
            description="corners: the model decodes its boxes (the shipped export); locations: raw SSD offsets",
        )
        input_height: int = Field(INPUT_HW[0], gt=0, description="model input height (relative boxes scale by it)")
        input_width: int = Field(INPUT_HW[1], gt=0, description="model input width")
        letterbox_key: str = Field("letterbox", description="frame.results key of preprocess's Letterbox")
        max_candidates: int = Field(4096, gt=0, description="cap on priors above threshold, per batch")
        keep_outputs: bool = Field(
            False, description="keep the raw model outputs, the model input and the frames' letterbox mapping"
        )

    uses_gpu: ClassVar[bool] = True

    def setup(self) -> None:
        # The NMS operator is loaded here, before frames flow, not inside the first batch's time.
        load_nms()

    def process(self, item: Frame | Batch) -> Frame | Batch:
        cfg = self.config
        frames = item.frames
        scores, boxes = check_outputs(item.results, cfg.outputs)
        if scores.shape[0] != len(frames):
            raise ValueError(f"ultraface: outputs have {scores.shape[0]} rows but the batch has {len(frames)} frames")
        transforms = frame_letterboxes(frames, cfg.letterbox_key, "ultraface")
        detections = decode(
            scores,
            boxes,
            input_hw=(cfg.input_height, cfg.input_width),
            threshold=cfg.threshold,
            nms_iou=cfg.nms_iou,
            transforms=transforms,
            encoding=cfg.boxes,
            max_candidates=cfg.max_candidates,
        )
        found = attach_detections(
            item, detections, outputs=cfg.outputs, letterbox_key=cfg.letterbox_key, keep_outputs=cfg.keep_outputs
        )
        self.count("faces", found)
        return item
