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

import gc
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from streamflow.frame import Frame

if TYPE_CHECKING:
    from streamflow.edge import Edge
    from streamflow.stage import Stage

__all__ = [
    "FreezeObjectsAfterSetup",
    "Observer",
    "ResultTimes",
    "RunStats",
    "SourceStats",
    "StageStats",
    "StartupTimes",
    "StatsCollector",
    "percentile",
]

# Latency samples kept per stage: enough for stable p99 on long runs without unbounded memory.
_MAX_LATENCY_SAMPLES = 100_000
# Per source: fewer, since a run may have hundreds of sources (p95 stays stable at this count).
_MAX_SOURCE_SAMPLES = 10_000


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

    def on_stage_set_up(self, stage: Stage, seconds: float) -> None:
        """A stage after the sources finished its `setup` (model loads happen here), in `seconds`;
        stages set up one after another, before `on_start`. (A source's is `on_source_opened`.)"""

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Edge]) -> None:
        """The pipeline is set up and about to run."""

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        """A stage hook returned. `frames_in` is empty for sources and flushes."""

    def on_source_added(self, source_id: str, stage: Stage | None, edge: Edge | None) -> None:
        """A source starts (at the beginning or added at run time). `stage` is None for one that
        could not be built; `edge` is the queue it feeds."""

    def on_source_opened(self, source_id: str) -> None:
        """A source's input is open (its `setup` returned): it starts producing frames."""

    def on_source_ended(self, source_id: str, reason: str, error: str | None) -> None:
        """A source ended: `reason` is finished, removed, a stop reason or `failed: ...`."""

    def on_source_drained(self, source_id: str) -> None:
        """A source's end of stream passed the last stage: every frame it produced was handled there."""

    def on_end(self, stats: RunStats) -> None:
        """The run finished (successfully or not); `stats` is final."""


class StartupTimes(Observer):
    """Where the time from launch to the first result goes, step by step.

    Steps are stamped (perf_counter) in the order they happen: whoever launches the run can add
    its own with `mark` (the CLI: imports, config, building, preflight), then the runner's events
    add each stage's `setup`, every configured source open, the first frame out of a source, each
    stage's first call on a frame (lazy work such as a model prepared for the first input size
    shows there) and the first result out of the last stage. `launched` is when the clock starts
    (the CLI passes the process's own start time); default: when this observer was made.

    Example:
        >>> from streamflow import Pipeline
        >>> from streamflow.testing import ListSink, ListSource, make_frames
        >>> startup = StartupTimes()
        >>> _ = Pipeline([ListSource(make_frames(2)), ListSink(name="sink")], observers=[startup]).run_sync()
        >>> [step["step"] for step in startup.summary()["steps"]][-2:]
        ['sink: first call', 'first result']
    """

    def __init__(self, launched: float | None = None) -> None:
        self.launched = time.perf_counter() if launched is None else launched
        self.marks: list[tuple[str, float]] = []
        # Sources that started with the run: those added before any opened (all of a config's are
        # added at once; any added later, over the API say, come after).
        self._configured = 0
        self._opened = 0
        self._first_frame = False
        self._called: set[str] = set()
        self._last = ""
        self._done = False

    def mark(self, step: str, at: float | None = None) -> None:
        self.marks.append((step, time.perf_counter() if at is None else at))

    def on_stage_set_up(self, stage: Stage, seconds: float) -> None:
        self.mark(f"{stage.name}: setup")

    def on_source_added(self, source_id: str, stage: Stage | None, edge: Edge | None) -> None:
        if self._opened == 0:
            self._configured += 1

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Edge]) -> None:
        self._last = stages[-1].name if stages else ""

    def on_source_opened(self, source_id: str) -> None:
        self._opened += 1
        if self._opened == 1:
            self.mark("first source open")
        if self._opened == self._configured and self._configured > 1:
            self.mark(f"all {self._configured} sources open")

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        if self._done:
            return
        if not frames_in:
            if frames_out and not self._first_frame:
                self._first_frame = True
                self.mark("first frame out of a source")
            return
        if stage.name not in self._called:
            self._called.add(stage.name)
            self.mark(f"{stage.name}: first call")
        if stage.name == self._last:
            self.mark("first result")
            self._done = True

    def summary(self) -> dict[str, Any]:
        """`steps`: each step's time since launch (`at_s`) and since the step before (`took_s`);
        `first_result_s`: launch to the first result (None if none came)."""
        steps, previous = [], self.launched
        for step, at in self.marks:
            steps.append({"step": step, "at_s": round(at - self.launched, 3), "took_s": round(at - previous, 3)})
            previous = at
        first = next((s["at_s"] for s in steps if s["step"] == "first result"), None)
        return {"first_result_s": first, "steps": steps}

    def line(self) -> str:
        """One line: the first result's time after launch and each step's own share."""
        summary = self.summary()
        if summary["first_result_s"] is None:
            return "start-up: no result came"
        parts = ", ".join(f"{s['step']} {s['took_s']:.2f}" for s in summary["steps"])
        return f"start-up: first result {summary['first_result_s']:.2f} s after launch ({parts})"


