"""The end-of-run summary says what each figure is: one end-to-end rate, per-stage service time,
time since the source (which grows along the pipeline), counters in words."""

from __future__ import annotations

from rich.console import Console

from streamflow.cli.report import counter_text, summary_table
from streamflow.observers import RunStats, StageStats


def render(stats: RunStats) -> str:
    console = Console(width=250, record=True)
    console.print(summary_table(stats))
    return console.export_text()


def test_summary_has_one_rate_and_per_stage_service_time() -> None:
    source = StageStats("source", "Decode", "cpu", frames_out=40, busy_s=0.4, latency_ms=[1.0] * 40)
    slow = StageStats("detect", "Infer", "cpu", frames_in=40, frames_out=40, busy_s=2.0, latency_ms=[60.0] * 40)
    sink = StageStats(
        "sink", "NullSink", "cpu", frames_in=40, busy_s=0.04, latency_ms=[70.0] * 40, counters={"bad_packets": 2}
    )
    text = render(RunStats("demo", 4.0, [source, slow, sink]))
    assert "demo: 40 frames in 4.00 s, 10.0 fps end to end" in text
    detect = [cell.strip() for cell in next(line for line in text.splitlines() if "detect" in line).split("│")]
    # 2.0 s busy over 40 frames: 50 ms a frame, 20 fps if it ran alone; 60 ms after leaving the source.
    assert detect[3:8] == ["40/40", "50", "50.0", "20.0", "60.0"], detect
    assert "service ms/frame" in text and "since source" in text and "grows along the pipeline" in text
    assert "bad packets 2" in text


def test_counters_read_as_words() -> None:
    assert counter_text({"encoded_on_cpu": 12, "bad_packets": 1}) == "bad packets 1, encoded on cpu 12"
