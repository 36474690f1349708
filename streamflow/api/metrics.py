"""Prometheus metrics of a running pipeline, read from the runner's own figures at scrape time.

Nothing here runs inside a stage: `LatencyHistograms` is an observer the runner notifies (it
keeps bucket counts, cheap per frame), and each scrape reads `Pipeline.snapshot()`,
`Pipeline.source_status()` and those histograms once. Families:

- per source (label `source`): `streamflow_source_frames_total` (produced),
  `streamflow_source_frames_done_total` (out of the last stage), `streamflow_source_fps`,
  `streamflow_source_dropped_total`, `streamflow_source_reconnects_total`, `streamflow_source_up`,
  `streamflow_source_latency_seconds` (histogram: source to the end of the pipeline);
- per stage (label `stage`): frames in/out, `streamflow_stage_busy_seconds_total`, queue depth and
  capacity, drops, `streamflow_stage_call_seconds` (histogram: one call of a stage hook);
- process: sources by state, open decoders by kind, threads, GPU memory per CUDA device (when CUDA
  is in use), and `prometheus_client`'s process collector (CPU seconds, memory, open fds).

One reading, two views: `PipelineCollector` is a `prometheus_client` collector (`registry.collect()`
gives metric families: the cluster's actors and embedding code use them), and `PipelineMetrics.render()`
is the text `/metrics` serves. That text is written here, not by `generate_latest`: a scrape runs on
the pipeline's event loop, among the threads of every source, and `generate_latest` spends its
Python per sample (sorting, validating and escaping labels) on thousands of samples under many
sources, long enough to be pre-empted by those threads several times. Here a label's text is built
once and kept while its source or stage exists, and a histogram's lines are one format string; the
tests parse both views with `prometheus_client`'s parser and compare them. Nothing is cached
between scrapes but label text: every scrape reads the figures of that moment.

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

import bisect
import enum
import itertools
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streamflow.frame import Frame
from streamflow.observers import Observer
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
    # One per bound, plus +Inf; not cumulative: an observation costs one increment on the loop,
    # and a scrape sums a dozen numbers per histogram (`itertools.accumulate`, in C).
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def read(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (the last is the count) and the sum."""
        return list(itertools.accumulate(self.counts)), self.total


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


class _Kind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class _Family:
    """One metric family: name, type, help, its one label (or none) and, for a histogram, its buckets."""

    __slots__ = ("buckets", "header", "help", "kind", "label", "le", "name", "sample")

    def __init__(self, name: str, kind: _Kind, help: str, label: str = "", buckets: Sequence[float] = ()) -> None:
        self.name, self.kind, self.help, self.label, self.buckets = name, kind, help, label, tuple(buckets)
        #: The name its samples carry (a counter's end in `_total`, as `generate_latest` writes them).
        self.sample = f"{name}_total" if kind is _Kind.COUNTER else name
        self.header = f"# HELP {self.sample} {help}\n# TYPE {self.sample} {kind.value}\n"
        #: Bucket bounds as `le` label values.
        self.le = (*(floatToGoString(bound) for bound in self.buckets), "+Inf") if buckets else ()


_SOURCE_FRAMES = _Family("streamflow_source_frames", _Kind.COUNTER, "Frames the source produced.", "source")
_SOURCE_DONE = _Family(
    "streamflow_source_frames_done", _Kind.COUNTER, "Frames of the source that left the last stage.", "source"
)
_SOURCE_FPS = _Family(
    "streamflow_source_fps",
    _Kind.GAUGE,
    "Mean frames a second since the source's first frame (rate() of frames_total for a recent rate).",
    "source",
)
_SOURCE_DROPPED = _Family(
    "streamflow_source_dropped",
    _Kind.COUNTER,
    "Frames or packets of the source dropped (full queue, bad data).",
    "source",
)
_SOURCE_RECONNECTS = _Family("streamflow_source_reconnects", _Kind.COUNTER, "Reconnects of a live source.", "source")
_SOURCE_UP = _Family("streamflow_source_up", _Kind.GAUGE, "1 while the source's input is open and producing.", "source")
_SOURCE_LATENCY = _Family(
    "streamflow_source_latency_seconds",
    _Kind.HISTOGRAM,
    "Time from the source to the end of the pipeline.",
    "source",
    LATENCY_BUCKETS_S,
)
_SOURCES = _Family("streamflow_sources", _Kind.GAUGE, "Sources by state.", "state")
_OPEN_DECODERS = _Family("streamflow_open_decoders", _Kind.GAUGE, "Sources with an open input, by decoder.", "decoder")
_STAGE_IN = _Family("streamflow_stage_frames_in", _Kind.COUNTER, "Frames into the stage.", "stage")
_STAGE_OUT = _Family("streamflow_stage_frames_out", _Kind.COUNTER, "Frames out of the stage.", "stage")
_STAGE_BUSY = _Family(
    "streamflow_stage_busy_seconds", _Kind.COUNTER, "Time inside the stage's hooks (rate() = busy fraction).", "stage"
)
_STAGE_DEPTH = _Family("streamflow_stage_queue_depth", _Kind.GAUGE, "Items queued before the stage.", "stage")
_STAGE_CAPACITY = _Family("streamflow_stage_queue_capacity", _Kind.GAUGE, "Bound of the stage's input queue.", "stage")
_STAGE_DROPPED = _Family(
    "streamflow_stage_dropped", _Kind.COUNTER, "Items dropped from the stage's full input queue.", "stage"
)
_STAGE_CALLS = _Family(
    "streamflow_stage_call_seconds", _Kind.HISTOGRAM, "One call of a stage hook.", "stage", CALL_BUCKETS_S
)
_THREADS = _Family("streamflow_threads", _Kind.GAUGE, "Python threads of the process.")
_GPU_ALLOCATED = _Family("streamflow_gpu_memory_allocated_bytes", _Kind.GAUGE, "GPU memory held by tensors.", "device")
_GPU_RESERVED = _Family(
    "streamflow_gpu_memory_reserved_bytes", _Kind.GAUGE, "GPU memory held by torch's caching allocator.", "device"
)