class ResultTimes(Observer):
    """When results leave the last stage: one `time.perf_counter()` per frame, appended per call,
    and beside it the frame's capture latency (ms from its arrival to now; NaN for frames without an
    arrival time), so that a benchmark can take the latency of the results after its warm-up. With
    each result batch it also notes how many frames the sources' edges have dropped so far (when that
    changed), so that drops after the warm-up can be told from drops while the pipeline started.

    For benchmarks over a bounded run (memory grows with frames). On Linux `perf_counter` reads
    the system-wide monotonic clock, so the times of worker processes on one machine merge.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.capture_latency_ms: list[float] = []
        #: (perf_counter time, frames dropped so far by all source edges), whenever that count changed.
        self.drops: list[tuple[float, int]] = []
        self._source_edges: list[Edge] = []
        self._sink: str | None = None

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Edge]) -> None:
        self._sink = stages[-1].name

    def on_source_added(self, source_id: str, stage: Stage | None, edge: Edge | None) -> None:
        if edge is not None:
            self._source_edges.append(edge)

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        if stage.name == self._sink and frames_in:
            now_counter = time.perf_counter()
            self.times.extend([now_counter] * len(frames_in))
            dropped = sum(edge.dropped for edge in self._source_edges)
            if dropped != (self.drops[-1][1] if self.drops else 0):
                self.drops.append((now_counter, dropped))
            now = time.time()  # arrival times are wall-clock
            self.capture_latency_ms.extend(
                math.nan if frame.arrival_time is None else (now - frame.arrival_time) * 1000 for frame in frames_in
            )


class FreezeObjectsAfterSetup(Observer):
    """Once every stage is set up: one full garbage collection, then `gc.freeze()`, so that what is
    alive then (imported modules, loaded models, the configured stages) is never scanned again.

    Why: a collection of the oldest generation scans every tracked object while holding the GIL,
    so every thread of the pipeline (and the control API) stops for it, and imports and models are
    nearly all of those objects and live as long as the process. Frozen objects are still freed
    when their last reference goes, but a reference cycle among them is never collected. A choice
    for the whole process, made by `streamflow run` (one pipeline per process); `gc.unfreeze()`
    undoes it. The one collection runs on the loop before the sources start.

    Example:
        >>> from streamflow import Pipeline
        >>> from streamflow.testing import ListSink, ListSource, make_frames
        >>> _ = Pipeline([ListSource(make_frames(2)), ListSink()], observers=[FreezeObjectsAfterSetup()]).run_sync()
        >>> gc.get_freeze_count() > 0
        True
        >>> gc.unfreeze()
    """

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Edge]) -> None:
        # Collected first: the garbage of setup (model conversion, parsing) would otherwise stay for good.
        gc.collect()
        gc.freeze()


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
class SourceStats:
    """One source: frames it produced, and frames that came out of the last stage."""

    id: str
    type: str
    frames: int = 0
    frames_done: int = 0
    first_out: float | None = None
    last_out: float | None = None
    last_done: float | None = None
    dropped: int = 0
    reconnects: int = 0
    ended: str | None = None  # None while running, else the reason
    error: str | None = None
    counters: dict[str, float] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list, repr=False)
    capture_latency_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def fps(self) -> float:
        """Results a second: frames out of the last stage over the time from its first frame to its last result."""
        if self.first_out is None or self.last_done is None:
            return 0.0
        span = self.last_done - self.first_out
        return self.frames_done / span if span > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("latency_ms", "capture_latency_ms")}
        data["fps"] = round(self.fps, 2)
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
    sources: list[SourceStats] = field(default_factory=list)

    @property
    def failed_sources(self) -> list[SourceStats]:
        return [s for s in self.sources if s.error is not None]

    def source(self, source_id: str) -> SourceStats:
        for stats in self.sources:
            if stats.id == source_id:
                return stats
        raise KeyError(f"no source {source_id!r}; sources: {[s.id for s in self.sources]}")

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
            "sources": [s.summary() for s in self.sources],
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
        self._sources: dict[str, SourceStats] = {}
        self._source_stages: dict[str, tuple[Stage, Edge | None]] = {}  # stage name -> (stage, edge)
        self._source_of_stage: dict[str, SourceStats] = {}

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Edge]) -> None:
        self._stages = stages
        self._edges = edges
        self._source_name = stages[0].name if stages else None
        self._sink_name = stages[-1].name if stages else None
        for stage in stages:
            # A source template (many sources) is shown as the type its sources default to.
            kind = getattr(stage, "type_name", None) or type(stage).__name__
            stats = StageStats(name=stage.name, type=kind, device=str(stage.device))
            edge = edges.get(stage.name)
            if edge is not None:
                stats.queue_capacity = edge.capacity
                stats.queue_overflow = edge.overflow.value
            self._stats[stage.name] = stats

    def on_source_added(self, source_id: str, stage: Stage | None, edge: Edge | None) -> None:
        stats = SourceStats(id=source_id, type=type(stage).__name__ if stage is not None else "-")
        self._sources[source_id] = stats
        if stage is not None:
            self._source_stages[source_id] = (stage, edge)
            self._source_of_stage[stage.name] = stats

    def on_source_ended(self, source_id: str, reason: str, error: str | None) -> None:
        stats = self._sources[source_id]
        self._read_source(source_id)
        stats.ended = reason
        stats.error = error

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        now = time.perf_counter()
        source = self._source_of_stage.get(stage.name)
        if source is not None:
            # Every source counts in the one row of the source stage (the template) as well.
            source.frames += len(frames_out)
            if frames_out:
                source.first_out = source.first_out if source.first_out is not None else now
                source.last_out = now
        stats = self._stats.get(stage.name) or self._stats[self._source_name or stage.name]
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
        sample = len(stats.latency_ms) < _MAX_LATENCY_SAMPLES
        at_end = stage.name == self._sink_name
        if not sample and not at_end:
            return
        wall_now = time.time()
        for frame in done:
            # Results per source are counted at the last stage for the whole run; samples are capped.
            per_source = self._sources.get(frame.source_id) if at_end else None
            if per_source is not None:
                per_source.frames_done += 1
                per_source.last_done = now
                if len(per_source.latency_ms) >= _MAX_SOURCE_SAMPLES:
                    per_source = None
            born = frame.timestamps.get(self._source_name) if self._source_name else None
            if born is not None:
                latency = (now - born) * 1000
                if sample:
                    stats.latency_ms.append(latency)
                if per_source is not None:
                    per_source.latency_ms.append(latency)
            if frame.arrival_time is not None:
                capture = (wall_now - frame.arrival_time) * 1000
                if sample:
                    stats.capture_latency_ms.append(capture)
                if per_source is not None:
                    per_source.capture_latency_ms.append(capture)

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
        for source_id in list(self._source_stages):
            self._read_source(source_id)
        self._read_source_edges()
        if len(self._source_stages) > 1 or self._source_name not in self._source_of_stage:
            # Many sources: the template's row sums their counters and drops.
            row = self._stats.get(self._source_name or "")
            if row is not None:
                row.counters = {}
                for source in self._sources.values():
                    for key, value in source.counters.items():
                        row.counters[key] = row.counters.get(key, 0) + value
        wall = time.perf_counter() - self.start_time if self.start_time is not None else 0.0
        sources = list(self._sources.values())
        return RunStats(self.pipeline_name, wall, [self._stats[s.name] for s in self._stages], sources=sources)

    def _read_source_edges(self) -> None:
        """The stage after the sources reads one edge per source: its row shows them together."""
        if len(self._stages) < 2:
            return
        edges = [edge for _, edge in self._source_stages.values() if edge is not None]
        if not edges:
            return
        row = self._stats[self._stages[1].name]
        row.queue_capacity = edges[0].capacity
        row.queue_overflow = edges[0].overflow.value
        row.queue_depth = sum(edge.depth for edge in edges)
        row.queue_max_depth = max(edge.max_depth for edge in edges)
        row.dropped = sum(edge.dropped for edge in edges)

    def _read_source(self, source_id: str) -> None:
        """Copy a source's stage counters and its edge's drops (they stop changing once it ended)."""
        found = self._source_stages.get(source_id)
        if found is None:
            return
        stage, edge = found
        stats = self._sources[source_id]
        stats.counters = dict(stage.counters)
        stats.reconnects = int(stage.counters.get("reconnects", 0))
        stats.dropped = (edge.dropped if edge is not None else 0) + int(stage.counters.get("packets_dropped", 0))
