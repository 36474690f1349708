from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from streamflow import Batch, EndOfStream, Frame, Pipeline, PipelineError, Stage, StageConfig
from streamflow.config import ConfigError, build_pipeline
from streamflow.frame import Item
from streamflow.stage import Overflow
from streamflow.testing import ListSink, ListSource, RaiseError, make_frames, run_stage
from support.stages import FailOn, LinesSink, Tracker


class Buffering(Stage):
    """Holds every frame until end of stream, then emits them in reverse: flush output must arrive."""

    def setup(self) -> None:
        self.held: list[Frame] = []

    def process(self, item: Frame | Batch) -> None:
        self.held.extend(item.frames)

    def flush(self) -> list[Frame]:
        return self.held[::-1]


class EosSpy(Stage):
    """Remembers the order of frames and the moment flush ran."""

    def setup(self) -> None:
        self.events: list[object] = []

    def process(self, item: Frame | Batch) -> Frame | Batch:
        self.events.extend(f.index for f in item.frames)
        return item

    def flush(self) -> None:
        self.events.append("flush")


def test_end_of_stream_reaches_every_stage_after_the_last_frame_and_flush_output_is_delivered() -> None:
    first, second, sink = EosSpy(name="first"), EosSpy(name="second"), ListSink(name="sink")
    buffering = Buffering(name="buffering")
    Pipeline([ListSource(make_frames(5)), first, buffering, second, sink], device="cpu").run_sync()
    assert first.events == [0, 1, 2, 3, 4, "flush"]
    assert second.events == [4, 3, 2, 1, 0, "flush"], "flush output travels before end of stream"
    assert [f.index for f in sink.frames] == [4, 3, 2, 1, 0]
    assert sink.flushed and sink.torn_down


def test_back_pressure_keeps_in_flight_count_within_the_bound() -> None:
    source = ListSource(make_frames(60), name="source")
    tracker = Tracker(source, name="tracker", queue_size=2)
    stats = Pipeline([source, tracker], device="cpu").run_sync()
    # capacity 2 on the edge + 1 in the sink's hands + 1 held by the source waiting for room
    assert tracker.max_in_flight <= 2 + 2
    assert tracker.consumed == 60
    assert stats.stage("tracker").queue_max_depth <= 2
    assert stats.stage("tracker").dropped == 0


def test_drop_oldest_drops_and_counts_while_block_never_drops() -> None:
    frames = make_frames(40)
    sink = ListSink(name="sink", queue_size=2, overflow=Overflow.DROP_OLDEST, delay=0.01)
    stats = Pipeline([ListSource(frames), sink], device="cpu").run_sync()
    dropped = stats.stage("sink").dropped
    assert dropped > 0
    assert len(sink.frames) + dropped == 40
    indices = [f.index for f in sink.frames]
    assert indices == sorted(indices), "drops never reorder frames"

    blocking = ListSink(name="sink", queue_size=2, delay=0.002)
    stats = Pipeline([ListSource(make_frames(40)), blocking], device="cpu").run_sync()
    assert stats.stage("sink").dropped == 0 and len(blocking.frames) == 40


def test_live_source_edge_defaults_to_drop_oldest() -> None:
    sink = ListSink(name="sink", queue_size=1, delay=0.01)
    stats = Pipeline([ListSource(make_frames(30), live=True), sink], device="cpu").run_sync()
    assert stats.stage("sink").queue_overflow == "drop_oldest"
    assert stats.stage("sink").dropped > 0
    assert stats.stage("sink").capture_latency_ms, "live frames carry their arrival time"


def test_error_in_middle_stage_keeps_type_names_stage_and_leaves_outputs_valid(tmp_path: Path) -> None:
    out = tmp_path / "lines.jsonl"
    pipeline = Pipeline(
        [ListSource(make_frames(20)), FailOn(name="checker", index=5), LinesSink(name="writer", path=out)], device="cpu"
    )

    async def run_and_inspect() -> None:
        with pytest.raises(KeyError) as caught:
            await pipeline.run()
        assert caught.value.stage_name == "checker"  # type: ignore[attr-defined]
        assert any("checker" in note for note in caught.value.__notes__)
        assert asyncio.all_tasks() == {asyncio.current_task()}, "no task may outlive run()"

    asyncio.run(run_and_inspect())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[-1] == {"end": True}, "the sink was torn down: its output is complete"
    # The error cancels the other stages at once: the writer has a prefix of the frames that passed
    # the checker (how long depends on scheduling), never a frame at or after the bad one.
    written = [line["index"] for line in lines[:-1]]
    assert written == list(range(len(written))) and len(written) <= 5
    deadline = time.time() + 2
    while time.time() < deadline and any(t.name.startswith("streamflow-") for t in threading.enumerate()):
        time.sleep(0.02)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("streamflow-")]


