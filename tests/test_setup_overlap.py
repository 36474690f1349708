"""Start-up work overlaps: stages set up at once, and sources open while they do.

Each test makes the overlap a condition of success (two setups that wait for each other, a model
setup that waits for a source to open), so none of them depends on timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from streamflow import Batch, Frame, Pipeline, Stage
from streamflow.frame import Item
from streamflow.testing import ListSink, ListSource, make_frames

WAIT_S = 10.0  # only reached if the overlap is missing: the test then fails rather than hangs


class MeetsOthersInSetup(Stage):
    """A setup that returns only once every stage sharing `barrier` is inside its own setup."""

    def __init__(self, barrier: threading.Barrier, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.barrier = barrier

    def setup(self) -> None:
        self.barrier.wait(timeout=WAIT_S)

    def process(self, item: Frame | Batch) -> Frame | Batch:
        return item


class WaitsForSource(Stage):
    """A model-like setup that returns only once a source has opened its input and made an item."""

    def __init__(self, opened: threading.Event, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.opened = opened
        self.done = threading.Event()

    def setup(self) -> None:
        if not self.opened.wait(timeout=WAIT_S):
            raise RuntimeError("no source made an item while this stage set up")
        self.done.set()

    def process(self, item: Frame | Batch) -> Frame | Batch:
        return item


class SignalsOpen(ListSource):
    """A source that says when it made an item, and counts the items it made before the model
    stage was ready."""

    def __init__(self, opened: threading.Event, model: WaitsForSource | None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.opened = opened
        self.model = model
        self.generated_before_model_ready = 0
        self.torn_down = False

    def generate(self) -> Iterator[Item]:
        for item in super().generate():
            if self.model is not None and not self.model.done.is_set():
                self.generated_before_model_ready += 1
            self.opened.set()
            yield item

    def teardown(self) -> None:
        self.torn_down = True


class FailsSetup(Stage):
    def __init__(self, opened: threading.Event, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.opened = opened

    def setup(self) -> None:
        self.opened.wait(timeout=WAIT_S)  # the source is open: its teardown is what is tested
        raise RuntimeError("model file is corrupt")

    def process(self, item: Frame | Batch) -> Frame | Batch:
        return item


def test_stages_set_up_at_the_same_time() -> None:
    barrier = threading.Barrier(2)
    sink = ListSink(name="sink")
    pipeline = Pipeline(
        [
            ListSource(make_frames(3)),
            MeetsOthersInSetup(barrier, name="model"),
            MeetsOthersInSetup(barrier, name="postprocess"),
            sink,
        ],
        device="cpu",
    )
    pipeline.run_sync()
    assert [frame.index for frame in sink.frames] == [0, 1, 2]


@pytest.mark.parametrize("many", [False, True])
def test_sources_open_and_make_their_first_item_while_the_stages_set_up(many: bool) -> None:
    opened = threading.Event()
    model = WaitsForSource(opened, name="model")
    sink = ListSink(name="sink")
    if many:
        sources = [SignalsOpen(opened, model, items=make_frames(4, source_id=f"s{i}"), name=f"s{i}") for i in range(3)]
        pipeline = Pipeline([ListSource(name="source"), model, sink], sources=sources, device="cpu")
    else:
        sources = [SignalsOpen(opened, model, items=make_frames(4))]
        pipeline = Pipeline([sources[0], model, sink], device="cpu")
    pipeline.run_sync()
    # Each source made its first item before the model was ready, and no more than that: the rest
    # waited for the stages; nothing was lost or reordered.
    assert [source.generated_before_model_ready for source in sources] == [1] * len(sources)
    for source in sources:
        frames = [frame.index for frame in sink.frames if frame.source_id == source.items[0].source_id]
        assert frames == [0, 1, 2, 3]


def test_a_stage_that_fails_to_set_up_ends_the_opened_sources_unstarted() -> None:
    opened = threading.Event()
    sink = ListSink(name="sink")
    sources = [SignalsOpen(opened, None, items=make_frames(4, source_id=f"s{i}"), name=f"s{i}") for i in range(2)]
    pipeline = Pipeline(
        [ListSource(name="source"), FailsSetup(opened, name="model"), sink], sources=sources, device="cpu"
    )
    with pytest.raises(RuntimeError, match="model file is corrupt") as caught:
        pipeline.run_sync()
    assert getattr(caught.value, "stage_name", None) == "model"
    assert all(source.torn_down for source in sources)
    assert sink.frames == [] and sink.torn_down  # the sink had set up: it is torn down too
    reasons = {status.id: status.ended for status in pipeline.source_status()}
    assert reasons == {"s0": "not started: a stage failed to set up", "s1": "not started: a stage failed to set up"}
