"""`streamflow bench CONFIG --sources N`: one pipeline over N copies of its input, against raw decoding.

For each N the config runs once with N sources that all read the same input (the config's source
uri unless another is given), each `frames_per_source` frames long (looped when the clip is
shorter), unpaced unless `realtime` (then each source is paced at the clip's frame rate, like a
camera, and drops and capture-to-result latency are what count). Reported per N: aggregate
results a second after the first `warmup` results, per-source fps (min / median / max: fairness),
latency p50/p95/p99 (source to last stage), capture latency and drops when paced, peak GPU memory
and host memory added, and the time from building the pipeline to its first result.

The baseline in the same process is the raw decode ceiling: K threads that only decode the same
input (PyNvVideoCodec's demuxer and decoder on a GPU, PyAV on the CPU), for each K asked; the best
K is the ceiling the pipeline's aggregate fps is compared with.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamflow.config import PipelineConfig, build_pipeline, load_config
from streamflow.frame import Frame
from streamflow.observers import Observer, RunStats, percentile
from streamflow.sources import SourceSpec
from streamflow.stage import Stage, resolve_device

__all__ = ["SourcesBenchResult", "SourcesRun", "raw_decode_fps", "run_sources_bench"]


class _Results(Observer):
    """When results leave the last stage (one timestamp per frame, appended per call)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._sink: str | None = None

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Any]) -> None:
        self._sink = stages[-1].name

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        if stage.name == self._sink and frames_in:
            self.times.extend([time.perf_counter()] * len(frames_in))


@dataclass
class SourcesRun:
    sources: int
    fps: float
    frames: int
    per_source_fps: tuple[float, float, float]  # min, median, max
    latency_ms: tuple[float | None, float | None, float | None]
    capture_latency_p95_ms: float | None
    drops: int
    first_result_s: float | None
    peak_gpu_mib: float | None
    host_mib_added: float
    failed: int
    stats: RunStats = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "stats"}
        data["stages"] = self.stats.to_dict()["stages"]
        return data


@dataclass
class SourcesBenchResult:
    config: str
    device: str
    uri: str
    realtime: bool
    runs: list[SourcesRun]
    raw_fps: dict[int, float]  # decoder threads -> aggregate fps

    @property
    def ceiling(self) -> float | None:
        return max(self.raw_fps.values()) if self.raw_fps else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "device": self.device,
            "uri": self.uri,
            "realtime": self.realtime,
            "raw_decode_fps": {str(k): round(v, 1) for k, v in self.raw_fps.items()},
            "raw_decode_ceiling_fps": None if self.ceiling is None else round(self.ceiling, 1),
            "runs": [run.to_dict() for run in self.runs],
        }


def _rss_mib() -> float:
    # Linux: kilobytes. The peak so far: memory a run added shows as growth of the peak.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _input_uri(config: PipelineConfig, uri: str | None) -> str:
    if uri is not None:
        return uri
    first = config.stages[0].options.get("uri")
    if config.sources:
        first = config.sources[0].uri
    if not first:
        raise ValueError("the config names no input: pass --input")
    return str(first)


