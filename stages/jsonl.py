"""`jsonl`: write one JSON object per frame (detections, scores, landmarks...) to a file.

Each line is the result message of `streamflow.results` (the same the redis and mqtt sinks send):
`schema`, `source_id`, `index`, `pts` (seconds, or null), `wall_time`, `width`/`height` when known
and `results`: everything the frame carries, with tensors and arrays converted to lists (boxes stay
as the xyxy pixel coordinates postprocessing put there). With many sources, a path holding
`{source}` (`out/{source}.jsonl`) writes one file per source, closed when that source ends;
without it, one file for all, each line naming its source. Lines are written unbuffered, so readers
see them as they come, and whole (`streamflow.linefile.LineFile`): a write that fails half-way
(disk full, file-size limit) is cut back to the last complete line and stops the run with one line
saying how many were kept; a crash never leaves half a line. Missing folders of `path` are created.

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

from typing import Any, ClassVar

from pydantic import Field, field_validator

from streamflow.frame import Batch, Frame
from streamflow.linefile import LineFile
from streamflow.per_source import PerSourceOutputs, check_path_template
from streamflow.results import encode_message, frame_messages, to_jsonable
from streamflow.stage import Stage, StageConfig, StageOutput

__all__ = ["JsonlSink", "to_jsonable"]


class JsonlSink(Stage):
    """Append one JSON line per frame to `path` (created or truncated at setup)."""

    class Config(StageConfig):
        path: str = Field(min_length=1, description="may hold {source}: one file per source")

        _path_template = field_validator("path")(check_path_template)

    is_sink: ClassVar[bool] = True
    output_path_fields: ClassVar[tuple[str, ...]] = ("path",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._files = PerSourceOutputs[LineFile](
            self.config.path, open_writer=LineFile, close_writer=LineFile.close, owner=f"stage {self.name!r}"
        )

    def setup(self) -> None:
        if not self._files.per_source:
            self._files.writer("")  # one file: created (its folders too) before any frame

    @staticmethod
    def record(frame: Frame) -> dict[str, Any]:
        """The JSON object written for `frame` (the result message of `streamflow.results`)."""
        return frame_messages([frame])[0]

    def process(self, item: Frame | Batch) -> StageOutput:
        for frame, message in zip(item.frames, frame_messages(item.frames), strict=True):
            self._files.writer(frame.source_id).write_line(encode_message(message) + b"\n")
        self.count("lines", len(item.frames))
        return None

    def end_source(self, source_id: str) -> StageOutput:
        self._files.close(source_id)
        return None

    def teardown(self) -> None:
        self._files.close_all()
