"""`streamflow run --api` as a real subprocess, operated over HTTP while it decodes and encodes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamflow.video.synth import write_clip

TOKEN = "operator-token-under-test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def jsonl_indexes(path: Path) -> list[int]:
    return [json.loads(line)["index"] for line in path.read_text().splitlines()]


def frames_done(metrics: str) -> dict[str, float]:
    return {
        sample.labels["source"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "streamflow_source_frames_done_total"
    }


class Api:
    """A client of the running process's control API."""

    def __init__(self, client: aiohttp.ClientSession, process: subprocess.Popen[str]) -> None:
        self.client = client
        self.process = process
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    async def ready(self) -> None:
        while True:
            assert self.process.poll() is None, self.process.communicate()[1]
            try:
                async with self.client.get("/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass  # still importing or loading
            await asyncio.sleep(0.1)

    async def add(self, **spec: Any) -> dict[str, Any]:
        async with self.client.post("/sources", json=spec, headers=self.auth) as response:
            body = await response.json()
            assert response.status == 201, body
            return body

    async def remove(self, source_id: str) -> dict[str, Any]:
        async with self.client.delete(f"/sources/{source_id}", headers=self.auth) as response:
            body = await response.json()
            assert response.status == 200, body
            return body

    async def sources(self) -> dict[str, dict[str, Any]]:
        async with self.client.get("/sources") as response:
            return {s["id"]: s for s in (await response.json())["sources"]}

    async def until(self, source_id: str, *, state: str | None = None, frames_done: int = 0) -> dict[str, Any]:
        while True:
            source = (await self.sources()).get(source_id, {})
            if (state is None or source.get("state") == state) and source.get("frames_done", 0) >= frames_done:
                return source
            assert self.process.poll() is None
            await asyncio.sleep(0.05)

    async def metrics(self) -> str:
        async with self.client.get("/metrics") as response:
            assert response.status == 200
            return await response.text()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path, Path]]:
    """`streamflow run --api` on a free loopback port with one paced source, a token, MP4 and JSONL outputs."""
    clip = write_clip(tmp_path / "clip.mp4", width=64, height=48, frames=30, fps=30)
    out = tmp_path / "out"
    out.mkdir()
    config = tmp_path / "ops.yaml"
    # Paced sources run as long as cameras would; `block` edges: no frame may be dropped.
    config.write_text(
        f"""
name: ops
overflow: block
max_sources: 8
stages:
  - {{name: source, type: decode, uri: {clip}, loop: true, realtime: true}}
  - {{name: video, type: encode, path: "{out}/{{source}}.mp4", preset: ultrafast}}
  - {{name: lines, type: jsonl, path: "{out}/{{source}}.jsonl"}}
sources:
  - {{id: base, uri: {clip}, max_frames: 150}}
"""
    )
    port = free_port()
    env = {**os.environ, "STREAMFLOW_API_TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamflow.cli", "run", str(config), "--api", f"127.0.0.1:{port}", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    yield process, port, clip, out
    if process.poll() is None:
        process.kill()
        process.communicate()


def terminate(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


async def test_add_remove_and_re_add_sources_of_a_running_process(
    setup: tuple[subprocess.Popen[str], int, Path, Path],
) -> None:
    process, port, clip, out = setup
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
        api = Api(client, process)
        await api.ready()
        lengths = {"base": 150, "a": 90, "c": 90}
        await api.add(id="a", uri=str(clip), max_frames=90)
        await api.add(id="b", uri=str(clip))  # loops until removed
        await api.add(id="c", uri=str(clip), max_frames=90)

        await api.until("b", frames_done=15)
        removed = await api.remove("b")
        assert removed["state"] == "ended" and removed["ended"] == "removed"
        count = removed["frames_done"]
        # Its outputs are final when DELETE answers: every frame in the JSONL, the MP4 playable.
        assert jsonl_indexes(out / "b.jsonl") == list(range(count))
        assert decoded_frames(out / "b.mp4") == count
        assert frames_done(await api.metrics())["b"] == count
        states = {s: v["state"] for s, v in (await api.sources()).items() if s != "b"}
        assert states == dict.fromkeys(["base", "a", "c"], "running"), "the others are untouched"

        added_back = await api.add(id="b", uri=str(clip), max_frames=30)
        assert added_back["state"] == "running"
        lengths["b"] = 30
        for source_id in lengths:
            await api.until(source_id, state="ended")
        metrics = await api.metrics()
        async with client.get("/readyz") as response:
            assert response.status == 200, "a stay-open pipeline stays ready with no source left"
    done = frames_done(metrics)
    for source_id, length in lengths.items():
        assert jsonl_indexes(out / f"{source_id}.jsonl") == list(range(length)), f"{source_id} lost frames"
        assert decoded_frames(out / f"{source_id}.mp4") == length, source_id
        assert done[source_id] == length, source_id
    returncode, stderr = await asyncio.to_thread(terminate, process)
    assert returncode == 143, stderr
    assert TOKEN not in stderr
