"""Helpers of the cluster tests (Ray actors and worker processes): per-source results, waiting, HTTP."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamflow.video.synth import write_clip

#: Sources and frames of `nvdec_config`: 4 sources of a 60-frame 640x360 clip.
NVDEC_SOURCES = 4
NVDEC_FRAMES = 60


def indices_by_source(out: Path) -> dict[str, list[int]]:
    """Frame indices written per source, in file order, parts merged (`cam1.jsonl`, `cam1.part1.jsonl`...)."""
    found: dict[str, list[int]] = {}
    for file in sorted(out.glob("*.jsonl")):
        for line in file.read_text().splitlines():
            record = json.loads(line)
            assert record["source_id"] == file.stem
            found.setdefault(file.name.split(".")[0], []).append(record["index"])
    return found


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """Status and body (parsed when JSON) of one request; error statuses are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    text = raw.decode()
    return status, json.loads(text) if text.startswith("{") else text


def nvdec_config(folder: Path) -> tuple[Path, Path]:
    """A config that decodes `NVDEC_SOURCES` copies of a generated clip with NVDEC into per-source
    JSONL (the GPU tests of both cluster back ends); returns its path and the output folder."""
    clip = write_clip(folder / "hd.mp4", width=640, height=360, frames=NVDEC_FRAMES, fps=30)
    out = folder / "out"
    out.mkdir()
    path = folder / "gpu.yaml"
    path.write_text(
        "device: auto\nstages:\n  - {name: cam, type: decode, backend: nvdec, format: nv12, emit_batch: 8}\n"
        f'  - {{name: out, type: jsonl, path: "{out}/{{source}}.jsonl"}}\n'
        "sources:\n" + "".join(f"  - {{id: g{i}, uri: {clip}}}\n" for i in range(NVDEC_SOURCES))
    )
    return path, out


class ServedRun:
    """A cluster run behind its control API (`served_run`): `base` is the API's URL; `start()` starts
    the actors and runs the driver in a thread; `result` is the run's result once it has ended."""

    def __init__(self, runner: Any, base: str) -> None:
        self.runner, self.base = runner, base
        self.thread: threading.Thread | None = None
        self._box: dict[str, Any] = {}

    def start(self) -> None:
        self.runner.start()
        self.thread = threading.Thread(target=lambda: self._box.setdefault("result", self.runner.run()))
        self.thread.start()

    @property
    def result(self) -> Any:
        return self._box["result"]


@contextlib.contextmanager
def served_run(runner: Any) -> Iterator[ServedRun]:
    """The runner's control API on a free port of 127.0.0.1; on leaving, the run is stopped and
    joined and the API closed."""
    from streamflow.cluster.api import ClusterControlServer

    server = ClusterControlServer(runner, port=0)
    server.serve_in_thread()
    served = ServedRun(runner, f"http://127.0.0.1:{server.port}")
    try:
        yield served
    finally:
        runner.stop()
        if served.thread is not None:
            served.thread.join(timeout=60)
        server.close()