def test_error_in_source_propagates_with_original_type() -> None:
    items = [*make_frames(2), RaiseError(ConnectionError("camera gone"))]
    sink = ListSink(name="sink")
    with pytest.raises(ConnectionError, match="camera gone") as caught:
        Pipeline([ListSource(items, name="cam"), sink], device="cpu").run_sync()
    assert caught.value.stage_name == "cam"  # type: ignore[attr-defined]
    assert sink.torn_down


def test_error_in_setup_names_the_stage_and_tears_down_the_ones_already_set_up() -> None:
    class BadSetup(Stage):
        def setup(self) -> None:
            raise FileNotFoundError("model.onnx")

    sink = ListSink(name="sink")
    source = ListSource(make_frames(2), name="src")
    with pytest.raises(FileNotFoundError) as caught:
        Pipeline([source, BadSetup(name="bad"), sink], device="cpu").run_sync()
    assert caught.value.stage_name == "bad"  # type: ignore[attr-defined]
    assert not sink.torn_down, "a stage never set up is not torn down"


def test_batch_size_gathers_queued_frames_into_batches() -> None:
    class Sizes(Stage):
        def setup(self) -> None:
            self.sizes: list[int] = []

        def process(self, item: Frame | Batch) -> Frame | Batch:
            self.sizes.append(len(item.frames))
            return item

    sizes = Sizes(name="sizes", batch_size=4, queue_size=8)
    slow_start = ListSink(name="sink")
    Pipeline([ListSource(make_frames(10)), sizes, slow_start], device="cpu").run_sync()
    assert sum(sizes.sizes) == 10
    assert max(sizes.sizes) <= 4
    assert [f.index for f in slow_start.frames] == list(range(10))


def test_stop_drains_flushes_and_reports_the_reason() -> None:
    sink = ListSink(name="sink", delay=0.01)
    pipeline = Pipeline([ListSource(make_frames(500)), sink], device="cpu")
    threading.Timer(0.1, pipeline.stop).start()
    stats = pipeline.run_sync()
    assert stats.stopped_by == "stop()"
    assert 0 < len(sink.frames) < 500
    assert sink.flushed and sink.torn_down


def test_max_frames_limits_the_source() -> None:
    sink = ListSink(name="sink")
    Pipeline([ListSource(make_frames(20)), sink], device="cpu", max_frames=7).run_sync()
    assert len(sink.frames) == 7


def test_graph_validation_happens_at_build_time() -> None:
    with pytest.raises(PipelineError, match="unique"):
        Pipeline([ListSource(name="a"), ListSink(name="a")])
    with pytest.raises(PipelineError, match="first stage must be a source"):
        Pipeline([ListSink(name="a")])
    with pytest.raises(PipelineError, match="only be first"):
        Pipeline([ListSource(name="a"), ListSource(name="b")])


def test_unknown_option_is_rejected_by_the_stage_config() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="delya"):
        ListSink(delya=1)


def test_run_stage_helper_returns_flush_output() -> None:
    out = run_stage(Buffering(), make_frames(3))
    assert [f.index for f in out] == [2, 1, 0]
    assert not any(isinstance(i, EndOfStream) for i in out)


def test_custom_stage_in_a_few_lines() -> None:
    class Brighten(Stage):
        class Config(StageConfig):
            amount: int = 10

        def process(self, item: Frame | Batch) -> Frame | Batch:
            for frame in item.frames:
                frame.image = (frame.image.int() + self.config.amount).clamp(0, 255).byte()
            return item

    out = run_stage(Brighten(amount=5), make_frames(2))
    assert [int(f.image.max()) for f in out] == [5, 6]
    assert out[0].image.dtype == torch.uint8