def _one_run(
    config: PipelineConfig,
    count: int,
    uri: str,
    *,
    frames_per_source: int,
    warmup: int,
    realtime: bool,
    device: torch.device,
) -> SourcesRun:
    specs = [
        SourceSpec.model_validate(
            {"id": f"s{i}", "uri": uri, "loop": True, "max_frames": frames_per_source, "realtime": realtime}
        )
        for i in range(count)
    ]
    results = _Results()
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    gpu_before = torch.cuda.memory_allocated(device) if on_gpu else 0
    host_before = _rss_mib()
    launched = time.perf_counter()
    pipeline = build_pipeline(config, observers=[results], sources=specs)
    try:
        stats = pipeline.run_sync()
    except Exception as error:  # failed sources: the figures of the others still count
        found = getattr(error, "run_stats", None)
        if found is None:
            raise
        stats = found
    times = results.times
    # Results arrive a batch at a time: timing starts at the batch that holds the warm-up's last
    # result and counts the results that came after it.
    start = times[min(warmup, len(times) - 1)] if times else 0.0
    timed = [t for t in times if t > start]
    if not timed:
        raise RuntimeError(f"{count} sources: {len(times)} results in one batch after warm-up ({warmup}); run longer")
    fps = len(timed) / (timed[-1] - start)
    per_source = sorted(source.fps for source in stats.sources) or [0.0]
    sink = stats.stages[-1]
    return SourcesRun(
        sources=count,
        fps=fps,
        frames=len(times),
        per_source_fps=(per_source[0], statistics.median(per_source), per_source[-1]),
        latency_ms=(
            percentile(sink.latency_ms, 50),
            percentile(sink.latency_ms, 95),
            percentile(sink.latency_ms, 99),
        ),
        capture_latency_p95_ms=percentile(sink.capture_latency_ms, 95),
        drops=sum(source.dropped for source in stats.sources),
        first_result_s=times[0] - launched if times else None,
        peak_gpu_mib=(torch.cuda.max_memory_allocated(device) - gpu_before) / 2**20 if on_gpu else None,
        host_mib_added=_rss_mib() - host_before,
        failed=len(stats.failed_sources),
        stats=stats,
    )


def _decode_all_gpu(uri: str, passes: int, gpu_id: int) -> int:
    import PyNvVideoCodec as nvc

    count = 0
    for _ in range(passes):
        demuxer = nvc.CreateDemuxer(filename=uri)
        decoder = nvc.CreateDecoder(
            gpuid=gpu_id, codec=demuxer.GetNvCodecId(), cudacontext=0, cudastream=0, usedevicememory=True
        )
        for packet in demuxer:
            count += len(decoder.Decode(packet))
    return count


def _decode_all_cpu(uri: str, passes: int) -> int:
    import av

    count = 0
    for _ in range(passes):
        with av.open(uri) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _frame in container.decode(stream):
                count += 1
    return count


def raw_decode_fps(uri: str, threads: int, *, passes: int, device: torch.device) -> float:
    """Aggregate fps of `threads` threads that each decode `uri` `passes` times and do nothing else."""
    counts = [0] * threads

    def work(index: int) -> None:
        if device.type == "cuda":
            counts[index] = _decode_all_gpu(uri, passes, device.index or 0)
        else:
            counts[index] = _decode_all_cpu(uri, passes)

    workers = [threading.Thread(target=work, args=(i,), name=f"raw-decode-{i}") for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sum(counts) / (time.perf_counter() - started)


def run_sources_bench(
    config_path: str | os.PathLike[str],
    counts: Sequence[int],
    *,
    uri: str | None = None,
    frames_per_source: int = 240,
    warmup: int = 0,
    realtime: bool = False,
    raw_threads: Sequence[int] = (),
    raw_passes: int = 2,
    overrides: Sequence[str] = (),
    feeder_threads: int | None = None,
) -> SourcesBenchResult:
    """Each count of sources through the config, then the raw decode ceiling; see the module docstring."""
    config = load_config(config_path, overrides)
    if feeder_threads is not None:
        config = config.model_copy(update={"feeder_threads": feeder_threads})
    source = _input_uri(config, uri)
    if "://" not in source and not Path(source).is_file():
        raise ValueError(f"input {source!r} not found")
    device = resolve_device(config.device)
    runs = [
        _one_run(
            config,
            count,
            source,
            frames_per_source=frames_per_source,
            warmup=warmup,
            realtime=realtime,
            device=device,
        )
        for count in counts
    ]
    raw = {k: raw_decode_fps(source, k, passes=raw_passes, device=device) for k in raw_threads}
    return SourcesBenchResult(str(config_path), str(device), source, realtime, runs, raw)
