"""`streamflow bench --sources N` on the CPU: N copies of a clip through a decode -> null config, and raw PyAV."""

from __future__ import annotations

from pathlib import Path

from streamflow.cli.multibench import _dropped_by, run_sources_bench
from streamflow.video.synth import write_clip


def test_sources_bench_reports_every_source_and_the_raw_ceiling(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", width=64, height=48, frames=10)
    config = tmp_path / "p.yaml"
    config.write_text(
        f"name: t\ndevice: cpu\nstages:\n"
        f"  - {{name: source, type: decode, uri: {clip}, emit_batch: 2}}\n"
        f"  - {{name: sink, type: 'null', batch_size: 4}}\n"
    )
    result = run_sources_bench(config, [1, 3], frames_per_source=15, warmup=2, raw_threads=[1, 2], raw_passes=1)
    assert [run.sources for run in result.runs] == [1, 3]
    for run in result.runs:
        assert run.frames == 15 * run.sources and run.failed == 0 and run.fps > 0
        assert len(run.stats.sources) == run.sources and all(s.frames_done == 15 for s in run.stats.sources)
        low, mid, high = run.per_source_fps
        assert 0 < low <= mid <= high
    assert set(result.raw_fps) == {1, 2} and result.ceiling is not None and result.ceiling > 0
    data = result.to_dict()
    assert data["raw_decode_ceiling_fps"] > 0 and data["runs"][1]["sources"] == 3


def test_the_paced_bench_tells_drops_after_the_warm_up_from_the_rest(tmp_path: Path) -> None:
    # A sink three times slower than the paced source drops frames all through the run, so some
    # of them fall after the warm-up's results; a queue of one item makes that certain.
    clip = write_clip(tmp_path / "c.mp4", width=64, height=48, frames=30, fps=30)
    config = tmp_path / "p.yaml"
    config.write_text(
        f"name: t\ndevice: cpu\nqueue_size: 1\nstages:\n"
        f"  - {{name: source, type: decode, uri: {clip}}}\n"
        f"  - {{name: sink, type: 'support.stages:LinesSink', path: {tmp_path / 'lines.jsonl'}, delay: 0.1}}\n"
    )
    result = run_sources_bench(config, [1], frames_per_source=30, warmup=2, realtime=True)
    (run,) = result.runs
    assert run.drops > 0 and run.frames + run.drops == 30
    assert 0 < run.steady_drops < run.drops, (run.steady_drops, run.drops)
    assert result.to_dict()["runs"][0]["steady_drops"] == run.steady_drops


def test_drops_by_a_moment_come_from_the_last_count_noted_before_it() -> None:
    log = [(1.0, 2), (2.0, 5), (3.0, 9)]
    assert [_dropped_by(log, t) for t in (0.5, 1.0, 2.5, 9.0)] == [0, 2, 5, 9]
    assert _dropped_by([], 5.0) == 0