#: One family's samples read at one scrape: its label values and, per label value, a number (a
#: counter or gauge) or a histogram's (cumulative bucket counts, sum). Unlabelled: label value "".
_Row = tuple[_Family, list[str], list[Any]]


class PipelineCollector(Collector):
    """A `prometheus_client` collector that reads a pipeline's live figures on every scrape."""

    def __init__(self, pipeline: Pipeline, histograms: LatencyHistograms) -> None:
        self.pipeline = pipeline
        self.histograms = histograms
        # The CUDA devices, counted once CUDA is in use: `torch.cuda.is_available()` and an uncached
        # `device_count()` ask NVML through ctypes, which lets go of the GIL, and a loop that lets
        # go of it among 64 busy decoder threads waits tens of milliseconds to get it back (seen in
        # `benchmarks/control_api.py`'s loop samples on the H200).
        self._cuda_devices: list[int] | None = None

    def collect(self) -> Iterator[Metric]:
        for family, names, values in self.read():
            label_names = [family.label] if family.label else []
            if family.kind is _Kind.HISTOGRAM:
                histogram = HistogramMetricFamily(family.name, family.help, labels=label_names)
                for name, (cumulative, total) in zip(names, values, strict=True):
                    buckets = list(zip(family.le, cumulative, strict=True))
                    histogram.add_metric([name] if family.label else [], buckets, total)
                yield histogram
                continue
            kind = CounterMetricFamily if family.kind is _Kind.COUNTER else GaugeMetricFamily
            metric = kind(family.name, family.help, labels=label_names)
            for name, value in zip(names, values, strict=True):
                metric.add_metric([name] if family.label else [], value)
            yield metric

    def read(self) -> list[_Row]:
        """Every family's samples, read now (one snapshot of the runner's figures)."""
        snapshot = self.pipeline.snapshot()
        status = self.pipeline.source_status()
        sources = snapshot.sources
        ids = [s.id for s in sources]
        running = {s.id for s in status if s.state is SourceState.RUNNING}
        latency = self.histograms.sources
        timed = [source_id for source_id in ids if source_id in latency]
        counts = dict.fromkeys([state.value for state in SourceState], 0)
        decoders: dict[str, int] = {}
        for current in status:
            counts[current.state.value] += 1
            if current.state is SourceState.RUNNING:
                kind = _decoder_kind(self.histograms.source_stages.get(current.id))
                decoders[kind] = decoders.get(kind, 0) + 1
        stages = snapshot.stages
        names = [s.name for s in stages]
        bounded = [s for s in stages if s.queue_capacity is not None]
        calls = self.histograms.stages
        called = [name for name in names if name in calls]
        rows: list[_Row] = [
            (_SOURCE_FRAMES, ids, [s.frames for s in sources]),
            (_SOURCE_DONE, ids, [s.frames_done for s in sources]),
            (_SOURCE_FPS, ids, [s.fps for s in sources]),
            (_SOURCE_DROPPED, ids, [s.dropped for s in sources]),
            (_SOURCE_RECONNECTS, ids, [s.reconnects for s in sources]),
            (_SOURCE_UP, ids, [1 if source_id in running else 0 for source_id in ids]),
            (_SOURCE_LATENCY, timed, [latency[source_id].read() for source_id in timed]),
            (_SOURCES, list(counts), list(counts.values())),
            (_OPEN_DECODERS, sorted(decoders), [decoders[kind] for kind in sorted(decoders)]),
            (_STAGE_IN, names, [s.frames_in for s in stages]),
            (_STAGE_OUT, names, [s.frames_out for s in stages]),
            (_STAGE_BUSY, names, [s.busy_s for s in stages]),
            (_STAGE_DEPTH, names, [s.queue_depth for s in stages]),
            (_STAGE_CAPACITY, [s.name for s in bounded], [s.queue_capacity for s in bounded]),
            (_STAGE_DROPPED, names, [s.dropped for s in stages]),
            (_STAGE_CALLS, called, [calls[name].read() for name in called]),
            (_THREADS, [""], [threading.active_count()]),
        ]
        # Only when this process already uses CUDA: a scrape must never initialize a device.
        if self._cuda_devices is None and torch.cuda.is_initialized():
            self._cuda_devices = list(range(torch.cuda.device_count()))
        if self._cuda_devices:
            devices = self._cuda_devices
            labels = [f"cuda:{index}" for index in devices]
            rows.append((_GPU_ALLOCATED, labels, [torch.cuda.memory_allocated(index) for index in devices]))
            rows.append((_GPU_RESERVED, labels, [torch.cuda.memory_reserved(index) for index in devices]))
        return rows


