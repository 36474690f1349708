"""Many sources through one runner: round robin batching, per-source ends, fault isolation, add/remove."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamflow import Batch, EndOfStream, Frame, Pipeline, PipelineError, Stage
from streamflow.edge import Edge
from streamflow.mux import SourceEnd, SourceMux
from streamflow.testing import ListSink, ListSource, RaiseError, make_frames
from support.stages import CountingSource


class EndRecorder(ListSink):
    """A sink that also records which sources ended (and in which order relative to frames)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Also here, not only in setup: a test may poll it while the pipeline is still setting up.
        self.events: list[str] = []

    def setup(self) -> None:
        self.events = []

    def process(self, item: Frame | Batch) -> None:
        super().process(item)
        self.events.extend(f"{f.source_id}:{f.index}" for f in item.frames)

    def end_source(self, source_id: str) -> None:
        self.events.append(f"end:{source_id}")


async def until(condition: Callable[[], bool]) -> None:
    """Poll the pipeline's progress from its own loop (no timing assumption beyond a generous cap)."""
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in 30 s")


def by_source(frames: list[Frame]) -> dict[str, list[int]]:
    result: dict[str, list[int]] = {}
    for frame in frames:
        result.setdefault(frame.source_id, []).append(frame.index)
    return result


def sources(counts: dict[str, int]) -> list[ListSource]:
    return [ListSource(make_frames(n, source_id=name), name=name) for name, n in counts.items()]


# -- the mux on its own ---------------------------------------------------------------------------
def test_mux_takes_round_robin_and_ends_each_source_behind_its_frames() -> None:
    async def scenario() -> list[list[str] | str]:
        mux = SourceMux()
        for name, count in (("a", 3), ("b", 1), ("c", 2)):
            edge = Edge(name, capacity=8)
            mux.add(name, edge)
            for frame in make_frames(count, source_id=name):
                await edge.put(frame)
            await edge.put(SourceEnd(name, "finished"))
        taken: list[list[str] | str] = []
        while True:
            got = await mux.take(2)
            if isinstance(got, EndOfStream):
                taken.append(f"end:{got.source_id}")
                if got.source_id is None:
                    return taken
            else:
                taken.append([f"{f.source_id}{f.index}" for f in got])

    taken = asyncio.run(scenario())
    frames = [name for entry in taken if isinstance(entry, list) for name in entry]
    assert frames[:3] == ["a0", "b0", "c0"], "one item from each source in turn"
    assert sorted(frames) == ["a0", "a1", "a2", "b0", "c0", "c1"]
    for name in "abc":
        mine = [f for f in frames if f[0] == name]
        assert mine == sorted(mine), "each source keeps its order"
        last = max(i for i, entry in enumerate(taken) if isinstance(entry, list) and any(f[0] == name for f in entry))
        assert taken.index(f"end:{name}") > last, "a source's end comes behind its last frame"
    assert taken[-1] == "end:None" and all(len(e) <= 2 for e in taken if isinstance(e, list))


def test_mux_with_a_timeout_sends_a_partial_batch() -> None:
    async def scenario() -> int:
        mux = SourceMux(timeout_s=0.01)
        edge = Edge("a", capacity=4)
        mux.add("a", edge)
        await edge.put(make_frames(1, source_id="a")[0])
        got = await mux.take(8)  # never full: the timeout lets the one frame go
        assert isinstance(got, list)
        return len(got)

    assert asyncio.run(scenario()) == 1


def test_mux_reads_an_id_added_again_only_after_its_old_edge_ended() -> None:
    async def scenario() -> list[str]:
        mux = SourceMux()
        seen: list[str] = []
        for generation in range(2):
            edge = Edge(f"a{generation}", capacity=4)
            mux.add("a", edge)
            for frame in make_frames(2, source_id="a"):
                frame.index += 10 * generation
                await edge.put(frame)
            await edge.put(SourceEnd("a", "removed" if generation == 0 else "finished"))
        while True:
            got = await mux.take(4)
            if isinstance(got, EndOfStream):
                seen.append(f"end:{got.source_id}:{got.reason}")
                if got.source_id is None:
                    return seen
            else:
                seen.extend(str(f.index) for f in got)

    seen = asyncio.run(scenario())
    assert seen == ["0", "1", "end:a:removed", "10", "11", "end:a:finished", "end:None:finished"]


