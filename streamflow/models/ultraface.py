"""UltraFace (version-RFB-640) face detector: model file, prior boxes and batched output decoding in torch.

UltraFace (https://github.com/Linzaer/Ultra-Light-Fast-Generic-Face-Detector-1MB, MIT) is an SSD-style
detector: four feature maps (strides 8, 16, 32, 64) each predict, for a few square prior boxes per
cell, a face/background score and a box offset. The ONNX file shipped in `models/version-RFB-640.onnx`
takes a static 1x3x480x640 input, RGB normalised as `(pixel - 127) / 128`, and has two outputs:

- `scores` (N, P, 2): softmax over (background, face) for each of the P = 17640 priors;
- `boxes` (N, P, 4): corner-form x1, y1, x2, y2, relative to the input's width and height.

The exported graph already applies the priors (its `boxes` are decoded). A model exported without
that step outputs the raw SSD regression instead; `locations_to_boxes` decodes it with `priors`, the
prior boxes the model was trained with (and the ones baked into the shipped graph; the test checks).

Decoding is batched over the first axis with no per-detection Python: threshold, optional location
decoding, scaling to input pixels, mapping back to source pixels and NMS (`streamflow.detection.batched_nms`)
all run as tensor ops on the outputs' device. The only host syncs size the candidates and the
per-frame split.

Example:
    >>> import torch
    >>> scores = torch.zeros(2, 3, 2); scores[1, 2] = torch.tensor([0.1, 0.9])
    >>> boxes = torch.tensor([0.25, 0.25, 0.5, 0.5]).expand(2, 3, 4)
    >>> dets = decode(scores, boxes, input_hw=(480, 640))
    >>> [len(d) for d in dets], dets[1].boxes.tolist()
    ([0, 1], [[160.0, 120.0, 320.0, 240.0]])
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from streamflow.detection import nms_per_frame, to_source_pixels, transform_table
from streamflow.models.centerface import FaceDetections, OutputMismatchError
from streamflow.ops.resize import Letterbox

__all__ = [
    "CENTER_VARIANCE",
    "INPUT_HW",
    "INPUT_NAME",
    "MEAN",
    "MIN_BOXES",
    "MODEL_PATH",
    "OUTPUT_NAMES",
    "SIZE_VARIANCE",
    "STD",
    "STRIDES",
    "BoxEncoding",
    "check_outputs",
    "decode",
    "locations_to_boxes",
    "priors",
]

#: The model as shipped in the repository (byte-identical to upstream's `models/onnx/version-RFB-640.onnx`).
MODEL_PATH = Path(__file__).resolve().parents[2] / "models" / "version-RFB-640.onnx"
INPUT_NAME = "input"
#: Output names in the order `decode` takes them.
OUTPUT_NAMES: tuple[str, str] = ("scores", "boxes")
#: The input the shipped graph declares (height, width); its priors are laid out for this size.
INPUT_HW = (480, 640)
#: Normalisation the model was trained with: (pixel - MEAN) / STD on RGB 0..255.
MEAN, STD = 127.0, 128.0
#: Feature-map strides and the prior box sizes (input pixels) of each map, as in upstream's training config.
STRIDES = (8, 16, 32, 64)
MIN_BOXES: tuple[tuple[int, ...], ...] = ((10, 16, 24), (32, 48), (64, 96), (128, 192, 256))
#: SSD regression scales: centre offsets are in units of 0.1 prior size, log sizes in units of 0.2.
CENTER_VARIANCE, SIZE_VARIANCE = 0.1, 0.2


class BoxEncoding(enum.StrEnum):
    """What the model's box output holds."""

    CORNERS = "corners"  # decoded x1, y1, x2, y2 relative to the input (the shipped export)
    LOCATIONS = "locations"  # raw SSD regression against `priors` (an export without the decoding step)


def priors(height: int = INPUT_HW[0], width: int = INPUT_HW[1], device: torch.device | str = "cpu") -> torch.Tensor:
    """Prior boxes (P, 4) as centre x, centre y, width, height relative to the input, clamped to [0, 1].

    Order: feature map (stride 8 first), then row, then column, then prior size, which is the order
    of the model's outputs. Each map has ceil(size / stride) cells per axis; cell centres sit at
    (i + 0.5) / cells, so the coarsest map's cells are a little smaller than its stride when the
    size is not a multiple of it (480 / 64 = 7.5 -> 8 rows), as in training.

    Example:
        >>> p = priors()
        >>> p.shape, (p[0] * torch.tensor([80, 60, 640, 480])).tolist()
        (torch.Size([17640, 4]), [0.5, 0.5, 10.0, 10.0])
    """
    parts = []
    for stride, sizes in zip(STRIDES, MIN_BOXES, strict=True):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) / rows
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) / cols
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")  # (rows, cols)
        wh = torch.tensor([[s / width, s / height] for s in sizes], dtype=torch.float64)  # (k, 2)
        centres = torch.stack([grid_x, grid_y], -1)[:, :, None, :].expand(rows, cols, len(sizes), 2)
        parts.append(torch.cat([centres, wh.expand(rows, cols, len(sizes), 2)], -1).reshape(-1, 4))
    return torch.cat(parts).clamp(0.0, 1.0).float().to(device)


