"""What an actor tells the driver about each of its sources: how far results were delivered.

`ProgressObserver` watches one pipeline. A frame counts as delivered when the last stage (the sink)
has handled it; `delivered` is the highest such index, which is also the resume point after a
failover, because each source's frames reach the sink in order. A source is `drained` when its end
of stream passed the sink, so its outputs are final. `fps` is the delivered rate over the source's
active time: the load the source puts on its actor, which placement balances.

Example:
    >>> from streamflow.testing import make_frames
    >>> progress = ProgressObserver()
    >>> progress.on_start([], {})
    >>> progress.on_source_added("cam1", None, None)
    >>> progress.sink_name = "sink"
    >>> class Sink: name = "sink"
    >>> progress.on_processed(Sink(), make_frames(3, source_id="cam1"), [], 0.0)
    >>> progress.report()["cam1"].delivered
    2
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamflow.frame import Frame
from streamflow.observers import Observer

if TYPE_CHECKING:
    from streamflow.edge import Edge
    from streamflow.stage import Stage

__all__ = ["ProgressObserver", "SourceProgress"]


@dataclass(slots=True)
class SourceProgress:
    """One source on one actor (plain data: it crosses to the driver)."""

    delivered: int = -1  # highest frame index the sink handled; -1: none yet
    frames: int = 0  # frames the sink handled
    first_at: float | None = None
    last_at: float | None = None
    ended: str | None = None  # the source's end reason (finished, removed, failed: ...)
    error: str | None = None
    drained: bool = False  # its end of stream passed the sink: outputs final

    @property
    def fps(self) -> float:
        if self.first_at is None or self.last_at is None or self.frames < 2:
            return 0.0
        span = self.last_at - self.first_at
        return (self.frames - 1) / span if span > 0 else 0.0


class ProgressObserver(Observer):
    """Per-source delivery progress of one pipeline; `report()` is safe from any thread."""

    def __init__(self) -> None:
        self.sink_name: str | None = None
        self._lock = threading.Lock()  # the pipeline's loop writes, the actor's call thread reads
        self._sources: dict[str, SourceProgress] = {}

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Edge]) -> None:
        self.sink_name = stages[-1].name if stages else None

    def on_source_added(self, source_id: str, stage: Stage | None, edge: Edge | None) -> None:
        with self._lock:
            self._sources[source_id] = SourceProgress()

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        if stage.name != self.sink_name or not frames_in:
            return
        now = time.monotonic()
        with self._lock:
            for frame in frames_in:
                progress = self._sources.get(frame.source_id)
                if progress is None:
                    continue
                progress.frames += 1
                progress.delivered = max(progress.delivered, frame.index)
                progress.first_at = progress.first_at if progress.first_at is not None else now
                progress.last_at = now

    def on_source_ended(self, source_id: str, reason: str, error: str | None) -> None:
        with self._lock:
            progress = self._sources.setdefault(source_id, SourceProgress())
            progress.ended, progress.error = reason, error

    def on_source_drained(self, source_id: str) -> None:
        with self._lock:
            self._sources.setdefault(source_id, SourceProgress()).drained = True

    def report(self) -> dict[str, SourceProgress]:
        """A copy of every source's progress."""
        with self._lock:
            return {
                source_id: SourceProgress(p.delivered, p.frames, p.first_at, p.last_at, p.ended, p.error, p.drained)
                for source_id, p in self._sources.items()
            }