def _decoder_kind(stage: Stage | None) -> str:
    # Decode records the path it chose at setup (pyav, nvdec-batch, nvdec-packets); others: their type.
    path = getattr(stage, "path", None)
    value = getattr(path, "value", None)
    return str(value) if isinstance(value, str) else type(stage).__name__


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    return repr(value) if math.isfinite(value) else floatToGoString(value)


class _Exposition:
    """The Prometheus text of readings. A label's text (and a histogram's format string) is built
    the first time its source or stage appears and kept while it is still read."""

    def __init__(self) -> None:
        self._labels: dict[tuple[str, str], str] = {}
        self._histograms: dict[tuple[str, str], str] = {}

    def render(self, rows: list[_Row]) -> str:
        # What this scrape used becomes the cache: ids of removed sources don't pile up.
        labels: dict[tuple[str, str], str] = {}
        histograms: dict[tuple[str, str], str] = {}
        out: list[str] = []
        for family, names, values in rows:
            out.append(family.header)
            if family.kind is _Kind.HISTOGRAM:
                for name, (cumulative, total) in zip(names, values, strict=True):
                    key = (family.name, name)
                    template = self._histograms.get(key) or _histogram_lines(family, name)
                    histograms[key] = template
                    out.append(template % (*cumulative, cumulative[-1], total))
                continue
            sample, label = family.sample, family.label
            texts = []
            for name in names:
                key = (label, name)
                text = self._labels.get(key)
                if text is None:
                    text = f'{{{label}="{_escape(name)}"}}' if label else ""
                labels[key] = text
                texts.append(text)
            out.extend([f"{sample}{text} {_number(value)}\n" for text, value in zip(texts, values, strict=True)])
        self._labels, self._histograms = labels, histograms
        return "".join(out)


def _histogram_lines(family: _Family, name: str) -> str:
    """One histogram's sample lines as a format string: its cumulative bucket counts, count and sum."""
    label = f'{family.label}="{_escape(name)}"'.replace("%", "%%") if family.label else ""
    inner = f"{label}," if label else ""
    braces = f"{{{label}}}" if label else ""
    lines = [f'{family.name}_bucket{{{inner}le="{le}"}} %d\n' for le in family.le]
    lines.append(f"{family.name}_count{braces} %d\n{family.name}_sum{braces} %r\n")
    return "".join(lines)


class PipelineMetrics:
    """A pipeline's Prometheus registry: `render()` is the text `/metrics` serves.

    Build it before the run: it adds its observer to the pipeline.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        if pipeline.running:
            raise RuntimeError("attach metrics before the pipeline runs: its histograms observe every frame")
        self.histograms = LatencyHistograms()
        pipeline.observers.append(self.histograms)
        self.collector = PipelineCollector(pipeline, self.histograms)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        # CPU seconds, resident memory, open fds and threads of this process, from /proc (Linux).
        self.process = ProcessCollector(registry=self.registry)
        self._exposition = _Exposition()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, read now.

        Cheap enough for the pipeline's event loop: one read of the figures, the pipeline's
        families written from label text kept between scrapes, the process's few by `generate_latest`.
        """
        return self._exposition.render(self.collector.read()).encode() + generate_latest(self.process)
