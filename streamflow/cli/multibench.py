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

import logging
import math
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

from streamflow.config import PipelineConfig, StageSpec, build_pipeline, load_config
from streamflow.observers import ResultTimes, RunStats, StageStats, percentile
from streamflow.per_source import is_per_source
from streamflow.sources import SourceSpec
from streamflow.stage import resolve_device

log = logging.getLogger(__name__)

__all__ = [
    "SourcesBenchResult",
    "SourcesRun",
    "merge_run_stats",
    "per_source_paths",
    "raw_decode_fps",
    "run_sources_bench",
]


@dataclass
class SourcesRun:
    sources: int
    workers: int  # 1: the sources in this process; more: worker processes (streamflow.cluster.processes)
    fps: float
    frames: int
    per_source_fps: tuple[float, float, float]  # min, median, max
    latency_ms: tuple[float | None, float | None, float | None]
    capture_latency_p95_ms: float | None
    # Paced runs: capture latency of the results after the warm-up only (the start's queues excluded).
    steady_capture_latency_ms: tuple[float | None, float | None, float | None]
    drops: int
    first_result_s: float | None
    peak_gpu_mib: float | None
    host_mib_added: float
    failed: int
    stats: RunStats = field(repr=False)
    # Worker runs: workers that died or stopped answering during the run. Their sources moved on, but
    # what they had delivered is missing from every figure of this row (their records died with them).
    workers_lost: int = 0
    # Of `drops`, those noted after the warm-up's results (the rest fell while the pipeline started).
    steady_drops: int = 0

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
    specs = _specs(count, uri, frames_per_source, realtime)
    results = ResultTimes()
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
    return _figures(
        stats,
        times,
        results.capture_latency_ms,
        [results.drops],
        count=count,
        workers=1,
        warmup=warmup,
        first_result_s=times[0] - launched if times else None,
        peak_gpu_mib=(torch.cuda.max_memory_allocated(device) - gpu_before) / 2**20 if on_gpu else None,
        host_mib_added=_rss_mib() - host_before,
    )


def _specs(count: int, uri: str, frames_per_source: int, realtime: bool) -> list[SourceSpec]:
    return [
        SourceSpec.model_validate(
            {"id": f"s{i}", "uri": uri, "loop": True, "max_frames": frames_per_source, "realtime": realtime}
        )
        for i in range(count)
    ]


def _dropped_by(log: Sequence[tuple[float, int]], moment: float) -> int:
    """Frames one process's sources had dropped by `moment`, from its `ResultTimes.drops` log."""
    count = 0
    for noted, dropped in log:
        if noted > moment:
            break
        count = dropped
    return count


def _figures(
    stats: RunStats,
    times: Sequence[float],
    capture_latency_ms: Sequence[float],
    drop_logs: Sequence[Sequence[tuple[float, int]]],
    *,
    count: int,
    workers: int,
    warmup: int,
    first_result_s: float | None,
    peak_gpu_mib: float | None,
    host_mib_added: float,
    workers_lost: int = 0,
) -> SourcesRun:
    # Results arrive a batch at a time: timing starts at the batch that holds the warm-up's last
    # result and counts the results that came after it.
    start = times[min(warmup, len(times) - 1)] if times else 0.0
    timed = [t for t in times if t > start]
    steady = [ms for t, ms in zip(times, capture_latency_ms, strict=True) if t > start and not math.isnan(ms)]
    if not timed:
        raise RuntimeError(f"{count} sources: {len(times)} results in one batch after warm-up ({warmup}); run longer")
    fps = len(timed) / (timed[-1] - start)
    per_source = sorted(source.fps for source in stats.sources) or [0.0]
    sink = stats.stages[-1]
    drops = sum(source.dropped for source in stats.sources)
    return SourcesRun(
        sources=count,
        workers=workers,
        fps=fps,
        frames=len(times),
        per_source_fps=(per_source[0], statistics.median(per_source), per_source[-1]),
        latency_ms=(
            percentile(sink.latency_ms, 50),
            percentile(sink.latency_ms, 95),
            percentile(sink.latency_ms, 99),
        ),
        capture_latency_p95_ms=percentile(sink.capture_latency_ms, 95),
        steady_capture_latency_ms=(percentile(steady, 50), percentile(steady, 95), percentile(steady, 99)),
        drops=drops,
        steady_drops=drops - sum(_dropped_by(log, start) for log in drop_logs),
        first_result_s=first_result_s,
        peak_gpu_mib=peak_gpu_mib,
        host_mib_added=host_mib_added,
        failed=len(stats.failed_sources),
        stats=stats,
        workers_lost=workers_lost,
    )


