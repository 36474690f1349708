"""Metrics are collected by observers the runner notifies, never by stage code.

The runner calls `on_start`, then `on_processed` once per call of a stage hook (with the frames that
went in and came out and the time the hook took), and `on_end`. `StatsCollector` is the built-in
observer behind `RunStats`: per-stage frames, fps, busy fraction, latency percentiles, queue depth
and drops. Write your own observer by subclassing `Observer` and passing it to `Pipeline`.

Example:
    >>> class CountFrames(Observer):
    ...     def __init__(self):
    ...         self.frames = 0
    ...     def on_processed(self, stage, frames_in, frames_out, busy_s):
    ...         self.frames += len(frames_out)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from streamflow.frame import Frame

if TYPE_CHECKING:
    from streamflow.edge import Edge
    from streamflow.stage import Stage

__all__ = ["Observer", "RunStats", "StageStats", "StatsCollector", "percentile"]

# Latency samples kept per stage: enough for stable p99 on long runs without unbounded memory.
_MAX_LATENCY_SAMPLES = 100_000


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Observer:
    """Receives run events; all methods are optional. Called on the event loop: keep them cheap."""

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Edge]) -> None:
        """The pipeline is set up and about to run."""

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        """A stage hook returned. `frames_in` is empty for sources and flushes."""

    def on_end(self, stats: RunStats) -> None:
        """The run finished (successfully or not); `stats` is final."""


@dataclass(slots=True)
class StageStats:
    name: str
    type: str
    device: str
    frames_in: int = 0
    frames_out: int = 0
    calls: int = 0
    busy_s: float = 0.0
    first_out: float | None = None
    last_out: float | None = None
    queue_capacity: int | None = None
    queue_overflow: str | None = None
    queue_max_depth: int = 0
    queue_depth: int = 0
    dropped: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list, repr=False)
    capture_latency_ms: list[float] = field(default_factory=list, repr=False)

    def fps(self, wall_s: float) -> float:
        frames = self.frames_out or self.frames_in
        return frames / wall_s if wall_s > 0 else 0.0

    def summary(self, wall_s: float) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("latency_ms", "capture_latency_ms")}
        data["fps"] = round(self.fps(wall_s), 2)
        data["busy_pct"] = round(100 * self.busy_s / wall_s, 1) if wall_s > 0 else 0.0
        for label, samples in (("latency_ms", self.latency_ms), ("capture_latency_ms", self.capture_latency_ms)):
            if samples:
                data[label] = {f"p{q}": round(percentile(samples, q) or 0.0, 3) for q in (50, 95, 99)}
        return data


@dataclass(slots=True)
class RunStats:
    """What a run did, per stage. `wall_s` runs from the first frame leaving the source to the end."""

    pipeline: str
    wall_s: float
    stages: list[StageStats]
    stopped_by: str | None = None  # "SIGINT", "SIGTERM", "stop()" or None for a natural end
    #: Stages abandoned while a hook had not returned (a second signal or the stop timeout).
    unfinished: list[str] = field(default_factory=list)
    #: One-line warnings about the run as a whole (frames lost, stages abandoned).
    warnings: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StageStats:
        for stats in self.stages:
            if stats.name == name:
                return stats
        raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "wall_s": round(self.wall_s, 4),
            "stopped_by": self.stopped_by,
            "unfinished": self.unfinished,
            "warnings": self.warnings,
            "stages": [s.summary(self.wall_s) for s in self.stages],
        }


class StatsCollector(Observer):
    """The built-in observer: turns run events into `RunStats`."""

    def __init__(self, pipeline_name: str) -> None:
        self.pipeline_name = pipeline_name
        self._stats: dict[str, StageStats] = {}
        self._stages: Sequence[Stage] = ()
        self._edges: dict[str, Edge] = {}
        self._source_name: str | None = None
        self._sink_name: str | None = None
        self.start_time: float | None = None

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Edge]) -> None:
        self._stages = stages
        self._edges = edges
        self._source_name = stages[0].name if stages else None
        self._sink_name = stages[-1].name if stages else None
        for stage in stages:
            stats = StageStats(name=stage.name, type=type(stage).__name__, device=str(stage.device))
            edge = edges.get(stage.name)
            if edge is not None:
                stats.queue_capacity = edge.capacity
                stats.queue_overflow = edge.overflow.value
            self._stats[stage.name] = stats

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        now = time.perf_counter()
        stats = self._stats[stage.name]
        stats.calls += 1
        stats.busy_s += busy_s
        stats.frames_in += len(frames_in)
        stats.frames_out += len(frames_out)
        # A frame is "done" where it leaves its last stage: that stage emits nothing downstream.
        done = frames_in if stage.name == self._sink_name else frames_out
        if not done:
            return
        if stats.first_out is None:
            stats.first_out = now
        stats.last_out = now
        if self.start_time is None:
            self.start_time = now
        if len(stats.latency_ms) >= _MAX_LATENCY_SAMPLES:
            return
        wall_now = time.time()
        for frame in done:
            born = frame.timestamps.get(self._source_name) if self._source_name else None
            if born is not None:
                stats.latency_ms.append((now - born) * 1000)
            if frame.arrival_time is not None:
                stats.capture_latency_ms.append((wall_now - frame.arrival_time) * 1000)

    def snapshot(self) -> RunStats:
        """Current figures (queue depths and counters read live)."""
        for stage in self._stages:
            stats = self._stats[stage.name]
            stats.counters = dict(stage.counters)
            edge = self._edges.get(stage.name)
            if edge is not None:
                stats.queue_depth = edge.depth
                stats.queue_max_depth = edge.max_depth
                stats.dropped = edge.dropped
        wall = time.perf_counter() - self.start_time if self.start_time is not None else 0.0
        return RunStats(self.pipeline_name, wall, [self._stats[s.name] for s in self._stages])
