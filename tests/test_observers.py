"""Observers shipped with the runner (the statistics collector is tested through `Pipeline`'s tests)."""

from __future__ import annotations

import gc
import time
import weakref
from typing import Any

from streamflow import Batch, Frame, Pipeline, Stage
from streamflow.observers import FreezeObjectsAfterSetup
from streamflow.testing import ListSink, ListSource, make_frames


class Node:
    """Half of a reference cycle: freed only by the garbage collector, never by reference counts."""

    def __init__(self) -> None:
        self.other: Any = None


class LeavesGarbage(Stage):
    """A setup that leaves a reference cycle behind (as a model conversion leaves its temporaries)
    and keeps a model-like object alive."""

    def setup(self) -> None:
        first, second = Node(), Node()
        first.other, second.other = second, first
        self.garbage = weakref.ref(first)
        self.model = Node()

    def process(self, item: Frame | Batch) -> Frame | Batch:
        return item


def test_what_setup_leaves_alive_is_frozen_and_its_garbage_collected_first() -> None:
    stage = LeavesGarbage(name="model")
    pipeline = Pipeline(
        [ListSource(make_frames(3)), stage, ListSink()], device="cpu", observers=[FreezeObjectsAfterSetup()]
    )
    try:
        gc.unfreeze()
        pipeline.run_sync()
        assert gc.get_freeze_count() > 0
        assert stage.garbage() is None, "the cycle setup left was collected before the freeze"
        # The object kept alive since setup is out of the collector's generations: no pause scans it.
        assert not any(obj is stage.model for generation in range(3) for obj in gc.get_objects(generation))
    finally:
        gc.unfreeze()


def test_startup_times_follow_the_run_from_setup_to_the_first_result() -> None:
    from streamflow.observers import Observer, StartupTimes

    class SlowSetup(Stage):
        def setup(self) -> None:
            time.sleep(0.05)  # a model load, say

        def process(self, item):  # type: ignore[no-untyped-def]
            return item

    setups: list[tuple[str, float]] = []

    class Setups(Observer):
        def on_stage_set_up(self, stage: Stage, seconds: float) -> None:
            setups.append((stage.name, seconds))

    startup = StartupTimes()
    sources = [ListSource(make_frames(2, source_id=f"s{i}"), name=f"s{i}") for i in range(3)]
    pipeline = Pipeline(
        [ListSource(name="source"), SlowSetup(name="model"), ListSink(name="sink")],
        sources=sources,
        device="cpu",
        observers=[startup, Setups()],
    )
    pipeline.run_sync()
    assert [name for name, _ in setups] == ["model", "sink"] and setups[0][1] >= 0.05
    steps = {step["step"]: step for step in startup.summary()["steps"]}
    assert steps["model: setup"]["took_s"] >= 0.05
    order = ["model: setup", "sink: setup", "first source open", "all 3 sources open", "first result"]
    assert [steps[name]["at_s"] for name in order] == sorted(steps[name]["at_s"] for name in order)
    assert startup.summary()["first_result_s"] == steps["first result"]["at_s"]
    assert startup.line().startswith("start-up: first result ")