def _one_run_in_workers(
    config: PipelineConfig,
    count: int,
    uri: str,
    *,
    workers: int,
    frames_per_source: int,
    warmup: int,
    realtime: bool,
) -> SourcesRun:
    """The same sources spread over `workers` processes of this machine (the driver of
    `streamflow run --workers`), every result's time merged: measured as one process is."""
    from streamflow.cluster import ClusterConfig
    from streamflow.cluster.driver import ClusterRunner

    cluster = ClusterConfig(backend="processes", actors=workers)
    host_before = _rss_mib()
    launched = time.perf_counter()
    runner = ClusterRunner(
        config,
        cluster=cluster,
        sources=_specs(count, uri, frames_per_source, realtime),
        host_options={"record_results": True},
    )
    result = runner.run()
    runs = [actor["run"]["bench"] for actor in result.actors.values() if actor.get("run")]
    lost = sorted({move.from_actor for move in result.moves})
    if lost:
        log.warning(
            "%d sources: %s lost during the run; the results they delivered are not in this row's figures",
            count,
            ", ".join(lost),
        )
    if len(runs) < workers:
        raise RuntimeError(f"{count} sources: {workers - len(runs)} of {workers} workers did not finish")
    # Every result's time with its capture latency, in time order over all workers.
    merged = sorted(
        (t, ms) for run in runs for t, ms in zip(run["result_times"], run["result_capture_latency_ms"], strict=True)
    )
    times = [t for t, _ in merged]
    gpu = [run["peak_gpu_mib"] for run in runs if run["peak_gpu_mib"] is not None]
    return _figures(
        merge_run_stats([run["stats"] for run in runs]),
        times,
        [ms for _, ms in merged],
        [run["drops"] for run in runs],
        count=count,
        workers=workers,
        warmup=warmup,
        first_result_s=times[0] - launched if times else None,
        peak_gpu_mib=sum(gpu) if gpu else None,
        # Each worker's whole peak: all of it was added for the run.
        host_mib_added=sum(run["peak_rss_mib"] for run in runs) + _rss_mib() - host_before,
        workers_lost=len(lost),
    )


def merge_run_stats(runs: Sequence[RunStats]) -> RunStats:
    """One run's figures from several processes' runs of the same stages: counts add up, latency
    samples pool, sources side by side, the longest wall time."""
    first = runs[0]
    stages = []
    for position, stage in enumerate(first.stages):
        same = [run.stages[position] for run in runs]
        stages.append(
            StageStats(
                name=stage.name,
                type=stage.type,
                device=stage.device,
                frames_in=sum(s.frames_in for s in same),
                frames_out=sum(s.frames_out for s in same),
                calls=sum(s.calls for s in same),
                busy_s=sum(s.busy_s for s in same),
                first_out=min((s.first_out for s in same if s.first_out is not None), default=None),
                last_out=max((s.last_out for s in same if s.last_out is not None), default=None),
                queue_capacity=stage.queue_capacity,
                queue_overflow=stage.queue_overflow,
                queue_max_depth=max(s.queue_max_depth for s in same),
                dropped=sum(s.dropped for s in same),
                latency_ms=[v for s in same for v in s.latency_ms],
                capture_latency_ms=[v for s in same for v in s.capture_latency_ms],
            )
        )
    return RunStats(
        pipeline=first.pipeline,
        wall_s=max(run.wall_s for run in runs),
        stages=stages,
        warnings=[w for run in runs for w in run.warnings],
        sources=[source for run in runs for source in run.sources],
    )


def per_source_paths(config: PipelineConfig) -> PipelineConfig:
    """The config with every file sink writing one file per source (`{source}` added before the
    suffix): worker processes must not share a file, and every variant compared must write alike."""
    stages = list(config.stages)
    for position, spec in enumerate(stages[1:], start=1):
        path = spec.options.get("path")
        if isinstance(path, str) and not is_per_source(path):
            stem, dot, suffix = path.rpartition(".")
            per_source = f"{stem}.{{source}}.{suffix}" if dot and "/" not in suffix else f"{path}.{{source}}"
            stages[position] = StageSpec.model_validate({**spec.model_dump(), "path": per_source})
    return config.model_copy(update={"stages": stages})


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
    workers: Sequence[int] = (1,),
) -> SourcesBenchResult:
    """Each count of sources through the config (in this process, and spread over each number of
    worker processes asked), then the raw decode ceiling; see the module docstring."""
    config = load_config(config_path, overrides)
    if feeder_threads is not None:
        config = config.model_copy(update={"feeder_threads": feeder_threads})
    if max(workers) > 1:
        config = per_source_paths(config)
    source = _input_uri(config, uri)
    if "://" not in source and not Path(source).is_file():
        raise ValueError(f"input {source!r} not found")
    device = resolve_device(config.device)
    runs = []
    for count in counts:
        for processes in workers:
            if processes == 1:
                run = _one_run(
                    config,
                    count,
                    source,
                    frames_per_source=frames_per_source,
                    warmup=warmup,
                    realtime=realtime,
                    device=device,
                )
            else:
                run = _one_run_in_workers(
                    config,
                    count,
                    source,
                    workers=processes,
                    frames_per_source=frames_per_source,
                    warmup=warmup,
                    realtime=realtime,
                )
            runs.append(run)
    raw = {k: raw_decode_fps(source, k, passes=raw_passes, device=device) for k in raw_threads}
    return SourcesBenchResult(str(config_path), str(device), source, realtime, runs, raw)
