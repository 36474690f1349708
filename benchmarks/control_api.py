"""Control API benchmark: /metrics scrape time under many sources, its cost in fps, and POST to first frame.

One process runs `decode -> null` over `--sources` looping copies of a small generated clip (not
paced: the pipeline runs at its throughput limit) with the control API on 127.0.0.1, and a client
thread (a separate HTTP connection, as Prometheus would be) measures:

1. pipeline fps (frames out of the last stage a second) over `--seconds` without any scrape;
2. the same while `/metrics` is scraped every `--interval` seconds (default 1; Prometheus scrapes
   every 15 s or so), and while it is scraped back to back (a worst case), with the scrape times;
3. `--adds` times: `POST /sources` of one more looping source, and the time from sending the POST
   to the first frame of that source leaving the last stage (then `DELETE` it).

Prints both fps figures side by side with the scrape times and the add latency; `--json` writes them.

Usage:
    python benchmarks/control_api.py --sources 64 --seconds 5
    python benchmarks/control_api.py --device cuda --sources 64 --width 320 --height 240   # NVDEC
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.decode import Decode
from stages.null import NullSink
from streamflow import Frame, Observer, Pipeline, Stage
from streamflow.api import ControlServer
from streamflow.video.synth import write_clip


class FramesDone(Observer):
    """Frames out of the last stage, and when each source's first one left (perf_counter)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: dict[str, float] = {}
        self._sink = ""

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Any]) -> None:
        self._sink = stages[-1].name

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        if stage.name != self._sink or not frames_in:
            return
        now = time.perf_counter()
        self.count += len(frames_in)
        for frame in frames_in:
            self.first.setdefault(frame.source_id, now)


def request(connection: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


def fps_over(frames: FramesDone, seconds: float, during: Any = None, every: float = 0.0) -> tuple[float, list[float]]:
    """Frames a second over `seconds`; `during()` is called every `every` seconds (0: back to back)."""
    durations: list[float] = []
    start_count, started = frames.count, time.perf_counter()
    deadline = started + seconds
    next_call = started
    while time.perf_counter() < deadline:
        if during is None or time.perf_counter() < next_call:
            time.sleep(0.005)
            continue
        before = time.perf_counter()
        during()
        durations.append(time.perf_counter() - before)
        next_call = before + every
    return (frames.count - start_count) / (time.perf_counter() - started), durations


def client(port: int, pipeline: Pipeline, frames: FramesDone, args: argparse.Namespace, clip: Path) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while True:
        try:
            if request(connection, "GET", "/readyz")[0] == 200:
                break
        except OSError:
            connection.close()
        time.sleep(0.1)
    while len(frames.first) < args.sources:  # every source delivers before anything is measured
        time.sleep(0.05)
    time.sleep(args.seconds / 2)

    def scrape() -> None:
        status, body = request(connection, "GET", "/metrics")
        assert status == 200 and b"streamflow_source_frames_total" in body

    scrape()
    quiet_fps, _ = fps_over(frames, args.seconds)
    periodic_fps, periodic = fps_over(frames, args.seconds, during=scrape, every=args.interval)
    busy_fps, back_to_back = fps_over(frames, args.seconds, during=scrape)
    quiet_again_fps, _ = fps_over(frames, args.seconds)
    scrapes = periodic + back_to_back
    adds: list[float] = []
    for index in range(args.adds):
        source_id = f"added{index}"
        sent = time.perf_counter()
        status, body = request(connection, "POST", "/sources", {"id": source_id, "uri": str(clip), "loop": True})
        assert status == 201, body
        while source_id not in frames.first:
            time.sleep(0.0005)
        adds.append(frames.first[source_id] - sent)
        status, body = request(connection, "DELETE", f"/sources/{source_id}")
        assert status == 200, body
    scrapes_ms = sorted(1000 * d for d in scrapes)
    return {
        "sources": args.sources,
        "device": args.device,
        "clip": f"{args.width}x{args.height}",
        "fps_without_scrapes": round((quiet_fps + quiet_again_fps) / 2, 1),
        f"fps_scraped_every_{args.interval:g}s": round(periodic_fps, 1),
        "fps_scraped_back_to_back": round(busy_fps, 1),
        "scrapes": len(scrapes_ms),
        "scrape_ms_p50": round(statistics.median(scrapes_ms), 2),
        "scrape_ms_p95": round(scrapes_ms[int(0.95 * (len(scrapes_ms) - 1))], 2),
        "scrape_ms_max": round(scrapes_ms[-1], 2),
        "post_to_first_frame_ms": [round(1000 * a, 1) for a in adds],
        "post_to_first_frame_ms_p50": round(1000 * statistics.median(adds), 1) if adds else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="each fps window")
    parser.add_argument("--adds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (periodic window)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--feeder-threads", type=int, default=None, help="sources share N threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="control_api_bench_"))
    clip = write_clip(workdir / "clip.mp4", width=args.width, height=args.height, frames=60, fps=30)
    frames = FramesDone()
    sources = [{"id": f"s{i}", "uri": str(clip), "loop": True} for i in range(args.sources)]
    pipeline = Pipeline(
        [Decode(name="source", uri=str(clip)), NullSink(name="sink")],
        sources=sources,
        device=args.device,
        observers=[frames],
        stay_open=True,
        feeder_threads=args.feeder_threads,
    )
    server = ControlServer(pipeline, port=0)
    result: dict[str, Any] = {}

    def measure() -> None:
        try:
            while server.port == 0:  # bound once the run starts
                time.sleep(0.05)
            result.update(client(server.port, pipeline, frames, args, clip))
        finally:
            pipeline.stop()

    worker = threading.Thread(target=measure, name="bench-client")
    worker.start()
    pipeline.run_sync(alongside=server.serving)
    worker.join()
    if not result:
        print("the measurement failed (see above)", file=sys.stderr)
        return 1
    every = f"fps scrape/{args.interval:g}s"
    print(f"{'sources':>8} {'fps no scrape':>14} {every:>17} {'fps back-to-back':>17} {'scrape p50 ms':>14} {'p95':>7}")
    print(
        f"{result['sources']:>8} {result['fps_without_scrapes']:>14} "
        f"{result[f'fps_scraped_every_{args.interval:g}s']:>17} {result['fps_scraped_back_to_back']:>17} "
        f"{result['scrape_ms_p50']:>14} {result['scrape_ms_p95']:>7}"
    )
    print(
        f"POST -> first frame of the new source (ms): p50 {result['post_to_first_frame_ms_p50']}, "
        f"each {result['post_to_first_frame_ms']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
