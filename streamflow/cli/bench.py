"""`streamflow bench`: the configured pipeline against a baseline, same input, same process.

The `serial` baseline is what a user writes by hand with the same stages: one frame at a time, in a
plain loop, every stage on one CUDA stream, each frame finished (device synchronised) before the next
starts. Both runs exclude the first `warmup` frames from timing (model loads, CUDA graph capture,
allocator growth) and time the next `frames` frames as they leave the last stage, up to the end of
the last stage's flush: a sink that hands frames on (an encoder in a child process, an encoder's
lookahead) is timed until its output is complete, not until it has accepted the last frame.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from streamflow.cli.report import summary_table
from streamflow.config import PipelineConfig, build_pipeline, load_config
from streamflow.frame import Batch, EndOfStream, Frame, Item
from streamflow.observers import Observer, RunStats, percentile
from streamflow.pipeline import Pipeline, _as_items
from streamflow.stage import Source, Stage, resolve_device

__all__ = ["BenchError", "BenchResult", "run_bench"]


class BenchError(RuntimeError):
    """The benchmark could not produce a figure (e.g. the input has fewer frames than warm-up)."""


class _DoneTimes(Observer):
    """Records when each frame leaves the last stage, and when the last stage finished flushing."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.finished: float | None = None
        self._sink: str | None = None

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Any]) -> None:
        self._sink = stages[-1].name

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        if stage.name != self._sink:
            return
        now = time.perf_counter()
        if frames_in:
            self.times.extend([now] * len(frames_in))
        else:  # flush (or a source's end): everything the sink accepted is now written
            self.finished = now


def _steady_fps(times: list[float], warmup: int, finished: float | None = None) -> tuple[float, int, float]:
    """(fps, frames timed, seconds) over the frames after `warmup`, ending at `finished` if that is later."""
    if len(times) <= warmup + 1:
        raise BenchError(f"only {len(times)} frames reached the last stage; need more than warm-up ({warmup}) + 1")
    timed = times[warmup:]
    end = max(timed[-1], finished) if finished is not None else timed[-1]
    seconds = end - times[warmup - 1] if warmup > 0 else end - timed[0]
    count = len(timed) if warmup > 0 else len(timed) - 1
    return (count / seconds if seconds > 0 else float("inf")), count, seconds


@dataclass
class SerialStats:
    fps: float
    frames: int
    seconds: float
    busy_s: dict[str, float] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)


