"""Helpers of the cluster tests (Ray actors and worker processes): per-source results, waiting, HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
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
