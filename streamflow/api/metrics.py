"""Prometheus metrics of a running pipeline, read from the runner's own figures at scrape time.

Nothing here runs inside a stage: `LatencyHistograms` is an observer the runner notifies (it
keeps bucket counts, cheap per frame), and `PipelineCollector` reads `Pipeline.snapshot()`,
`Pipeline.source_status()` and those histograms each time Prometheus scrapes. Families:

- per source (label `source`): `streamflow_source_frames_total` (produced),
  `streamflow_source_frames_done_total` (out of the last stage), `streamflow_source_fps`,
  `streamflow_source_dropped_total`, `streamflow_source_reconnects_total`, `streamflow_source_up`,
  `streamflow_source_latency_seconds` (histogram: source to the end of the pipeline);
- per stage (label `stage`): frames in/out, `streamflow_stage_busy_seconds_total`, queue depth and
  capacity, drops, `streamflow_stage_call_seconds` (histogram: one call of a stage hook);
- process: sources by state, open decoders by kind, threads, GPU memory per CUDA device (when CUDA
  is in use), and `prometheus_client`'s process collector (CPU seconds, memory, open fds).

Example:
    >>> from streamflow import Pipeline
    >>> from streamflow.testing import ListSink, ListSource, make_frames
    >>> pipeline = Pipeline([ListSource(make_frames(2)), ListSink()], device="cpu")
    >>> metrics = PipelineMetrics(pipeline)
    >>> _ = pipeline.run_sync()
    >>> b"streamflow_source_frames_total" in metrics.render()
    True
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from streamflow.frame import Frame
from streamflow.observers import Observer, RunStats
from streamflow.pipeline import SourceState
from streamflow.stage import Source, Stage

if TYPE_CHECKING:
    from streamflow.edge import Edge
    from streamflow.pipeline import Pipeline

__all__ = ["CALL_BUCKETS_S", "LATENCY_BUCKETS_S", "LatencyHistograms", "PipelineCollector", "PipelineMetrics"]

#: Bucket bounds (seconds) of the end-to-end latency of a frame, from its source to the last stage.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Bucket bounds (seconds) of one call of a stage hook (a batch through `process`, a flush...).
CALL_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class _Histogram:
    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)  # one per bound, plus +Inf; not cumulative
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, result = 0, list[tuple[str, float]]()
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            cumulative += count
            result.append((bound, cumulative))
        return result


class LatencyHistograms(Observer):
    """Bucket counts of per-source end-to-end latency and per-stage call time (an observer)."""

    def __init__(self) -> None:
        self.sources: dict[str, _Histogram] = {}
        self.stages: dict[str, _Histogram] = {}
        self.source_stages: dict[str, Stage | None] = {}
        self._template = ""
        self._sink = ""

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Edge]) -> None:
        self._template, self._sink = stages[0].name, stages[-1].name
        for stage in stages:
            self.stages.setdefault(stage.name, _Histogram(CALL_BUCKETS_S))

    def on_source_added(self, source_id: str, stage: Stage | None, edge: Edge | None) -> None:
        # A re-added id starts afresh, as its frame counters do.
        self.sources[source_id] = _Histogram(LATENCY_BUCKETS_S)
        self.source_stages[source_id] = stage

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        # Every source's calls count in the row of the template, as in the end-of-run table.
        name = self._template if isinstance(stage, Source) else stage.name
        histogram = self.stages.get(name)
        if histogram is not None:
            histogram.observe(busy_s)
        if stage.name != self._sink or not frames_in:
            return
        now = time.perf_counter()
        for frame in frames_in:
            born = frame.timestamps.get(self._template)
            per_source = self.sources.get(frame.source_id)
            if born is not None and per_source is not None:
                per_source.observe(now - born)


class PipelineCollector(Collector):
    """A `prometheus_client` collector that reads a pipeline's live figures on every scrape."""

    def __init__(self, pipeline: Pipeline, histograms: LatencyHistograms) -> None:
        self.pipeline = pipeline
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        snapshot = self.pipeline.snapshot()
        yield from self._sources(snapshot)
        yield from self._stages(snapshot)
        yield from self._process()

    def _sources(self, snapshot: RunStats) -> Iterator[Metric]:
        stats = {s.id: s for s in snapshot.sources}
        status = {s.id: s for s in self.pipeline.source_status()}
        label = ["source"]
        frames = CounterMetricFamily("streamflow_source_frames", "Frames the source produced.", labels=label)
        done = CounterMetricFamily(
            "streamflow_source_frames_done", "Frames of the source that left the last stage.", labels=label
        )
        fps = GaugeMetricFamily(
            "streamflow_source_fps",
            "Mean frames a second since the source's first frame (rate() of frames_total for a recent rate).",
            labels=label,
        )
        dropped = CounterMetricFamily(
            "streamflow_source_dropped", "Frames or packets of the source dropped (full queue, bad data).", labels=label
        )
        reconnects = CounterMetricFamily("streamflow_source_reconnects", "Reconnects of a live source.", labels=label)
        up = GaugeMetricFamily(
            "streamflow_source_up", "1 while the source's input is open and producing.", labels=label
        )
        latency = HistogramMetricFamily(
            "streamflow_source_latency_seconds", "Time from the source to the end of the pipeline.", labels=label
        )
        for source_id, source in stats.items():
            frames.add_metric([source_id], source.frames)
            done.add_metric([source_id], source.frames_done)
            fps.add_metric([source_id], source.fps)
            dropped.add_metric([source_id], source.dropped)
            reconnects.add_metric([source_id], source.reconnects)
            current = status.get(source_id)
            up.add_metric([source_id], 1.0 if current is not None and current.state is SourceState.RUNNING else 0.0)
            histogram = self.histograms.sources.get(source_id)
            if histogram is not None:
                latency.add_metric([source_id], histogram.buckets(), histogram.total)
        yield from (frames, done, fps, dropped, reconnects, up, latency)
        by_state = GaugeMetricFamily("streamflow_sources", "Sources by state.", labels=["state"])
        for state in SourceState:
            by_state.add_metric([state.value], sum(1 for s in status.values() if s.state is state))
        yield by_state
        decoders: dict[str, int] = {}
        for s in status.values():
            if s.state is SourceState.RUNNING:
                kind = _decoder_kind(self.histograms.source_stages.get(s.id))
                decoders[kind] = decoders.get(kind, 0) + 1
        open_decoders = GaugeMetricFamily(
            "streamflow_open_decoders", "Sources with an open input, by decoder.", labels=["decoder"]
        )
        for kind, count in sorted(decoders.items()):
            open_decoders.add_metric([kind], count)
        yield open_decoders

    def _stages(self, snapshot: RunStats) -> Iterator[Metric]:
        label = ["stage"]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "in": CounterMetricFamily("streamflow_stage_frames_in", "Frames into the stage.", labels=label),
            "out": CounterMetricFamily("streamflow_stage_frames_out", "Frames out of the stage.", labels=label),
            "busy": CounterMetricFamily(
                "streamflow_stage_busy_seconds", "Time inside the stage's hooks (rate() = busy fraction).", labels=label
            ),
            "depth": GaugeMetricFamily("streamflow_stage_queue_depth", "Items queued before the stage.", labels=label),
            "capacity": GaugeMetricFamily(
                "streamflow_stage_queue_capacity", "Bound of the stage's input queue.", labels=label
            ),
            "dropped": CounterMetricFamily(
                "streamflow_stage_dropped", "Items dropped from the stage's full input queue.", labels=label
            ),
        }
        calls = HistogramMetricFamily("streamflow_stage_call_seconds", "One call of a stage hook.", labels=label)
        for stage in snapshot.stages:
            families["in"].add_metric([stage.name], stage.frames_in)
            families["out"].add_metric([stage.name], stage.frames_out)
            families["busy"].add_metric([stage.name], stage.busy_s)
            families["depth"].add_metric([stage.name], stage.queue_depth)
            families["dropped"].add_metric([stage.name], stage.dropped)
            if stage.queue_capacity is not None:
                families["capacity"].add_metric([stage.name], stage.queue_capacity)
            histogram = self.histograms.stages.get(stage.name)
            if histogram is not None:
                calls.add_metric([stage.name], histogram.buckets(), histogram.total)
        yield from families.values()
        yield calls

    def _process(self) -> Iterator[Metric]:
        threads = GaugeMetricFamily("streamflow_threads", "Python threads of the process.")
        threads.add_metric([], threading.active_count())
        yield threads
        # Only when this process already uses CUDA: a scrape must never initialize a device.
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            allocated = GaugeMetricFamily(
                "streamflow_gpu_memory_allocated_bytes", "GPU memory held by tensors.", labels=["device"]
            )
            reserved = GaugeMetricFamily(
                "streamflow_gpu_memory_reserved_bytes",
                "GPU memory held by torch's caching allocator.",
                labels=["device"],
            )
            for index in range(torch.cuda.device_count()):
                allocated.add_metric([f"cuda:{index}"], torch.cuda.memory_allocated(index))
                reserved.add_metric([f"cuda:{index}"], torch.cuda.memory_reserved(index))
            yield from (allocated, reserved)


