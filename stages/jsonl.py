"""`jsonl`: write one JSON object per frame (detections, scores, landmarks...) to a file.

Each line holds `source_id`, `index`, `pts` (seconds, or null), `width`/`height` when known and
`results`: everything the frame carries, with tensors and arrays converted to lists (boxes stay
as the xyxy pixel coordinates postprocessing put there). Lines are written unbuffered, so readers
see them as they come, and whole (`streamflow.linefile.LineFile`): a write that fails half-way
(disk full, file-size limit) is cut back to the last complete line and stops the run with one line
saying how many were kept; a crash never leaves half a line.

Example (YAML):
    - name: detections
      type: jsonl
      path: out/detections.jsonl

Example (Python):
    >>> import json, tempfile, pathlib, torch
    >>> from streamflow.testing import make_frames, run_stage
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
    >>> frames = make_frames(2)
    >>> frames[0].results["boxes"] = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> _ = run_stage(JsonlSink(path=str(path)), frames)
    >>> json.loads(path.read_text().splitlines()[0])["results"]
    {'boxes': [[1.0, 2.0, 3.0, 4.0]]}
"""

from __future__ import annotations

import enum
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from streamflow.frame import Batch, Frame
from streamflow.linefile import LineFile
from streamflow.preflight import ensure_output_folder
from streamflow.stage import Stage, StageConfig, StageOutput

__all__ = ["JsonlSink", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """Convert results to plain JSON types: tensors/arrays to (nested) lists, NaN/inf to null.

    Example:
        >>> to_jsonable({"s": torch.tensor([0.5, float("nan")]), "n": np.int64(3)})
        {'s': [0.5, None], 'n': 3}
    """
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
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


class JsonlSink(Stage):
    """Append one JSON line per frame to `path` (created or truncated at setup)."""

    class Config(StageConfig):
        path: str = Field(min_length=1)

    is_sink: ClassVar[bool] = True
    output_path_fields: ClassVar[tuple[str, ...]] = ("path",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._file: LineFile | None = None

    def setup(self) -> None:
        path = Path(self.config.path)
        ensure_output_folder(path, owner=f"stage {self.name!r}")
        self._file = LineFile(path)

    @staticmethod
    def record(frame: Frame) -> dict[str, Any]:
        """The JSON object written for `frame`."""
        line: dict[str, Any] = {"source_id": frame.source_id, "index": frame.index, "pts": frame.time}
        if frame.info is not None:
            line["width"], line["height"] = frame.info.width, frame.info.height
        line["results"] = to_jsonable(frame.results)
        return line

    def process(self, item: Frame | Batch) -> StageOutput:
        assert self._file is not None, "setup() runs before process()"
        for frame in item.frames:
            data = (json.dumps(self.record(frame), separators=(",", ":"), allow_nan=False) + "\n").encode()
            self._file.write_line(data)
        self.count("lines", len(item.frames))
        return None

    def teardown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