def locations_to_boxes(locations: torch.Tensor, prior_boxes: torch.Tensor) -> torch.Tensor:
    """Raw SSD regression (..., P, 4) -> corner-form boxes (..., P, 4) relative to the input.

    centre = prior centre + offset * CENTER_VARIANCE * prior size; size = prior size * exp(log size
    * SIZE_VARIANCE); corners = centre -/+ size / 2.

    Example:
        >>> locations_to_boxes(torch.zeros(1, 4), torch.tensor([[0.5, 0.5, 0.2, 0.4]])).tolist()
        [[0.4000000059604645, 0.30000001192092896, 0.6000000238418579, 0.699999988079071]]
    """
    loc = locations.float()
    centre = prior_boxes[..., :2] + loc[..., :2] * CENTER_VARIANCE * prior_boxes[..., 2:]
    size = prior_boxes[..., 2:] * torch.exp(loc[..., 2:] * SIZE_VARIANCE)
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def check_outputs(
    outputs: Mapping[str, torch.Tensor], names: Sequence[str] = OUTPUT_NAMES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick scores and boxes out of `outputs` and check their shapes: (N, P, 2) and (N, P, 4).

    Example:
        >>> check_outputs({"scores": torch.zeros(1, 5, 2)})
        Traceback (most recent call last):
        ...
        streamflow.models.centerface.OutputMismatchError: UltraFace outputs missing ['boxes']: ...
    """
    expected = f"{names[0]!r}: (N, P, 2), {names[1]!r}: (N, P, 4)"
    missing = [n for n in names if n not in outputs]
    got = ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in outputs.items() if isinstance(v, torch.Tensor)) or "none"
    if missing:
        raise OutputMismatchError(f"UltraFace outputs missing {missing}: expected {expected}; got {got}")
    scores, boxes = outputs[names[0]], outputs[names[1]]
    if (
        scores.ndim != 3
        or boxes.ndim != 3
        or scores.shape[2] != 2
        or boxes.shape[2] != 4
        or scores.shape[:2] != boxes.shape[:2]
    ):
        raise OutputMismatchError(f"UltraFace output shapes don't match: expected {expected}; got {got}")
    return scores, boxes


def decode(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    *,
    input_hw: tuple[int, int] = INPUT_HW,
    threshold: float = 0.7,
    nms_iou: float = 0.3,
    transforms: Sequence[Letterbox] | None = None,
    encoding: BoxEncoding = BoxEncoding.CORNERS,
    max_candidates: int = 4096,
) -> list[FaceDetections]:
    """Turn a batch of UltraFace outputs into per-frame detections in source pixels.

    `scores` (N, P, 2) and `boxes` (N, P, 4), any float dtype, CPU or CUDA. `input_hw` is the model
    input's (height, width), which relative boxes are scaled by. `transforms` (one `Letterbox` per
    frame, from `preprocess`) maps input pixels back to the frame; without it boxes stay in input
    pixels. `max_candidates` caps the priors kept after thresholding (highest scores first).
    UltraFace has no landmarks: `landmarks` is (K, 0, 2).
    """
    n, count, _ = scores.shape
    device = scores.device
    height, width = input_hw
    table = transform_table(transforms, n, input_hw, device)

    face = scores[:, :, 1].float().reshape(-1)
    cand = torch.nonzero(face > threshold).squeeze(1)  # host sync: the number of candidates
    if cand.numel() > max_candidates:
        cand = cand[face[cand].topk(max_candidates).indices]
    if cand.numel() == 0:
        return [_empty(device) for _ in range(n)]
    frame = cand // count
    index = cand % count
    chosen = boxes[frame, index].float()  # (K, 4), only the candidates' rows
    if encoding is BoxEncoding.LOCATIONS:
        if count != _prior_count(height, width):
            raise OutputMismatchError(
                f"UltraFace: {count} boxes per frame, but a {height}x{width} input has "
                f"{_prior_count(height, width)} priors"
            )
        chosen = locations_to_boxes(chosen, priors(height, width, device)[index])
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
    in_source = to_source_pixels(chosen * scale, table[frame])
    no_points = torch.zeros(len(cand), 0, 2, device=device)
    split = nms_per_frame(in_source, face[cand], frame, n, nms_iou, no_points)
    return [FaceDetections(b, s, p) for b, s, p in split]


def _prior_count(height: int, width: int) -> int:
    return sum(
        math.ceil(height / s) * math.ceil(width / s) * len(sizes) for s, sizes in zip(STRIDES, MIN_BOXES, strict=True)
    )


def _empty(device: torch.device) -> FaceDetections:
    return FaceDetections(
        torch.zeros(0, 4, device=device), torch.zeros(0, device=device), torch.zeros(0, 0, 2, device=device)
    )
