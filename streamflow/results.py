"""The result message: one JSON object per frame, the same for every result sink (jsonl, redis, mqtt).

A message holds what identifies the frame and what the stages found in it:

- `schema`: the message schema version (`SCHEMA_VERSION`); it changes only when a key changes meaning.
- `source_id`, `index`: the source and the frame's number in it (0, 1, 2...; per source).
- `pts`: presentation time in seconds (null when the source gave none).
- `wall_time`: Unix time in seconds: when a live source received the frame, else when the message was made.
- `width`, `height`: frame size in pixels, when the source knows it.
- `results`: everything stages attached to the frame (`boxes` xyxy pixels, `scores`, `landmarks`...),
  with tensors and arrays as (nested) lists and NaN/inf as null (in the encoded message).

Example:
    >>> import torch
    >>> from streamflow.testing import make_frames
    >>> frame = make_frames(2, source_id="cam1")[1]
    >>> frame.results["scores"] = torch.tensor([0.5, 0.25])
    >>> message = frame_messages([frame], wall_time=1700000000.0)[0]
    >>> message["schema"], message["source_id"], message["index"], round(message["pts"], 4), message["results"]
    (1, 'cam1', 1, 0.0333, {'scores': [0.5, 0.25]})
    >>> encode_message(message)[:40]
    b'{"schema":1,"source_id":"cam1","index":1'
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import torch

from streamflow.frame import Frame

__all__ = ["SCHEMA_VERSION", "encode_message", "frame_messages", "to_jsonable"]

SCHEMA_VERSION = 1


def to_jsonable(value: Any) -> Any:
    """Convert results to plain JSON types: tensors/arrays to (nested) lists, NaN/inf to null.

    A tensor is copied to the host and converted with one `tolist()` call, not element by element.

    Example:
        >>> to_jsonable({"s": torch.tensor([0.5, float("nan")]), "n": np.int64(3)})
        {'s': [0.5, None], 'n': 3}
    """
    if isinstance(value, torch.Tensor):
        return _finite(value.detach().cpu().tolist(), value.is_floating_point())
    if isinstance(value, np.ndarray):
        return _finite(value.tolist(), value.dtype.kind == "f")
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if value is None or isinstance(value, str | int | bool):
        return value
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_jsonable(getattr(value, name)) for name in value.__dataclass_fields__}
    return str(value)


def _finite(values: Any, floating: bool) -> Any:
    """Replace NaN/inf by None in the nested lists of a float tensor; integer tensors need no pass."""
    if not floating:
        return values
    if isinstance(values, list):
        return [_finite(v, True) for v in values]
    return values if math.isfinite(values) else None


def frame_messages(frames: Sequence[Frame], *, wall_time: float | None = None) -> list[dict[str, Any]]:
    """The messages of a batch of frames, in order. `wall_time` (default: now) applies to frames
    without an `arrival_time`; the clock is read once per batch.

    Tensors on an accelerator are converted once per batch: a result that every frame holds as a tensor
    of the same trailing shape (boxes (K, 4) with K varying, scores (K,)...) on the same device is
    concatenated, copied to the host and turned into lists in one go, then split by frame. Host tensors
    are turned into lists one by one: with no copy to save, concatenating them costs more than it spares.
    NaN/inf stay floats in the returned dicts; `encode_message` writes them as null.
    """
    now = time.time() if wall_time is None else wall_time
    converted = _convert_results(frames)
    messages = []
    for frame, results in zip(frames, converted, strict=True):
        message: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "source_id": frame.source_id,
            "index": frame.index,
            "pts": _seconds(frame),
            "wall_time": frame.arrival_time if frame.arrival_time is not None else now,
        }
        if frame.info is not None:
            message["width"], message["height"] = frame.info.width, frame.info.height
        message["results"] = results
        messages.append(message)
    return messages


def _seconds(frame: Frame) -> float | None:
    """`frame.time` without Fraction arithmetic: int / int true division is correctly rounded, so the
    value is the same float as `float(pts * time_base)`, at a fraction of the cost."""
    if frame.pts is None:
        return None
    base = frame.time_base
    return frame.pts * base.numerator / base.denominator


def _convert_results(frames: Sequence[Frame]) -> list[dict[str, Any]]:
    """Each frame's `results` as JSON types, batching the tensor conversions across frames."""
    batched: dict[str, list[Any]] = {}
    if len(frames) > 1:
        for key in frames[0].results:
            values = [frame.results.get(key) for frame in frames]
            rows = _tensor_rows(values)
            if rows is not None:
                batched[key] = rows
    return [
        {str(key): batched[key][i] if key in batched else _plain(value) for key, value in frame.results.items()}
        for i, frame in enumerate(frames)
    ]


def _plain(value: Any) -> Any:
    """`to_jsonable(value)`, with a host tensor's `tolist()` taken as it is: the per-element NaN pass of
    `to_jsonable` costs more than the conversion, and the encoder writes NaN/inf as null anyway."""
    if type(value) is torch.Tensor and value.is_cpu and value.ndim > 0:
        return value.tolist()
    return to_jsonable(value)


def _tensor_rows(values: list[Any]) -> list[Any] | None:
    """Per-frame lists of tensors that concatenate along their first axis, converted at once; else None."""
    first = values[0]
    if not isinstance(first, torch.Tensor) or first.dim() == 0 or first.is_cpu:
        return None
    for value in values:
        if (
            not isinstance(value, torch.Tensor)
            or value.dim() == 0
            or value.shape[1:] != first.shape[1:]
            or value.dtype != first.dtype
            or value.device != first.device
        ):
            return None
    with torch.no_grad():
        joined = torch.cat(values).cpu()
    # NaN/inf stay floats here: `encode_message` writes them as null (a per-element pass costs more than the rest).
    rows = joined.tolist()
    out = []
    start = 0
    for value in values:
        end = start + value.shape[0]
        out.append(rows[start:end])
        start = end
    return out


def encode_message(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as every sink sends it; NaN and inf become null.

    orjson writes the same text as `json.dumps(..., separators=(",", ":"))` (shortest float repr,
    keys in insertion order) roughly ten times faster, and turns non-finite floats into null.

    Example:
        >>> encode_message({"pts": 0.5, "scores": [float("nan"), 1.0]})
        b'{"pts":0.5,"scores":[null,1.0]}'
    """
    return orjson.dumps(message)