@dataclass
class BenchResult:
    config: str
    device: str
    pipeline_fps: float
    pipeline_frames: int
    pipeline_stats: RunStats
    baseline: SerialStats | None
    baseline_overrides: list[str]
    peak_gpu_mib: float | None
    host: dict[str, str]
    # Process CPU time (all threads, child processes excluded) over wall time: cores kept busy.
    pipeline_cores: float | None = None
    baseline_cores: float | None = None
    # (pipeline fps, baseline fps) of each round; the figures above are the medians over rounds.
    rounds: list[tuple[float, float | None]] = field(default_factory=list)
    # Files written by the last round of each run, by stage name: {"pipeline": {...}, "baseline_serial": {...}}.
    output_bytes: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """Pipeline fps / baseline fps; over several rounds, the median of each round's own ratio."""
        if not self.baseline:
            return None
        paired = [p / b for p, b in self.rounds if b]
        return statistics.median(paired) if len(paired) > 1 else self.pipeline_fps / self.baseline.fps

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "config": self.config,
            "device": self.device,
            "host": self.host,
            "pipeline": {
                "fps": round(self.pipeline_fps, 2),
                "frames": self.pipeline_frames,
                "stages": self.pipeline_stats.to_dict()["stages"],
            },
            "peak_gpu_mib": self.peak_gpu_mib,
            "cpu_cores_busy": {"pipeline": self.pipeline_cores, "baseline_serial": self.baseline_cores},
            "output_bytes": self.output_bytes,
        }
        if self.baseline:
            lat = self.baseline.latency_ms
            data["baseline_serial"] = {
                "fps": round(self.baseline.fps, 2),
                "frames": self.baseline.frames,
                "busy_s": {k: round(v, 4) for k, v in self.baseline.busy_s.items()},
                "latency_ms": {f"p{q}": round(percentile(lat, q) or 0.0, 3) for q in (50, 95, 99)},
                "overrides": self.baseline_overrides,
            }
            data["ratio"] = round(self.ratio or 0.0, 3)
        if len(self.rounds) > 1:
            data["rounds"] = [
                {"pipeline_fps": round(p, 2), "baseline_fps": None if b is None else round(b, 2)}
                for p, b in self.rounds
            ]
        return data

    def print(self, console: Console) -> None:
        console.print(summary_table(self.pipeline_stats, title=f"pipeline ({self.config}, {self.device})"))
        table = Table(title="bench", title_justify="left")
        for column in ("run", "frames timed", "fps", "latency p50 ms", "p95", "p99"):
            table.add_column(column, justify="left" if column == "run" else "right")
        sink = self.pipeline_stats.stages[-1].latency_ms
        table.add_row(
            "pipeline",
            str(self.pipeline_frames),
            f"{self.pipeline_fps:.1f}",
            *(f"{percentile(sink, q) or 0:.1f}" for q in (50, 95, 99)),
        )
        if self.baseline:
            lat = self.baseline.latency_ms
            table.add_row(
                "serial baseline",
                str(self.baseline.frames),
                f"{self.baseline.fps:.1f}",
                *(f"{percentile(lat, q) or 0:.1f}" for q in (50, 95, 99)),
            )
        console.print(table)
        if len(self.rounds) > 1:
            rounds = ", ".join(f"{p:.1f}" + (f" / {b:.1f}" if b else "") for p, b in self.rounds)
            runs = "pipeline / serial" if self.baseline else "pipeline"
            console.print(f"{len(self.rounds)} rounds ({runs} fps): {rounds}; medians shown")
        if self.baseline:
            busy = ", ".join(
                f"{k} {1000 * v / max(self.baseline.frames, 1):.2f} ms/frame" for k, v in self.baseline.busy_s.items()
            )
            console.print(f"serial baseline host time per stage: {busy}")
            if self.baseline_overrides:
                console.print(f"serial baseline overrides: {' '.join(self.baseline_overrides)}")
            console.print(f"[bold]ratio pipeline / serial: {self.ratio:.2f}x[/]")
        if self.pipeline_cores is not None:
            cores = f"pipeline {self.pipeline_cores:.2f}"
            if self.baseline_cores is not None:
                cores += f", serial baseline {self.baseline_cores:.2f}"
            console.print(f"CPU cores busy on average (this process and its encoder processes): {cores}")
        for run, sizes in self.output_bytes.items():
            if sizes:
                files = ", ".join(f"{name} {size:,} bytes" for name, size in sizes.items())
                console.print(f"output files ({run.replace('_', ' ')}): {files}")
        if self.peak_gpu_mib is not None:
            console.print(f"peak GPU memory allocated: {self.peak_gpu_mib:.0f} MiB")
        console.print(f"host: {', '.join(f'{k}={v}' for k, v in self.host.items())}")


def _host_info(device: torch.device) -> dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": str(os.cpu_count())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its child processes that have ended (encoders)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class _CpuMeter:
    """Cores kept busy over a block: CPU time of this process and its ended children / wall time."""

    def __init__(self) -> None:
        self.cores: float | None = None

    def __enter__(self) -> _CpuMeter:
        self._cpu, self._wall = _cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        self.cores = round((_cpu_seconds() - self._cpu) / wall, 2) if wall > 0 else None


def _output_bytes(config: PipelineConfig) -> dict[str, int]:
    """Size of each file the stages of `config` wrote (options named `path`), read after a run.

    Settings that trade size for speed (e.g. parallel segment encoders: a keyframe per segment)
    show up here, next to the fps they bought.
    """
    sizes = {}
    for stage in config.stages:
        path = stage.options.get("path")
        if isinstance(path, str) and os.path.isfile(path):
            sizes[stage.name] = os.path.getsize(path)
    return sizes


def _split_frames(item: Item) -> list[Item]:
    if isinstance(item, Batch):
        return list(item.frames)
    return [item]