def test_mux_takes_the_first_item_of_a_source_added_to_a_busy_mux_next() -> None:
    async def scenario() -> list[str]:
        mux = SourceMux()
        for name in "abcd":
            edge = Edge(name, capacity=8)
            mux.add(name, edge)
            for frame in make_frames(6, source_id=name):
                await edge.put(frame)
        taken: list[str] = []

        async def take(times: int) -> None:
            for _ in range(times):
                got = await mux.take(1)
                assert isinstance(got, list)
                taken.extend(f"{f.source_id}{f.index}" for f in got)

        await take(5)
        late = Edge("new", capacity=8)
        mux.add("new", late)
        for frame in make_frames(3, source_id="new"):
            await late.put(frame)
        await take(6)
        return taken

    taken = asyncio.run(scenario())
    assert taken[:5] == ["a0", "b0", "c0", "d0", "a1"]
    # Its first item goes ahead of the round (not behind b, c and d), then it takes its turn like the others.
    assert taken[5:] == ["new0", "b1", "c1", "d1", "new1", "a2"]


# -- through the runner ---------------------------------------------------------------------------
def test_sources_of_different_lengths_keep_order_and_end_alone() -> None:
    sink = EndRecorder(name="sink")
    counts = {"a": 7, "b": 2, "c": 5}
    stats = Pipeline([ListSource(name="source"), sink], sources=sources(counts), device="cpu").run_sync()
    assert by_source(sink.frames) == {name: list(range(n)) for name, n in counts.items()}
    for name in counts:
        assert sink.events.index(f"end:{name}") > max(i for i, e in enumerate(sink.events) if e.startswith(name))
    assert {s.id: (s.frames, s.frames_done, s.ended) for s in stats.sources} == {
        name: (n, n, "finished") for name, n in counts.items()
    }
    assert stats.stage("source").frames_out == sum(counts.values()), "the template's row sums its sources"


def test_batches_mix_sources_and_no_source_is_starved_by_a_slow_stage() -> None:
    class Batches(ListSink):
        pass

    sink = Batches(name="sink", batch_size=4, delay=0.002)  # slower than the sources: their queues stay full
    counts = {name: 40 for name in ("a", "b", "c", "d")}
    Pipeline([ListSource(name="source"), sink], sources=sources(counts), device="cpu", queue_size=2).run_sync()
    assert any(len({f.source_id for f in item.frames}) > 1 for item in sink.items), "batches mix sources"
    delivered = {name: 0 for name in counts}
    for frame in sink.frames:
        delivered[frame.source_id] += 1
        if min(delivered.values()) == 0 and max(delivered.values()) < 10:
            continue  # start-up: a source thread may not have produced yet
        if max(delivered.values()) == 40:
            break
        # Round robin: a source with queued frames waits at most one turn of the others.
        assert max(delivered.values()) - min(delivered.values()) <= 12, delivered
    assert by_source(sink.frames) == {name: list(range(40)) for name in counts}


def test_a_failing_source_ends_alone_and_the_run_reports_it(caplog: pytest.LogCaptureFixture) -> None:
    bad_items = [*make_frames(2, source_id="bad"), RaiseError(OSError("camera unplugged"))]
    runners = [*sources({"a": 6, "b": 4}), ListSource(bad_items, name="bad")]
    sink = EndRecorder(name="sink")
    pipeline = Pipeline([ListSource(name="source"), sink], sources=runners, device="cpu")
    with pytest.raises(OSError, match="camera unplugged") as caught:
        pipeline.run_sync()
    assert by_source(sink.frames) == {"a": list(range(6)), "b": list(range(4)), "bad": [0, 1]}
    assert "end:bad" in sink.events and sink.flushed and sink.torn_down
    stats = caught.value.run_stats  # type: ignore[attr-defined]
    assert stats.source("bad").error == "OSError: camera unplugged"
    assert stats.source("a").error is None and stats.source("a").frames_done == 6
    lines = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert lines == ["source 'bad' failed: OSError: camera unplugged"]


