"""The control API in process: a real aiohttp server on the pipeline's loop, a real HTTP client."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stages.decode import Decode
from stages.jsonl import JsonlSink
from streamflow import Batch, Frame, Pipeline, Stage
from streamflow.api import ControlServer, PipelineMetrics, parse_bind
from streamflow.pipeline import SourceState
from streamflow.testing import ListSink
from streamflow.video.synth import write_clip
from support.stages import CountingSource

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", width=64, height=48, frames=30, fps=30)


def build(clip: Path, out: Path, *, sources: list[dict[str, Any]], max_sources: int | None = None) -> Pipeline:
    template = Decode(name="source", uri=str(clip))
    sink = JsonlSink(name="lines", path=str(out / "{source}.jsonl"))
    return Pipeline([template, sink], sources=sources, device="cpu", max_sources=max_sources, stay_open=True)


@asynccontextmanager
async def serving(pipeline: Pipeline, token: str | None = None) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    server = ControlServer(pipeline, port=0, token=token)
    async with server.serving():
        run = asyncio.create_task(pipeline.run())
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as client:
            await until(lambda: pipeline.running or run.done())
            assert not run.done(), run
            try:
                yield f"http://127.0.0.1:{server.port}", client
            finally:
                pipeline.stop()
                try:
                    await run
                except Exception as error:  # a source that failed (reported by the API) is raised after the run
                    if getattr(error, "run_stats", None) is None:
                        raise


async def until(check: Callable[[], bool]) -> None:
    """Poll a condition that no event signals (figures of a running pipeline)."""
    while not check():  # noqa: ASYNC110 (the pipeline's counters have no event to wait on)
        await asyncio.sleep(0.01)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def metric_values(text: str, name: str) -> dict[str, float]:
    """`{source or stage label: value}` of one family's plain samples."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                values[sample.labels.get("source") or sample.labels.get("stage", "")] = sample.value
    return values


