"""`jsonl`: write one JSON object per frame (detections, scores, landmarks...) to a file.

Each line holds `source_id`, `index`, `pts` (seconds, or null), `width`/`height` when known and
`results`: everything the frame carries, with tensors and arrays converted to lists (boxes stay
as the xyxy pixel coordinates postprocessing put there). With many sources, a path holding
`{source}` (`out/{source}.jsonl`) writes one file per source, closed when that source ends;
without it, one file for all, each line naming its source. Each line is written with a single
unbuffered `write`, so a crash never leaves half a line and readers see lines as they come.

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
from typing import IO, Any

import numpy as np
import torch
from pydantic import Field, field_validator

from streamflow.frame import Batch, Frame
from streamflow.per_source import PerSourceOutputs, check_path_template
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
        path: str = Field(min_length=1, description="may hold {source}: one file per source")

        _path_template = field_validator("path")(check_path_template)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Unbuffered binary: each line goes to the OS in one write() call, never split across two.
        self._files = PerSourceOutputs[IO[bytes]](
            self.config.path,
            open_writer=lambda path: Path(path).open("wb", buffering=0),  # noqa: SIM115 (closed by close_writer)
            close_writer=lambda file: file.close(),
        )

    def setup(self) -> None:
        if not self._files.per_source:
            self._files.writer("")  # one file: created (and its directory checked) before any frame

    @staticmethod
    def record(frame: Frame) -> dict[str, Any]:
        """The JSON object written for `frame`."""
        line: dict[str, Any] = {"source_id": frame.source_id, "index": frame.index, "pts": frame.time}
        if frame.info is not None:
            line["width"], line["height"] = frame.info.width, frame.info.height
        line["results"] = to_jsonable(frame.results)
        return line

    def process(self, item: Frame | Batch) -> StageOutput:
        for frame in item.frames:
            file = self._files.writer(frame.source_id)
            data = (json.dumps(self.record(frame), separators=(",", ":"), allow_nan=False) + "\n").encode()
            written = file.write(data)
            if written != len(data):
                # A short write (disk full) would leave a partial line; a second write completes it.
                file.write(data[written or 0 :])
        self.count("lines", len(item.frames))
        return None

    def end_source(self, source_id: str) -> StageOutput:
        self._files.close(source_id)
        return None

    def teardown(self) -> None:
        self._files.close_all()