def test_add_and_remove_sources_while_running() -> None:
    sink = EndRecorder(name="sink", batch_size=2)
    pipeline = Pipeline(
        [ListSource(name="source"), sink],
        sources=[CountingSource(name="a", count=0, interval=0.002)],
        device="cpu",
        max_sources=2,
    )

    async def scenario() -> None:
        run = asyncio.create_task(pipeline.run())
        await until(lambda: len(sink.frames) >= 5)
        pipeline.add_source(CountingSource(name="b", count=6))  # from the loop
        with pytest.raises(PipelineError, match="already in use"):
            pipeline.add_source(CountingSource(name="b", count=1))
        with pytest.raises(PipelineError, match="max_sources"):
            pipeline.add_source(CountingSource(name="c", count=1))
        await until(lambda: "end:b" in sink.events)
        # From another thread, as an HTTP handler would.
        worker = threading.Thread(target=pipeline.add_source, args=(CountingSource(name="c", count=3),))
        worker.start()
        worker.join()
        await until(lambda: "end:c" in sink.events)
        pipeline.remove_source("a")
        stats = await asyncio.wait_for(run, 30)
        assert stats.source("a").ended == "removed" and stats.source("b").ended == "finished"

    asyncio.run(scenario())
    got = by_source(sink.frames)
    assert got["a"] == list(range(len(got["a"]))), "the removed source's frames are complete and in order"
    assert got["b"] == list(range(6)) and got["c"] == list(range(3))
    assert sink.events[-1] == "end:a" and sink.flushed
    with pytest.raises(KeyError):
        pipeline.remove_source("a")


def test_a_stay_open_pipeline_waits_for_sources_until_stopped() -> None:
    sink = EndRecorder(name="sink")
    pipeline = Pipeline([ListSource(name="source"), sink], sources=[], device="cpu", stay_open=True)

    async def scenario() -> None:
        run = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0)
        pipeline.add_source(CountingSource(name="x", count=3))
        await until(lambda: "end:x" in sink.events)
        assert not run.done(), "no source left, but the pipeline stays open"
        pipeline.stop()
        await asyncio.wait_for(run, 30)

    asyncio.run(scenario())
    assert by_source(sink.frames) == {"x": [0, 1, 2]} and sink.flushed


def test_bad_source_lists_are_refused_when_built() -> None:
    with pytest.raises(PipelineError, match="already in use"):
        Pipeline([ListSource(name="source"), ListSink()], sources=sources({"a": 1}) + sources({"a": 1}))
    with pytest.raises(PipelineError, match="max_sources"):
        Pipeline([ListSource(name="source"), ListSink()], sources=sources({"a": 1, "b": 1}), max_sources=1)


def test_specs_build_decode_sources_from_the_template(tmp_path: Path) -> None:
    from stages.decode import Decode
    from streamflow.video.synth import write_clip

    clips = {
        "small": write_clip(tmp_path / "small.mp4", width=64, height=48, frames=3, fps=15),
        "wide": write_clip(tmp_path / "wide.mp4", width=96, height=32, frames=5, fps=30),
    }
    specs = [{"id": name, "uri": str(path)} for name, path in clips.items()]
    specs.append({"id": "gone", "uri": str(tmp_path / "missing.mp4")})  # fails alone, at run time
    specs.append({"id": "cut", "uri": str(clips["wide"]), "max_frames": 2, "realtime": True})
    sink = ListSink(name="sink")
    template = Decode(uri=str(clips["small"]), name="source", emit_batch=2)
    pipeline = Pipeline([template, sink], sources=specs, device="cpu")
    with pytest.raises(Exception, match="file not found") as caught:
        pipeline.run_sync()
    got = {sid: [(f.index, tuple(f.image.shape)) for f in sink.frames if f.source_id == sid] for sid in clips}
    assert got["small"] == [(i, (3, 48, 64)) for i in range(3)]
    assert got["wide"] == [(i, (3, 32, 96)) for i in range(5)]
    cut = [f for f in sink.frames if f.source_id == "cut"]
    assert [f.index for f in cut] == [0, 1] and all(f.arrival_time is not None for f in cut)
    stats = caught.value.run_stats  # type: ignore[attr-defined]
    assert stats.source("gone").error is not None and "file not found" in stats.source("gone").error
    assert stats.source("cut").capture_latency_ms, "paced frames carry an arrival time"
    with pytest.raises(PipelineError, match=r"source 'x': field 'emit_batch'"):
        Pipeline([template, ListSink()], sources=[{"id": "x", "uri": str(clips["small"]), "emit_batch": 0}])


