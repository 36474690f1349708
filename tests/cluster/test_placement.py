"""Placement by measured load, and the progress an actor reports (no Ray needed)."""

from __future__ import annotations

from streamflow import Pipeline
from streamflow.cluster.driver import part_options
from streamflow.cluster.placement import pick_actor, spread
from streamflow.cluster.progress import ProgressObserver
from streamflow.sources import SourceSpec
from streamflow.testing import ListSink, ListSource, make_frames


def test_spread_without_measurements_is_even_by_count() -> None:
    placed = spread([f"s{i}" for i in range(7)], ["a", "b", "c"])
    assert [len(placed[name]) for name in "abc"] == [3, 2, 2]
    assert sorted(s for ids in placed.values() for s in ids) == sorted(f"s{i}" for i in range(7))


def test_pick_prefers_the_lowest_measured_load_over_the_fewest_sources() -> None:
    # "a" has one source but it runs at 60 fps; "b" has two at 10 fps each: "b" carries less.
    assert pick_actor({"a": [60.0], "b": [10.0, 10.0]}) == "b"
    # An unmeasured source counts as the mean measured rate (here 20), not as free.
    assert pick_actor({"a": [None, None], "b": [30.0]}) == "b"
    assert pick_actor({"a": [20.0], "b": [20.0]}) == "a", "ties go to the first actor"


def test_progress_records_last_delivered_frame_and_drain_per_source() -> None:
    progress = ProgressObserver()
    sink = ListSink(name="sink")
    sources = [ListSource(make_frames(n, source_id=name), name=name) for name, n in (("a", 5), ("b", 3))]
    Pipeline([ListSource([], name="template"), sink], device="cpu", sources=sources, observers=[progress]).run_sync()
    report = progress.report()
    assert {name: (p.delivered, p.frames, p.ended, p.drained) for name, p in report.items()} == {
        "a": (4, 5, "finished", True),
        "b": (2, 3, "finished", True),
    }


def test_a_resumed_part_starts_after_the_delivered_frames_and_ends_where_the_source_would() -> None:
    spec = SourceSpec(id="cam", uri="cam.mp4", loop=True)
    assert part_options(spec, "cam", None) == {"id": "cam", "uri": "cam.mp4", "loop": True}
    resumed = part_options(spec, "cam.part1", 42, max_frames=100)
    assert resumed == {"id": "cam.part1", "uri": "cam.mp4", "loop": True, "start_frame": 42, "max_frames": 100}
    # The pipeline's max_frames counts from the source's own first frame; a smaller own cap stays.
    late = SourceSpec(id="cam", uri="cam.mp4", start_frame=10, max_frames=50)
    assert part_options(late, "cam.part1", 20, max_frames=100)["max_frames"] == 50
    assert part_options(late, "cam.part1", 20, max_frames=30)["max_frames"] == 40
    assert part_options(spec, "cam.part1", 20, max_frames=100, template_max_frames=60)["max_frames"] == 60
