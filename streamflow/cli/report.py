"""Human-readable run figures: the live per-stage line and the end-of-run summary table."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamflow.observers import RunStats, percentile

if TYPE_CHECKING:
    from streamflow.cli.multibench import SourcesBenchResult
    from streamflow.pipeline import Pipeline

__all__ = ["LiveDisplay", "sources_bench_table", "sources_table", "summary_table"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _percentiles_ms(values: tuple[float | None, ...]) -> str:
    """p50/p95/p99 in whole ms, `-` for one not measured."""
    return "/".join("-" if v is None else f"{v:.0f}" for v in values)


#: What the summary's columns mean, printed under the table: the figures are easy to misread.
SUMMARY_NOTE = (
    "service ms/frame: the stage's own working time per frame taken in (busy time / frames), and the fps "
    "it could reach alone. since source: time from the frame leaving the source to leaving this stage, "
    "so it includes every stage and queue before it and grows along the pipeline."
)


def counter_text(counters: dict[str, float]) -> str:
    """`{"bad_packets": 2}` -> `bad packets 2`: counters as words a reader can follow."""
    return ", ".join(f"{name.replace('_', ' ')} {value:g}" for name, value in sorted(counters.items()))


def summary_table(stats: RunStats, title: str | None = None) -> Table:
    """One row per stage: frames, its own service time, time since the source, queue, drops, counters.

    The end-to-end rate appears once, in the title: every stage of a pipeline passes the same frames
    in the same wall time, so a per-row fps would repeat one number.
    """
    last = stats.stages[-1] if stats.stages else None
    done = (last.frames_in if last is not None else 0) or 0
    rate = done / stats.wall_s if stats.wall_s > 0 else 0.0
    heading = f"{stats.pipeline}: {done} frames in {stats.wall_s:.2f} s, {rate:.1f} fps end to end"
    table = Table(
        title=heading if title is None else f"{title}: {heading}",
        title_justify="left",
        caption=SUMMARY_NOTE,
        caption_justify="left",
    )
    for column in (
        "stage",
        "device",
        "frames in/out",
        "busy %",
        "service ms/frame",
        "alone fps",
        "since source p50 ms",
        "p95",
        "p99",
        "queue max/cap",
        "drops",
        "counters",
    ):
        table.add_column(column, justify="left" if column in ("stage", "device", "counters") else "right")
    for stage in stats.stages:
        busy = 100 * stage.busy_s / stats.wall_s if stats.wall_s > 0 else 0.0
        frames = stage.frames_in or stage.frames_out  # a source takes nothing in
        service = 1000 * stage.busy_s / frames if frames else None
        alone = frames / stage.busy_s if stage.busy_s > 0 and frames else None
        samples = stage.latency_ms
        queue = f"{stage.queue_max_depth}/{stage.queue_capacity}" if stage.queue_capacity else "-"
        table.add_row(
            stage.name,
            stage.device,
            f"{stage.frames_in}/{stage.frames_out}",
            f"{busy:.0f}",
            _ms(service),
            "-" if alone is None else f"{alone:.1f}",
            _ms(percentile(samples, 50)),
            _ms(percentile(samples, 95)),
            _ms(percentile(samples, 99)),
            queue,
            str(stage.dropped),
            counter_text(stage.counters),
        )
    return table


def sources_table(stats: RunStats) -> Table:
    """One row per source: frames produced and delivered, fps, latency, drops, reconnects, how it ended."""
    table = Table(title=f"{len(stats.sources)} sources", title_justify="left")
    for column in ("source", "frames", "done", "fps", "lat p50 ms", "p95", "drops", "reconnects", "ended"):
        table.add_column(column, justify="left" if column in ("source", "ended") else "right")
    for source in stats.sources:
        table.add_row(
            source.id,
            str(source.frames),
            str(source.frames_done),
            f"{source.fps:.1f}",
            _ms(percentile(source.latency_ms, 50)),
            _ms(percentile(source.latency_ms, 95)),
            str(source.dropped),
            str(source.reconnects),
            source.error or source.ended or "running",
        )
    return table


def sources_bench_table(result: SourcesBenchResult) -> Table:
    """`bench --sources`: one row per source count, against the raw decode ceiling of the same run."""
    table = Table(title=f"{result.config}: {'paced' if result.realtime else 'unpaced'} sources of {result.uri}")
    columns = ["sources", "workers", "fps", "x raw", "per-source min/med/max", "lat p50/p95/p99 ms", "drops", "first s"]
    if result.realtime:  # paced: capture latency and drops after the warm-up
        columns.insert(6, "steady capture p50/p95/p99 ms")
        columns[columns.index("drops")] = "drops (after warm-up)"
    for column in [*columns, "GPU MiB", "host MiB", "failed"]:
        table.add_column(column, justify="right")
    ceiling = result.ceiling
    for run in result.runs:
        low, mid, high = run.per_source_fps
        steady = [_percentiles_ms(run.steady_capture_latency_ms)] if result.realtime else []
        table.add_row(
            str(run.sources),
            str(run.workers),
            f"{run.fps:.0f}",
            f"{run.fps / ceiling:.2f}" if ceiling else "-",
            f"{low:.1f}/{mid:.1f}/{high:.1f}",
            _percentiles_ms(run.latency_ms),
            *steady,
            f"{run.drops} ({run.steady_drops})" if result.realtime else str(run.drops),
            "-" if run.first_result_s is None else f"{run.first_result_s:.1f}",
            "-" if run.peak_gpu_mib is None else f"{run.peak_gpu_mib:.0f}",
            f"{run.host_mib_added:.0f}",
            str(run.failed),
        )
    raw = ", ".join(f"{k} threads {v:.0f}" for k, v in sorted(result.raw_fps.items()))
    caption = [f"raw decode (same input, nothing else): {raw or 'not measured'}"]
    for run in result.runs:
        if run.workers_lost:
            caption.append(
                f"{run.sources} sources over {run.workers} workers: {run.workers_lost} worker(s) lost during the run; "
                "what they delivered is not in that row"
            )
    table.caption = "\n".join(caption)
    return table


def _live_line(stats: RunStats) -> str:
    parts = []
    for stage in stats.stages:
        queue = f" q{stage.queue_depth}/{stage.queue_capacity}" if stage.queue_capacity else ""
        drops = f" drop {stage.dropped}" if stage.dropped else ""
        parts.append(f"{stage.name} {stage.fps(stats.wall_s):.0f}fps{queue}{drops}")
    if len(stats.sources) > 1:
        running = sum(1 for source in stats.sources if source.ended is None)
        failed = len(stats.failed_sources)
        parts.append(f"sources {running} running of {len(stats.sources)}" + (f", {failed} failed" if failed else ""))
    return " | ".join(parts)


class LiveDisplay:
    """Redraws one status line per half second from the pipeline's live snapshot, in a thread.

    Reading the snapshot from another thread is safe for display purposes: it only reads counters.
    """

    def __init__(self, pipeline: Pipeline, console: Console, interval: float = 0.5) -> None:
        self.pipeline = pipeline
        self.console = console
        self.interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="streamflow-live", daemon=True)

    def __enter__(self) -> LiveDisplay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=2)

    def _loop(self) -> None:
        with Live(console=self.console, refresh_per_second=4, transient=True) as live:
            while not self._done.wait(self.interval):
                live.update(_live_line(self.pipeline.snapshot()))
