"""`discard`: a sink that discards frames, for benchmarks and for trying a pipeline without outputs.

It runs on the host, so the runner waits (in this stage's thread) for each item's CUDA event before
handing it over: a benchmark that ends in `discard` counts finished GPU work, not queued work.

The type was first registered as `null`, which still works when quoted (`type: "null"`): unquoted,
YAML reads `null` as no value at all.

Example (YAML):
    - name: sink
      type: discard
"""

from __future__ import annotations

from typing import ClassVar

from streamflow.frame import Batch, Frame
from streamflow.stage import Stage

__all__ = ["NullSink"]


class NullSink(Stage):
    """Consumes and discards every frame."""

    is_sink: ClassVar[bool] = True

    def process(self, item: Frame | Batch) -> None:
        return None
