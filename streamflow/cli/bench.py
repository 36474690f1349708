"""`streamflow bench`: the configured pipeline against a baseline, same input, same process.

The `serial` baseline is the same pipeline run by the same runner with concurrency switched off
(`Pipeline(serial=True)`): one loop takes each frame through every stage in order, the device
synchronised before the next frame starts, no queues in between. Stages, their threads, CUDA streams,
observers and end of stream are the pipeline's own, so the ratio compares two schedules, not two
drivers. The baseline gets batch-1 shapes by itself, as a per-frame loop has them
(`batch_one_overrides`: a source's or window's `emit_batch`, a stage's `batch_size`, a fixed batch
in `input_shapes`); `--baseline-set` adds overrides after those.

Both runs exclude the first `warmup` frames from timing (model loads, CUDA graph capture, allocator
growth) and time the next `frames` frames as they leave the last stage, up to the end of the last
stage's flush: a sink that hands frames on (an encoder in a child process, an encoder's lookahead)
is timed until its output is complete, not until it has accepted the last frame. A source that can
loop (`decode`) loops, so that the frames asked for are timed whatever the input's length; one that
can't says in a warning how many were timed.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

from streamflow.cli.report import summary_table
from streamflow.config import PipelineConfig, build_pipeline, load_config
from streamflow.frame import Frame
from streamflow.observers import Observer, RunStats, percentile
from streamflow.registry import UnknownStageType, resolve_stage_type
from streamflow.stage import Stage, resolve_device

__all__ = ["BenchError", "BenchResult", "TimedRun", "batch_one_overrides", "run_bench"]


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
class TimedRun:
    """One run as the bench times it: steady fps over the frames after warm-up, and the run's stats."""

    fps: float
    frames: int
    seconds: float
    stats: RunStats
    warmup: int
    # Process CPU time (all threads, ended child processes) over wall time: cores kept busy.
    cores: float | None = None

    @property
    def busy_s(self) -> dict[str, float]:
        """Host time each stage spent in its hooks, warm-up included."""
        return {stage.name: stage.busy_s for stage in self.stats.stages}

    @property
    def latency_ms(self) -> list[float]:
        """From leaving the source to leaving the last stage, per timed frame."""
        return self.stats.stages[-1].latency_ms[self.warmup :]

    @property
    def loops(self) -> int:
        """How often the source started its input again to deliver the frames asked for."""
        return int(self.stats.stages[0].counters.get("loops", 0))


