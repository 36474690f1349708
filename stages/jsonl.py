"""`jsonl`: write one JSON object per frame (detections, scores, landmarks...) to a file.

Each line is the result message of `streamflow.results` (the same the redis and mqtt sinks send):
`schema`, `source_id`, `index`, `pts` (seconds, or null), `wall_time`, `width`/`height` when known
and `results`: everything the frame carries, with tensors and arrays converted to lists (boxes stay
as the xyxy pixel coordinates postprocessing put there). Each line is written with a single
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

from pathlib import Path
from typing import IO, Any

from pydantic import Field

from streamflow.frame import Batch, Frame
from streamflow.results import encode_message, frame_messages, to_jsonable
from streamflow.stage import Stage, StageConfig, StageOutput

__all__ = ["JsonlSink", "to_jsonable"]


class JsonlSink(Stage):
    """Append one JSON line per frame to `path` (created or truncated at setup)."""

    class Config(StageConfig):
        path: str = Field(min_length=1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._file: IO[bytes] | None = None

    def setup(self) -> None:
        path = Path(self.config.path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {self.config.path!r}: directory {str(path.parent)!r} does not exist")
        # Unbuffered binary: each line goes to the OS in one write() call, never split across two.
        self._file = path.open("wb", buffering=0)

    @staticmethod
    def record(frame: Frame) -> dict[str, Any]:
        """The JSON object written for `frame` (the result message of `streamflow.results`)."""
        return frame_messages([frame])[0]

    def process(self, item: Frame | Batch) -> StageOutput:
        assert self._file is not None, "setup() runs before process()"
        for message in frame_messages(item.frames):
            data = encode_message(message) + b"\n"
            written = self._file.write(data)
            if written != len(data):
                # A short write (disk full) would leave a partial line; a second write completes it.
                self._file.write(data[written or 0 :])
        self.count("lines", len(item.frames))
        return None

    def teardown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