def _decoder_kind(stage: Stage | None) -> str:
    # Decode records the path it chose at setup (pyav, nvdec-batch, nvdec-packets); others: their type.
    path = getattr(stage, "path", None)
    value = getattr(path, "value", None)
    return str(value) if isinstance(value, str) else type(stage).__name__


class PipelineMetrics:
    """A pipeline's Prometheus registry: `render()` is the text `/metrics` serves.

    Build it before the run: it adds its observer to the pipeline.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        if pipeline.running:
            raise RuntimeError("attach metrics before the pipeline runs: its histograms observe every frame")
        self.histograms = LatencyHistograms()
        pipeline.observers.append(self.histograms)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PipelineCollector(pipeline, self.histograms))
        # CPU seconds, resident memory, open fds and threads of this process, from /proc (Linux).
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, read now."""
        return generate_latest(self.registry)

    async def render_async(self) -> bytes:
        """`render()` for the pipeline's loop: figures read on the loop, the text formatted in a thread.

        Formatting is most of a scrape's time (thousands of sample lines under many sources); in a
        thread it no longer holds up the loop that moves the frames.
        """
        families = list(self.registry.collect())
        return await asyncio.to_thread(generate_latest, _Collected(families))


class _Collected(Collector):
    """Metric families already read, for formatting away from the loop."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