@dataclass
class BenchResult:
    config: str
    device: str
    pipeline_fps: float
    pipeline_frames: int
    pipeline_stats: RunStats
    baseline: TimedRun | None
    # What the baseline's config got on top of the pipeline's: the automatic batch-1 overrides, then
    # the user's (`--baseline-set`).
    batch_one_overrides: list[str]
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
    # One line each: fewer frames timed than asked for (an input that ended and could not loop).
    warnings: list[str] = field(default_factory=list)
    # Overrides both runs got from the bench itself (the source looped: `source.loop=true`).
    input_overrides: list[str] = field(default_factory=list)

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
            "input_overrides": self.input_overrides,
            "warnings": self.warnings,
        }
        if self.baseline:
            lat = self.baseline.latency_ms
            data["baseline_serial"] = {
                "fps": round(self.baseline.fps, 2),
                "frames": self.baseline.frames,
                "busy_s": {k: round(v, 4) for k, v in self.baseline.busy_s.items()},
                "latency_ms": {f"p{q}": round(percentile(lat, q) or 0.0, 3) for q in (50, 95, 99)},
                "overrides": [*self.batch_one_overrides, *self.baseline_overrides],
                "batch_one_overrides": self.batch_one_overrides,
                "stages": self.baseline.stats.to_dict()["stages"],
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
            overrides = [f"{' '.join(self.batch_one_overrides)} (batch 1)"] if self.batch_one_overrides else []
            if self.baseline_overrides:
                overrides.append(f"{' '.join(self.baseline_overrides)} (--baseline-set)")
            console.print(f"serial baseline overrides: {'; '.join(overrides) or 'none'}")
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
        if self.input_overrides:
            console.print(f"input looped to deliver the frames asked for: {' '.join(self.input_overrides)} (both runs)")
        for line in self.warnings:
            console.print(f"[yellow]warning: {line}[/]")
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


def _stage_fields(spec_type: str, config: PipelineConfig) -> dict[str, Any]:
    """Option name -> pydantic field of a stage type ({} for a type that does not resolve: the
    pipeline's build then says why)."""
    search = [Path(config.source_file).parent] if config.source_file else []
    try:
        return dict(resolve_stage_type(spec_type, [*search, Path.cwd()]).Config.model_fields)
    except UnknownStageType:
        return {}


def batch_one_overrides(config: PipelineConfig) -> list[str]:
    """The overrides that give a pipeline the shapes of a per-frame loop, for the serial baseline.

    A source's or window's `emit_batch` 1, every stage's `batch_size` 1 and a fixed batch dimension
    of 1 in `input_shapes`: without them the baseline would pad each frame to the pipeline's batch
    (a model fixed at batch 8 runs 8 rows for every frame). Only settings that differ are listed.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.yaml"
        >>> _ = path.write_text("name: t\\nstages:\\n  - {name: src, type: 'streamflow.testing:ListSource'}\\n"
        ...                     "  - {name: sink, type: 'streamflow.testing:ListSink', batch_size: 4}\\n")
        >>> batch_one_overrides(load_config(path))
        ['sink.batch_size=1']
    """
    found: list[str] = []
    for spec in config.stages:
        options, fields = spec.options, _stage_fields(spec.type, config)
        if spec.batch_size != 1:
            found.append(f"{spec.name}.batch_size=1")
        emit = fields.get("emit_batch")
        if emit is not None and options.get("emit_batch", emit.default) != 1:
            found.append(f"{spec.name}.emit_batch=1")
        shapes = options.get("input_shapes") if "input_shapes" in fields else None
        if isinstance(shapes, dict):
            # A list is a fixed shape, batch first; a {min, opt, max} range already admits smaller batches.
            one = {
                name: [1, *shape[1:]] if isinstance(shape, list) and shape else shape for name, shape in shapes.items()
            }
            if one != shapes:
                flow = yaml.safe_dump(one, default_flow_style=True, width=1 << 16).strip()
                found.append(f"{spec.name}.input_shapes={flow}")
    return found


def _loop_overrides(config: PipelineConfig) -> list[str]:
    """`source.loop=true` where the source can loop and the config leaves it unset."""
    first = config.stages[0]
    if config.sources is None and "loop" in _stage_fields(first.type, config) and "loop" not in first.options:
        return [f"{first.name}.loop=true"]
    return []


def _timed_run(config: PipelineConfig, *, total: int, warmup: int) -> TimedRun:
    """Run `config` for `total` frames (its `serial` setting chooses the schedule) and time it."""
    done = _DoneTimes()
    pipeline = build_pipeline(config, observers=[done], max_frames=total)
    with _CpuMeter() as cpu:
        stats = pipeline.run_sync()
    fps, count, seconds = _steady_fps(done.times, warmup, done.finished)
    return TimedRun(fps=fps, frames=count, seconds=seconds, stats=stats, warmup=warmup, cores=cpu.cores)


def _median_run(runs: list[TimedRun]) -> TimedRun:
    """The round whose fps is the median (it supplies the per-stage figures)."""
    return sorted(runs, key=lambda run: run.fps)[(len(runs) - 1) // 2]


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
    of paired rounds is what is reported. The baseline is the same config with `serial: true`,
    `batch_one_overrides` and then `baseline_overrides`.
    """
    if repeat < 1:
        raise BenchError(f"repeat must be >= 1, got {repeat}")
    looping = _loop_overrides(load_config(config_path, overrides))
    config = load_config(config_path, [*overrides, *looping])
    batch_one = batch_one_overrides(config) if baseline == "serial" else []
    serial_config = None
    if baseline == "serial":
        loaded = load_config(config_path, [*overrides, *looping, *batch_one, *baseline_overrides])
        serial_config = loaded.model_copy(update={"serial": True})
    total = frames + warmup
    rounds: list[tuple[float, float | None]] = []
    pipeline_bytes: dict[str, int] = {}
    baseline_bytes: dict[str, int] = {}
    pipeline_runs: list[TimedRun] = []
    serial_runs: list[TimedRun] = []
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeat):
        pipeline_runs.append(_timed_run(config, total=total, warmup=warmup))
        pipeline_bytes = _output_bytes(config)
        if serial_config is not None:
            serial_runs.append(_timed_run(serial_config, total=total, warmup=warmup))
            baseline_bytes = _output_bytes(serial_config)
        rounds.append((pipeline_runs[-1].fps, serial_runs[-1].fps if serial_config is not None else None))
    pipeline = _median_run(pipeline_runs)
    serial = _median_run(serial_runs) if serial_runs else None
    warnings = [
        f"{label}: {run.frames} frames timed, not the {frames} asked for: the input ended after "
        f"{warmup + run.frames} frames and its source {config.stages[0].name!r} cannot loop"
        for label, run in (("pipeline", pipeline), ("serial baseline", serial))
        if run is not None and run.frames < frames
    ]
    serial_cores = [run.cores for run in serial_runs if run.cores is not None]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return BenchResult(
        config=str(config_path),
        device=str(device),
        pipeline_fps=statistics.median(run.fps for run in pipeline_runs),
        pipeline_frames=pipeline.frames,
        pipeline_stats=pipeline.stats,
        baseline=serial,
        batch_one_overrides=batch_one,
        baseline_overrides=list(baseline_overrides),
        peak_gpu_mib=peak,
        host=_host_info(device),
        pipeline_cores=pipeline.cores,
        baseline_cores=statistics.median(serial_cores) if serial_cores else None,
        rounds=rounds,
        output_bytes={"pipeline": pipeline_bytes, "baseline_serial": baseline_bytes},
        warnings=warnings,
        input_overrides=[override for override in looping if pipeline.loops or (serial and serial.loops)],
    )