def test_per_source_end_of_stream_calls_end_source_before_passing_it_on() -> None:
    class PerSource(Stage):
        def setup(self) -> None:
            self.held: dict[str, list[Frame]] = {}

        def process(self, item: Frame | Batch) -> None:
            for frame in item.frames:
                self.held.setdefault(frame.source_id, []).append(frame)

        def end_source(self, source_id: str) -> list[Frame]:
            return self.held.pop(source_id, [])

        def flush(self) -> list[Frame]:
            return [frame for frames in self.held.values() for frame in frames]

    a, b = make_frames(2, source_id="a"), make_frames(2, source_id="b")
    order: list[object] = []

    class Recorder(ListSink):
        def process(self, item: Frame | Batch) -> None:
            order.extend(f"{f.source_id}{f.index}" for f in item.frames)

    items = [a[0], b[0], a[1], EndOfStream("a"), b[1]]
    Pipeline([ListSource(items), PerSource(name="per_source"), Recorder(name="sink")], device="cpu").run_sync()
    assert order[:2] == ["a0", "a1"], "source a's frames come out when a ends, before b's"
    assert sorted(order[2:]) == ["b0", "b1"]


class Recorded(Stage):
    """Appends (stage, what) to a shared list on every hook: the order the runner called them in."""

    def __init__(self, events: list[tuple[str, object]], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.events = events

    def process(self, item: Frame | Batch) -> Frame | Batch:
        self.events.extend((self.name, frame.index) for frame in item.frames)
        return item

    def end_source(self, source_id: str) -> None:
        self.events.append((self.name, f"end {source_id}"))

    def flush(self) -> None:
        self.events.append((self.name, "flush"))


class RecordedSource(ListSource):
    def __init__(self, events: list[tuple[str, object]], frames: list[Frame], **kwargs: object) -> None:
        super().__init__(frames, **kwargs)  # type: ignore[arg-type]
        self.events = events

    def generate(self) -> Iterator[Item]:
        for item in super().generate():
            self.events.extend((self.name, frame.index) for frame in _frames(item))
            yield item


def _frames(item: Item) -> list[Frame]:
    return [] if isinstance(item, EndOfStream) else list(item.frames)


def test_serial_takes_each_frame_through_every_stage_before_the_source_makes_the_next() -> None:
    events: list[tuple[str, object]] = []
    sink = ListSink(name="sink")
    pipeline = Pipeline(
        [
            RecordedSource(events, make_frames(3), name="src"),
            Recorded(events, name="a"),
            Recorded(events, name="b"),
            sink,
        ],
        device="cpu",
        serial=True,
    )
    stats = pipeline.run_sync()
    per_frame = [event for index in range(3) for event in (("src", index), ("a", index), ("b", index))]
    ends = [("a", "end src"), ("b", "end src"), ("a", "flush"), ("b", "flush")]
    assert events == [*per_frame, *ends], "one source end then the final end of stream, stage by stage"
    assert [f.index for f in sink.frames] == [0, 1, 2] and sink.flushed and sink.torn_down
    assert [stage.queue_capacity for stage in stats.stages] == [None] * 4, "no queues between stages"
    assert stats.stage("b").frames_in == 3 and stats.stage("sink").latency_ms


def test_serial_stage_error_stops_the_source_and_leaves_run_as_itself(tmp_path: Path) -> None:
    out = tmp_path / "lines.jsonl"
    stages = [ListSource(make_frames(20)), FailOn(name="checker", index=5), LinesSink(name="writer", path=out)]
    with pytest.raises(KeyError) as caught:
        Pipeline(stages, device="cpu", serial=True).run_sync()
    assert caught.value.stage_name == "checker"  # type: ignore[attr-defined]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # One frame at a time: exactly the frames before the bad one were written, and the file is closed.
    assert lines == [*({"index": index} for index in range(5)), {"end": True}]


def test_serial_runs_exactly_one_source(tmp_path: Path) -> None:
    two = [ListSource(make_frames(1), name="a"), ListSource(make_frames(1), name="b")]
    with pytest.raises(PipelineError) as caught:
        Pipeline([ListSource(name="template"), ListSink()], serial=True, sources=two)
    assert str(caught.value) == "serial runs exactly one source to its end; got 2 sources"
    with pytest.raises(PipelineError, match="stay_open"):
        Pipeline([ListSource(), ListSink()], serial=True, stay_open=True)
    pipeline = Pipeline([ListSource(), ListSink()], serial=True)
    with pytest.raises(PipelineError, match="serial pipeline runs exactly one source"):
        pipeline.add_source(ListSource(name="extra"))
    config = tmp_path / "p.yaml"
    config.write_text(
        "name: t\nserial: true\nstages:\n  - {name: src, type: decode}\n  - {name: sink, type: discard}\n"
        "sources:\n  - {id: a, uri: a.mp4}\n  - {id: b, uri: b.mp4}\n"
    )
    with pytest.raises(ConfigError) as config_error:
        build_pipeline(config)
    assert str(config_error.value) == f"{config}: serial runs exactly one source to its end; got 2 sources"
