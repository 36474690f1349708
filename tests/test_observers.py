"""Observers shipped with the runner (the statistics collector is tested through `Pipeline`'s tests)."""

from __future__ import annotations

import gc
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
