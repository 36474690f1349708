"""Human-readable run figures: the live per-stage line and the end-of-run summary table."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamflow.observers import RunStats, percentile

if TYPE_CHECKING:
    from streamflow.pipeline import Pipeline

__all__ = ["LiveDisplay", "summary_table"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


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


def _live_line(stats: RunStats) -> str:
    parts = []
    for stage in stats.stages:
        queue = f" q{stage.queue_depth}/{stage.queue_capacity}" if stage.queue_capacity else ""
        drops = f" drop {stage.dropped}" if stage.dropped else ""
        parts.append(f"{stage.name} {stage.fps(stats.wall_s):.0f}fps{queue}{drops}")
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