class _Stamp(Stage):
    def process(self, item: Frame | Batch) -> Frame | Batch:
        return item


def test_one_source_pipelines_work_as_before() -> None:
    sink = ListSink(name="sink")
    stats = Pipeline([ListSource(make_frames(3)), _Stamp(name="stamp"), sink], device="cpu").run_sync()
    assert [f.index for f in sink.frames] == [0, 1, 2] and len(stats.sources) == 1
    assert stats.stage("stamp").queue_capacity == 4


def test_paced_files_act_as_cameras(tmp_path: Path) -> None:
    from stages.decode import Decode
    from streamflow.video.synth import write_clip

    clip = write_clip(tmp_path / "c.mp4", width=32, height=32, frames=4, fps=60)
    specs = [{"id": f"cam{i}", "uri": str(clip), "realtime": True} for i in range(3)]
    sink = ListSink(name="sink")
    stats = Pipeline([Decode(uri=str(clip), name="source"), sink], sources=specs, device="cpu").run_sync()
    assert stats.stage("sink").queue_overflow == "drop_oldest", "a paced file is live: old frames go, not latency"
    for source in stats.sources:
        assert source.frames == 4 and len(source.capture_latency_ms) == source.frames_done > 0
    assert all(frame.arrival_time is not None for frame in sink.frames)


def test_a_paced_source_holds_frames_at_most_emit_wait_ms_to_fill_its_batch(tmp_path: Path) -> None:
    # A camera's frame must not wait long for the next ones: emit_batch 4 at 5 fps would hold the first
    # frame of each batch 600 ms. With emit_wait_ms 100 (the default) a batch carries what is due (one
    # frame here: the next is 200 ms away); with 1000 ms, and unpaced, batches fill up.
    from stages.decode import Decode
    from streamflow.video.synth import write_clip

    clip = write_clip(tmp_path / "slow.mp4", width=32, height=32, frames=6, fps=5)
    sizes = {}
    for name, options in {
        "unpaced": {},
        "paced": {"realtime": True},
        "paced, patient": {"realtime": True, "emit_wait_ms": 1000},
    }.items():
        sink = ListSink(name="sink")
        Pipeline([Decode(uri=str(clip), name="source", emit_batch=4, **options), sink], device="cpu").run_sync()
        assert [f.index for f in sink.frames] == list(range(6))
        sizes[name] = [len(item.frames) for item in sink.items]
    assert sizes["unpaced"] == sizes["paced, patient"] == [4, 2]
    assert len(sizes["paced"]) >= 4 and max(sizes["paced"]) < 4, sizes["paced"]


def test_add_remove_cycles_release_their_threads() -> None:
    sink = EndRecorder(name="sink")
    pipeline = Pipeline([ListSource(name="source"), sink], sources=[], device="cpu", stay_open=True)

    async def scenario() -> None:
        run = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0)
        steady = threading.active_count()
        for cycle in range(20):
            name = f"cam{cycle % 3}"  # ids come back once their previous source ended
            pipeline.add_source(CountingSource(name=name, count=0, interval=0.001))
            await until(lambda name=name: any(e.startswith(f"{name}:") for e in sink.events[-3:]))
            pipeline.remove_source(name)
            await until(lambda name=name: sink.events[-1] == f"end:{name}")
        await until(lambda: threading.active_count() <= steady + 1)  # the sink's thread may start late
        assert pipeline.source_ids == []
        pipeline.stop()
        await asyncio.wait_for(run, 30)

    asyncio.run(scenario())
    assert sink.events.count("end:cam0") == 7 and sink.flushed