async def wait_for_state(client: aiohttp.ClientSession, source_id: str, states: set[str]) -> dict[str, Any]:
    while True:
        async with client.get(f"/sources/{source_id}") as response:
            body = await response.json()
        if body.get("state") in states:
            return body
        await asyncio.sleep(0.02)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_bad_requests_get_their_status_and_a_message_and_the_pipeline_keeps_running(
    clip: Path, tmp_path: Path
) -> None:
    pipeline = build(clip, tmp_path, sources=[{"id": "base", "uri": str(clip), "loop": True}], max_sources=2)
    async with serving(pipeline, token=TOKEN) as (_, client):
        good = {"id": "extra", "uri": str(clip), "max_frames": 5}
        cases: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("POST", "/sources", {"data": b"{not json", "headers": auth()}, 400, "malformed JSON"),
            ("POST", "/sources", {"json": [1, 2], "headers": auth()}, 400, "JSON object"),
            ("POST", "/sources", {"json": {**good, "colour": "red"}, "headers": auth()}, 422, "colour"),
            ("POST", "/sources", {"json": {"id": "no/slash", "uri": str(clip)}, "headers": auth()}, 422, "'id'"),
            ("POST", "/sources", {"json": {"id": "x"}, "headers": auth()}, 422, "'uri'"),
            ("POST", "/sources", {"json": {"id": "base", "uri": str(clip)}, "headers": auth()}, 409, "in use"),
            ("POST", "/sources", {"data": b"{" + b" " * 1_000_000 + b"}", "headers": auth()}, 413, "too large"),
            ("POST", "/sources", {"json": good}, 401, "missing bearer token"),
            ("POST", "/sources", {"json": good, "headers": auth("wrong")}, 401, "invalid bearer token"),
            ("DELETE", "/sources/base", {}, 401, "missing bearer token"),
            ("DELETE", "/sources/ghost", {"headers": auth()}, 404, "ghost"),
            ("DELETE", "/sources/base?wait=soon", {"headers": auth()}, 400, "wait"),
            ("GET", "/nowhere", {}, 404, "Not Found"),
        ]
        for method, path, kwargs, status, message in cases:
            async with client.request(method, path, **kwargs) as response:
                body = await response.json()
                assert response.status == status, (method, path, body)
                assert message in body["error"], (method, path, body)
                assert TOKEN not in json.dumps(body)
        async with client.post("/sources", json={**good, "colour": "red"}, headers=auth()) as response:
            assert (await response.json())["field"] == "colour"

        # A uri that can't be opened: 422 with the reason; it shows as failed; the others go on.
        async with client.post("/sources", json={"id": "gone", "uri": "/nonexistent/x.mp4"}, headers=auth()) as r:
            body = await r.json()
            assert r.status == 422 and "file not found" in body["error"], body
        async with client.get("/sources/gone") as r:
            assert (await r.json())["state"] == "failed"
        # max_sources (2): base plus one more, then 429.
        async with client.post("/sources", json=good, headers=auth()) as r:
            assert r.status in (201, 202), await r.json()
        async with client.post("/sources", json={**good, "id": "third"}, headers=auth()) as r:
            body = await r.json()
            assert r.status == 429 and "max_sources (2)" in body["error"], body

        async with client.get("/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with client.get("/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        base = await wait_for_state(client, "base", {"running"})
        assert base["error"] is None
        async with client.get("/metrics") as r:
            assert TOKEN not in await r.text()
        async with client.delete("/sources/base", headers=auth()) as r:
            body = await r.json()
            assert r.status == 200 and body["state"] == "ended" and body["ended"] == "removed", body
    async with aiohttp.ClientSession() as client:  # the server is gone with the run
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.get("http://127.0.0.1:1/healthz")


async def test_metrics_counters_match_the_frames_in_the_outputs(clip: Path, tmp_path: Path) -> None:
    pipeline = build(clip, tmp_path, sources=[{"id": "a", "uri": str(clip), "max_frames": 12}])
    async with serving(pipeline) as (_, client):
        async with client.post("/sources", json={"id": "b", "uri": str(clip), "loop": True, "max_frames": 45}) as r:
            assert r.status in (201, 202)
        async with client.post("/sources", json={"id": "c", "uri": str(clip), "loop": True}) as r:
            assert r.status in (201, 202)
        for source_id in ("a", "b"):
            await wait_for_state(client, source_id, {"ended"})
        await until(lambda: pipeline.snapshot().source("c").frames_done >= 10)
        async with client.delete("/sources/c") as r:
            removed = await r.json()
            assert r.status == 200 and removed["state"] == "ended"
        async with client.get("/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        async with client.get("/sources") as r:
            listed = {s["id"]: s for s in (await r.json())["sources"]}
    done = metric_values(text, "streamflow_source_frames_done_total")
    produced = metric_values(text, "streamflow_source_frames_total")
    for source_id in ("a", "b", "c"):
        lines = lines_of(tmp_path / f"{source_id}.jsonl")
        assert [line["index"] for line in lines] == list(range(len(lines))), source_id
        assert done[source_id] == produced[source_id] == len(lines) == listed[source_id]["frames_done"], source_id
    assert done["a"] == 12 and done["b"] == 45 and done["c"] == removed["frames_done"] >= 10
    latency_count = metric_values(text, "streamflow_source_latency_seconds_count")
    assert latency_count == {"a": 12, "b": 45, "c": done["c"]}
    assert metric_values(text, "streamflow_source_up") == {"a": 0, "b": 0, "c": 0}
    assert metric_values(text, "streamflow_stage_frames_in_total")["lines"] == 12 + 45 + done["c"]
    assert "lines" in metric_values(text, "streamflow_stage_call_seconds_count")
    assert metric_values(text, "process_open_fds")[""] > 0
    assert metric_values(text, "streamflow_threads")[""] >= 1


def describe_threads_and_files() -> tuple[list[str], list[str]]:
    files = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            files.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return sorted(t.name for t in threading.enumerate()), sorted(files)


def steady_counts() -> tuple[int, int]:
    return threading.active_count(), len(os.listdir("/proc/self/fd"))


async def test_threads_and_files_return_to_steady_values_after_20_add_remove_cycles(clip: Path, tmp_path: Path) -> None:
    pipeline = build(clip, tmp_path, sources=[{"id": "base", "uri": str(clip), "loop": True}])

    async def cycle(client: aiohttp.ClientSession) -> None:
        async with client.post("/sources", json={"id": "cycled", "uri": str(clip), "loop": True}) as r:
            assert r.status == 201, await r.json()
        async with client.delete("/sources/cycled") as r:
            assert r.status == 200 and (await r.json())["state"] == "ended"

    async def settled(expected: tuple[int, int]) -> tuple[int, int]:
        # Worker threads of a removed source exit just after their last call returns: let them go.
        for _ in range(3000):  # bounded: a loaded machine may take a while to run them out
            if steady_counts() == expected:
                break
            await asyncio.sleep(0.01)
        return steady_counts()

    async with serving(pipeline) as (_, client):
        await wait_for_state(client, "base", {"running"})
        await cycle(client)  # the first cycle starts what stays (the client's pool, executors)
        baseline = await settled(steady_counts())
        for _ in range(20):
            await cycle(client)
        after = await settled(baseline)
        assert after == baseline, (baseline, after, describe_threads_and_files())
        async with client.get("/sources/base") as r:
            assert (await r.json())["state"] == "running"
    assert (tmp_path / "cycled.jsonl").is_file()


def test_the_python_api_runs_without_http(clip: Path, tmp_path: Path) -> None:
    pipeline = build(clip, tmp_path, sources=[])
    metrics = PipelineMetrics(pipeline)

    async def scenario() -> None:
        run = asyncio.create_task(pipeline.run())
        await until(lambda: pipeline.running)
        pipeline.add_source({"id": "p", "uri": str(clip), "loop": True})
        assert (await pipeline.source_opened("p")).state is SourceState.RUNNING
        await until(lambda: pipeline.snapshot().source("p").frames_done >= 3)
        pipeline.remove_source("p")
        status = await pipeline.source_drained("p")
        assert status.state is SourceState.ENDED and status.ended == "removed"
        pipeline.stop()
        await run

    asyncio.run(scenario())
    frames = metric_values(metrics.render().decode(), "streamflow_source_frames_done_total")["p"]
    assert frames == pipeline.snapshot().source("p").frames_done == len(lines_of(tmp_path / "p.jsonl"))


def test_bind_addresses_default_to_loopback() -> None:
    assert parse_bind("8080") == ("127.0.0.1", 8080)
    assert parse_bind("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_bind("[::1]:81") == ("::1", 81)
    with pytest.raises(ValueError, match="port must be a number"):
        parse_bind("localhost:http")
    with pytest.raises(ValueError, match="out of range"):
        parse_bind("70000")


class SlowToLoad(Stage):
    """A sink whose setup (a model load) waits until the test lets it go."""

    def __init__(self, gate: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def setup(self) -> None:
        self.gate.wait(60)

    def process(self, item: Frame | Batch) -> None:
        return None


async def test_readyz_waits_for_the_models_while_healthz_answers(clip: Path) -> None:
    gate = threading.Event()
    sink = SlowToLoad(gate, name="model")
    pipeline = Pipeline([Decode(name="source", uri=str(clip)), sink], sources=[], device="cpu", stay_open=True)
    server = ControlServer(pipeline, port=0)
    async with server.serving(), aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as client:
        run = asyncio.create_task(pipeline.run())
        async with client.get("/healthz") as response:
            assert response.status == 200
        async with client.get("/readyz") as response:
            assert response.status == 503 and (await response.json())["ready"] is False
        async with client.post("/sources", json={"id": "early", "uri": str(clip)}) as response:
            assert response.status == 503 and "not running" in (await response.json())["error"]
        gate.set()
        await until(lambda: pipeline.running)
        async with client.get("/readyz") as response:
            assert response.status == 200
        pipeline.stop()
        await run
        async with client.get("/readyz") as response:
            assert response.status == 503, "a stopped pipeline is not ready"


class SlowToOpen(CountingSource):
    """A source whose input opens (its setup returns) only when the test lets it."""

    def __init__(self, gate: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def setup(self) -> None:
        self.gate.wait(60)


async def readiness(client: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
    async with client.get("/readyz") as response:
        return response.status, await response.json()


async def test_readyz_waits_for_configured_sources_to_open_but_not_for_added_or_failed_ones(clip: Path) -> None:
    opened, added_opened = threading.Event(), threading.Event()
    configured = SlowToOpen(opened, name="cam", count=0, interval=0.01)
    broken = {"id": "broken", "uri": "/nonexistent/x.mp4"}  # fails for good when it starts
    pipeline = Pipeline(
        [Decode(name="source", uri=str(clip)), ListSink(name="sink")],
        sources=[configured, broken],
        device="cpu",
        stay_open=True,
    )
    try:
        async with serving(pipeline) as (_, client):
            await wait_for_state(client, "broken", {"failed"})
            status, body = await readiness(client)  # models loaded, but a configured source is still opening
            assert status == 503 and body["ready"] is False, body
            assert body["starting"] == ["cam"] and "cam" in body["reason"], body
            assert body["failed"] == ["broken"] and body["sources"]["failed"] == 1, body

            opened.set()
            await wait_for_state(client, "cam", {"running"})
            # A source added while running is still opening, another failed for good: ready all the same.
            pipeline.add_source(SlowToOpen(added_opened, name="door", count=0))
            async with client.get("/sources/door") as response:
                door = await response.json()
                assert door["state"] == "starting" and door["configured"] is False, door
            status, body = await readiness(client)
            assert status == 200 and body["ready"] is True and body["reason"] is None, body
            assert body["starting"] == [] and body["failed"] == ["broken"], body
            assert body["sources"]["starting"] == 1 and body["sources"]["running"] == 1, body

            added_opened.set()
            for source_id in ("cam", "door"):
                async with client.delete(f"/sources/{source_id}") as response:
                    assert response.status == 200, await response.json()
            status, body = await readiness(client)
            assert status == 200 and body["sources"]["ended"] == 2, "a stay-open pipeline with no source is ready"
    finally:
        opened.set()
        added_opened.set()
