"""The result message: one JSON object per frame, the same for every result sink (jsonl, redis, mqtt).

A message holds what identifies the frame and what the stages found in it:

- `schema`: the message schema version (`SCHEMA_VERSION`); it changes only when a key changes meaning.
- `source_id`, `index`: the source and the frame's number in it (0, 1, 2...; per source).
- `pts`: presentation time in seconds (null when the source gave none).
- `wall_time`: Unix time in seconds: when a live source received the frame, else when the message was made.
- `width`, `height`: frame size in pixels, when the source knows it.
- `results`: everything stages attached to the frame (`boxes` xyxy pixels, `scores`, `landmarks`...),
  with tensors and arrays as (nested) lists and NaN/inf as null.

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
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
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
    without an `arrival_time`; the clock is read once per batch."""
    now = time.time() if wall_time is None else wall_time
    messages = []
    for frame in frames:
        message: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "source_id": frame.source_id,
            "index": frame.index,
            "pts": frame.time,
            "wall_time": frame.arrival_time if frame.arrival_time is not None else now,
        }
        if frame.info is not None:
            message["width"], message["height"] = frame.info.width, frame.info.height
        message["results"] = to_jsonable(frame.results)
        messages.append(message)
    return messages


def encode_message(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as every sink sends it (NaN is already null: `allow_nan=False` guards it)."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