def run_serial(pipeline: Pipeline, *, total_frames: int, warmup: int) -> SerialStats:
    """The hand-written-loop baseline over the pipeline's own stages (see module docstring)."""
    device = resolve_device(pipeline.device_spec)
    stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None
    stages = pipeline.stages
    source = stages[0]
    assert isinstance(source, Source)  # guaranteed by Pipeline's validation
    busy = {stage.name: 0.0 for stage in stages}
    done_times: list[float] = []
    latency: list[float] = []
    for stage in stages:
        stage.device = device
        stage.stream = stream if stage.uses_gpu else None
        stage.batch_size = 1  # one frame at a time, as a hand-written loop does

    def through(start: int, items: list[Item]) -> None:
        for index in range(start, len(stages)):
            stage, next_items = stages[index], []
            began = time.perf_counter()
            for item in items:
                if not isinstance(item, EndOfStream):
                    next_items.extend(_as_items(stage.process(item), stage, "process"))
            busy[stage.name] += time.perf_counter() - began
            items = next_items

    def synchronize() -> None:
        if stream is not None:
            stream.synchronize()

    context = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with context:
        for stage in stages:
            stage.setup()
        try:
            generator = source.generate()
            produced = 0
            while produced < total_frames:
                began = time.perf_counter()
                item = next(generator, None)
                busy[source.name] += time.perf_counter() - began
                if item is None:
                    break
                for frame_item in _split_frames(item):
                    if produced >= total_frames or isinstance(frame_item, EndOfStream):
                        continue
                    born = time.perf_counter()
                    through(1, [frame_item])
                    synchronize()  # each frame finished before the next starts
                    now = time.perf_counter()
                    done_times.append(now)
                    latency.append((now - born) * 1000)
                    produced += 1
            close = getattr(generator, "close", None)
            if close is not None:
                close()
            for index in range(1, len(stages)):
                began = time.perf_counter()
                flushed = _as_items(stages[index].flush(), stages[index], "flush")
                busy[stages[index].name] += time.perf_counter() - began
                if flushed:
                    through(index + 1, flushed)
            synchronize()
            finished = time.perf_counter()
        finally:
            for stage in stages:
                stage.teardown()
    fps, count, seconds = _steady_fps(done_times, warmup, finished)
    return SerialStats(fps=fps, frames=count, seconds=seconds, busy_s=busy, latency_ms=latency[warmup:])


def run_bench(
    config_path: str | os.PathLike[str],
    *,
    frames: int,
    warmup: int,
    baseline: str,
    overrides: Sequence[str] = (),
    baseline_overrides: Sequence[str] = (),
    repeat: int = 1,
) -> BenchResult:
    """Pipeline then baseline, `repeat` rounds in alternation; medians over rounds (see `BenchResult.ratio`).

    Rounds matter on shared machines: the same loop's rate drifts minutes apart (docs/MEASURED.md).
    Alternating the two runs exposes both to the same drift, and the median ratio
    of paired rounds is what is reported.
    """
    if repeat < 1:
        raise BenchError(f"repeat must be >= 1, got {repeat}")
    config = load_config(config_path, overrides)
    serial_config = load_config(config_path, [*overrides, *baseline_overrides]) if baseline == "serial" else None
    total = frames + warmup
    rounds: list[tuple[float, float | None]] = []
    pipeline_bytes: dict[str, int] = {}
    baseline_bytes: dict[str, int] = {}
    serial_runs: list[SerialStats] = []
    pipeline_runs: list[tuple[float, int, RunStats, float | None]] = []
    baseline_cores: list[float] = []
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeat):
        done = _DoneTimes()
        pipeline = build_pipeline(config, observers=[done], max_frames=total)
        with _CpuMeter() as pipeline_cpu:
            stats = pipeline.run_sync()
        fps, count, _ = _steady_fps(done.times, warmup, done.finished)
        pipeline_runs.append((fps, count, stats, pipeline_cpu.cores))
        pipeline_bytes = _output_bytes(config)
        serial_fps: float | None = None
        if serial_config is not None:
            with _CpuMeter() as baseline_cpu:
                serial_runs.append(run_serial(build_pipeline(serial_config), total_frames=total, warmup=warmup))
            serial_fps = serial_runs[-1].fps
            baseline_bytes = _output_bytes(serial_config)
            if baseline_cpu.cores is not None:
                baseline_cores.append(baseline_cpu.cores)
        rounds.append((fps, serial_fps))
    # The round whose pipeline fps is the median supplies the per-stage table.
    fps, count, stats, cores = sorted(pipeline_runs, key=lambda run: run[0])[(len(pipeline_runs) - 1) // 2]
    serial = sorted(serial_runs, key=lambda run: run.fps)[(len(serial_runs) - 1) // 2] if serial_runs else None
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return BenchResult(
        config=str(config_path),
        device=str(device),
        pipeline_fps=statistics.median(run[0] for run in pipeline_runs),
        pipeline_frames=count,
        pipeline_stats=stats,
        baseline=serial,
        baseline_overrides=list(baseline_overrides),
        peak_gpu_mib=peak,
        host=_host_info(device),
        pipeline_cores=cores,
        baseline_cores=statistics.median(baseline_cores) if baseline_cores else None,
        rounds=rounds,
        output_bytes={"pipeline": pipeline_bytes, "baseline_serial": baseline_bytes},
    )
