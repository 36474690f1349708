"""Control API benchmark: /metrics scrape time under many sources, its cost in fps, and POST to first frame.

One process runs `decode -> null` over `--sources` looping copies of a small generated clip (not
paced: the pipeline runs at its throughput limit) with the control API on 127.0.0.1, and a client
thread (with a scraper in its own process, as Prometheus would be) measures:

1. pipeline fps (frames out of the last stage a second) over `--seconds` without any scrape;
2. the same while `/metrics` is scraped every `--interval` seconds (default 1; Prometheus scrapes
   every 15 s or so) and every `--fast-interval` seconds (default 0.1, a stress case; 0 scrapes back
   to back, which keeps the loop busy with scrapes), with the scrape times;
3. `--adds` times: `POST /sources` of one more looping source, and the time from sending the POST
   to the first frame of that source leaving the last stage (then `DELETE` it), with where that
   time went, from the runner's own events (observers, no stage code; times from sending the POST):
   request received by the server; source started (validated, built, connected to the mux);
   input opened (its `setup`, a probe, returned); first `generate` step begun in the source's
   thread, and ended (the decoder created and its first item decoded); that item on the loop;
   then, per stage after the sources, its first call holding a frame of the source begun and
   ended (the call after the sources shows the wait in the mux; the last one's end is the result
   at the sink). Garbage collections in the window are counted too (`gc.callbacks`), and one full
   collection is timed at the end (what a collection of generation 2 stalls every thread for).

Prints both fps figures side by side with the scrape times, the add latency and its breakdown;
`--json` writes them. Each scrape's time inside the server (its handler, from the outermost
middleware) is kept apart from its time on the wire; with `--watch-loop`, `LoopStalls` says how
often the loop ran late by more than `--stall-ms` and whether its thread was running meanwhile or
waiting (it wakes the loop and a thread of its own hundreds of times a second, so it is off unless
asked for). `--rounds` repeats the four windows in turn; `--scrape-path /healthz` times the HTTP
round trip alone, without the metrics.

With `--config`, that config's stages run instead of `decode -> null` (models loaded once; an
added source reuses them), every source reading the generated clip. As `streamflow run` does, what
setup leaves alive is frozen out of the garbage collector (`FreezeObjectsAfterSetup`;
`--no-gc-freeze` to compare).

Usage:
    python benchmarks/control_api.py --sources 64 --seconds 5
    python benchmarks/control_api.py --config configs/face_detect_bench.yaml --sources 64 --width 1280 --height 720
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from stages.decode import Decode
from stages.null import NullSink
from streamflow import Frame, Observer, Pipeline, Stage
from streamflow.api import ControlServer
from streamflow.config import build_pipeline
from streamflow.observers import FreezeObjectsAfterSetup
from streamflow.sources import SourceSpec
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


class AddTimeline(Observer):
    """Steps of newly added sources (perf_counter), from the runner's events; see the module docstring.

    Sources are timed from `watch(id)` (just before the POST) until their first frame left the
    last stage; every other frame costs one set lookup.
    """

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}
        self._pending: set[str] = set()
        self._template = ""
        self._sink = ""
        #: When the server's handler last got a `POST /sources` (set by the benchmark's middleware).
        self.post_received: float | None = None

    def watch(self, source_id: str) -> None:
        self.steps[source_id] = {}
        self._pending.add(source_id)

    def on_start(self, stages: Sequence[Stage], edges: dict[str, Any]) -> None:
        self._template, self._sink = stages[0].name, stages[-1].name

    def on_source_added(self, source_id: str, stage: Stage | None, edge: Any) -> None:
        if source_id in self._pending:
            self.steps[source_id]["started"] = time.perf_counter()

    def on_source_opened(self, source_id: str) -> None:
        if source_id in self._pending:
            self.steps[source_id]["opened"] = time.perf_counter()

    def on_processed(
        self, stage: Stage, frames_in: Sequence[Frame], frames_out: Sequence[Frame], busy_s: float
    ) -> None:
        if not self._pending:
            return
        now = time.perf_counter()
        if not frames_in and frames_out and frames_out[0].source_id in self._pending:
            steps = self.steps[frames_out[0].source_id]
            if "decoded" not in steps:  # the source's first item: stamped in its thread when it came out
                decoded = frames_out[0].timestamps.get(self._template, now)
                steps["decode begun"], steps["decoded"], steps["on the loop"] = decoded - busy_s, decoded, now
        for frame in frames_in:
            if frame.source_id not in self._pending:
                continue
            steps = self.steps[frame.source_id]
            if f"{stage.name} begun" not in steps:
                # A stage stamps the frames it passes on in its thread; a sink passes none on.
                ended = frame.timestamps.get(stage.name, now)
                steps[f"{stage.name} begun"], steps[f"{stage.name} ended"] = ended - busy_s, ended
            if stage.name == self._sink:
                self._pending.discard(frame.source_id)


class GcPauses:
    """Garbage collections of this process: (start, end, generation), from `gc.callbacks`."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((self._started, time.perf_counter(), int(info["generation"])))

    def close(self) -> None:
        gc.callbacks.remove(self._on_gc)

    def by_generation(self) -> dict[str, dict[str, float]]:
        """Per generation: collections, total and longest pause (ms)."""
        summary: dict[str, dict[str, float]] = {}
        for start, end, generation in self.pauses:
            row = summary.setdefault(f"gen{generation}", {"collections": 0, "total_ms": 0.0, "max_ms": 0.0})
            row["collections"] += 1
            row["total_ms"] = round(row["total_ms"] + 1000 * (end - start), 1)
            row["max_ms"] = round(max(row["max_ms"], 1000 * (end - start)), 1)
        return dict(sorted(summary.items()))

    def within(self, start: float, end: float) -> tuple[int, float, int]:
        """Collections that ended in [start, end]: count, total seconds, highest generation."""
        inside = [p for p in self.pauses if start <= p[1] <= end]
        return len(inside), sum(p[1] - p[0] for p in inside), max((p[2] for p in inside), default=-1)


class LoopStalls:
    """How late the event loop runs, and whether its thread was running or waiting meanwhile.

    A heartbeat task wakes every `tick_s` and notes, for each wake later than `threshold_s`, the
    wall time since the last and the CPU time its own thread spent in it (`time.thread_time`): a
    late wake with little CPU time means the loop's thread was waiting (for the GIL, under this
    load), with much CPU time that it ran something long. A sampler thread notes the innermost
    frame of the loop's thread while the loop is late (only the innermost: walking another running
    thread's frames is the kind of thing that crashes an interpreter).
    """

    def __init__(self, threshold_s: float, tick_s: float = 0.002) -> None:
        self.threshold_s, self.tick_s = threshold_s, tick_s
        self.last = time.perf_counter()
        self.loop_thread: int | None = None
        self.late: list[tuple[float, float]] = []  # (wall s, loop thread CPU s) of each late wake
        self.sites: Counter[str] = Counter()  # innermost frame -> samples while late
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="loop-stalls", daemon=True)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.loop_thread = threading.get_ident()
        beat = asyncio.create_task(self._heartbeat())
        self._sampler.start()
        try:
            yield
        finally:
            self._stop.set()
            beat.cancel()

    async def _heartbeat(self) -> None:
        cpu = time.thread_time()
        while True:
            self.last = time.perf_counter()
            await asyncio.sleep(self.tick_s)
            wall, used = time.perf_counter() - self.last, time.thread_time() - cpu
            cpu += used
            if wall > self.threshold_s:
                self.late.append((wall, used))

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            if self.loop_thread is None or time.perf_counter() - self.last < self.threshold_s:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is not None:
                code = frame.f_code
                self.sites[f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}"] += 1

    def summary(self) -> dict[str, Any]:
        walls = sorted(1000 * wall for wall, _ in self.late)
        samples = sum(self.sites.values())
        return {
            "threshold_ms": 1000 * self.threshold_s,
            "late_wakes": len(walls),
            "late_ms_p50": round(statistics.median(walls), 1) if walls else None,
            "late_ms_max": round(walls[-1], 1) if walls else None,
            "late_ms_total": round(sum(walls), 1),
            # Of the late wakes' wall time, the share the loop's thread spent on a CPU.
            "running_share": round(sum(cpu for _, cpu in self.late) / max(sum(w for w, _ in self.late), 1e-9), 3),
            "where": [
                {"share": round(n / samples, 3), "samples": n, "site": site} for site, n in self.sites.most_common(12)
            ],
        }


def breakdown(steps: dict[str, float], sent: float, stages: Sequence[str]) -> dict[str, float]:
    """Each step's time (ms) from sending the POST, in the order a frame meets them."""
    order = ["received", "started", "opened", "decode begun", "decoded", "on the loop"]
    for name in stages:
        order += [f"{name} begun", f"{name} ended"]
    return {step: round(1000 * (steps[step] - sent), 1) for step in order if step in steps}


def request(connection: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


# The scraper runs in its own process, as Prometheus does: its HTTP parsing must not take this
# process's GIL and count against the pipeline.
_SCRAPER = """
import http.client, json, sys, time
port, seconds, every, path = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
durations, deadline, next_call = [], time.perf_counter() + seconds, 0.0
while time.perf_counter() < deadline:
    if time.perf_counter() < next_call:
        time.sleep(0.005)
        continue
    before = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200 and (path != "/metrics" or b"streamflow_source_frames_total" in body), body
    durations.append(time.perf_counter() - before)
    next_call = before + every
print(json.dumps(durations))
"""


def fps_over(
    frames: FramesDone, seconds: float, port: int, every: float | None = None, path: str = "/metrics"
) -> tuple[float, list[float]]:
    """Frames a second over `seconds`, while another process GETs `path` every `every` s (0: back to back)."""
    start_count, started = frames.count, time.perf_counter()
    if every is None:
        time.sleep(seconds)
        durations: list[float] = []
    else:
        command = [sys.executable, "-c", _SCRAPER, str(port), str(seconds), str(every), path]
        durations = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return (frames.count - start_count) / (time.perf_counter() - started), durations


def client(
    port: int,
    pipeline: Pipeline,
    frames: FramesDone,
    timeline: AddTimeline,
    args: argparse.Namespace,
    clip: Path,
) -> dict[str, Any]:
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

    gc_pauses = GcPauses()
    # The windows alternate, `--rounds` times: with every source looping the same clip, throughput
    # swings with the phase of the loop (decoders re-open together), so one window of each says little.
    quiet: list[float] = []
    periodic_each: list[float] = []
    busy_each: list[float] = []
    scrapes: list[float] = []
    for _ in range(args.rounds):
        quiet.append(fps_over(frames, args.seconds, port)[0])
        fps, durations = fps_over(frames, args.seconds, port, every=args.interval, path=args.scrape_path)
        periodic_each.append(fps)
        scrapes += durations
        fps, durations = fps_over(frames, args.seconds, port, every=args.fast_interval, path=args.scrape_path)
        busy_each.append(fps)
        scrapes += durations
        quiet.append(fps_over(frames, args.seconds, port)[0])
    adds: list[float] = []
    steps: list[dict[str, float]] = []
    collections: list[tuple[int, float, int]] = []
    stages = [stage.name for stage in pipeline.stages[1:]]
    for index in range(args.adds):
        source_id = f"added{index}"
        timeline.watch(source_id)
        sent = time.perf_counter()
        status, body = request(connection, "POST", "/sources", {"id": source_id, "uri": str(clip), "loop": True})
        assert status == 201, body
        if timeline.post_received is not None:
            timeline.steps[source_id]["received"] = timeline.post_received
        while source_id not in frames.first:
            time.sleep(0.0005)
        adds.append(frames.first[source_id] - sent)
        steps.append(breakdown(timeline.steps[source_id], sent, stages))
        collections.append(gc_pauses.within(sent, frames.first[source_id]))
        status, body = request(connection, "DELETE", f"/sources/{source_id}?wait=300")
        assert status == 200, body
    collected = gc_pauses.by_generation()
    gc_pauses.close()
    # What a full collection would stall now (every thread waits for it), measured once at the end.
    tracked = len(gc.get_objects())
    before_full = time.perf_counter()
    gc.collect()
    full_collection_ms = 1000 * (time.perf_counter() - before_full)
    scrapes_ms = sorted(1000 * d for d in scrapes)
    return {
        "sources": args.sources,
        "device": str(pipeline.stages[-1].device),
        "config": str(args.config) if args.config else "decode -> null",
        "clip": f"{args.width}x{args.height}",
        "fps_without_scrapes": round(statistics.mean(quiet), 1),
        "fps_without_scrapes_each": [round(fps, 1) for fps in quiet],
        f"fps_scraped_every_{args.interval:g}s": round(statistics.mean(periodic_each), 1),
        f"fps_scraped_every_{args.interval:g}s_each": [round(fps, 1) for fps in periodic_each],
        f"fps_scraped_every_{args.fast_interval:g}s": round(statistics.mean(busy_each), 1),
        f"fps_scraped_every_{args.fast_interval:g}s_each": [round(fps, 1) for fps in busy_each],
        "scrapes": len(scrapes_ms),
        "scrape_ms_p50": round(statistics.median(scrapes_ms), 2),
        "scrape_ms_p95": round(scrapes_ms[int(0.95 * (len(scrapes_ms) - 1))], 2),
        "scrape_ms_max": round(scrapes_ms[-1], 2),
        "post_to_first_frame_ms": [round(1000 * a, 1) for a in adds],
        "post_to_first_frame_ms_p50": round(1000 * statistics.median(adds), 1) if adds else None,
        "post_to_first_frame_steps_ms": steps,
        "gc_over_the_measurement": collected,
        "gc_full_collection_at_the_end": {"tracked_objects": tracked, "ms": round(full_collection_ms, 1)},
        "gc_during_add": [
            {"collections": n, "ms": round(1000 * seconds, 1), "max_generation": generation}
            for n, seconds, generation in collections
        ],
    }


def print_breakdown(adds: list[dict[str, float]], collections: list[dict[str, Any]]) -> None:
    """One line per step: ms from sending the POST for every add, and the step's own share (p50, max)."""
    if not adds:
        return
    print("where the time to the first frame went (ms from sending the POST; step: since the previous one)")
    print(f"{'step':<24} {'each add':<44} {'step p50':>9} {'step max':>9}")
    previous: list[float] = [0.0] * len(adds)
    for step in adds[0]:
        at = [add.get(step, float("nan")) for add in adds]
        own = [a - b for a, b in zip(at, previous, strict=True)]
        each = ", ".join(f"{a:.1f}" for a in at)
        print(f"{step:<24} {each:<44} {statistics.median(own):>9.1f} {max(own):>9.1f}")
        previous = at
    summary = ", ".join(f"{c['collections']} ({c['ms']} ms, gen {c['max_generation']})" for c in collections)
    print(f"garbage collections during each add: {summary}")


def looping_pipeline(
    config: Path | None,
    clip: Path,
    count: int,
    observers: list[Observer],
    *,
    device: str,
    stay_open: bool = False,
    feeder_threads: int | None = None,
) -> Pipeline:
    """`count` sources looping `clip`, through `config`'s stages (models loaded once) or, without
    one, `decode -> null` on `device`."""
    sources = [SourceSpec.model_validate({"id": f"s{i}", "uri": str(clip), "loop": True}) for i in range(count)]
    if config is None:
        return Pipeline(
            [Decode(name="source", uri=str(clip)), NullSink(name="sink")],
            sources=sources,
            device=device,
            observers=observers,
            stay_open=stay_open,
            feeder_threads=feeder_threads,
        )
    pipeline = build_pipeline(config, sources=sources, observers=observers)
    pipeline.stay_open = stay_open
    if feeder_threads is not None:
        pipeline.feeder_threads = feeder_threads
    return pipeline


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="each fps window")
    parser.add_argument("--rounds", type=int, default=1, help="times the four fps windows are repeated, in turn")
    parser.add_argument("--adds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (second window)")
    parser.add_argument(
        "--fast-interval", type=float, default=0.1, help="seconds between scrapes (third window; 0: back to back)"
    )
    parser.add_argument("--device", default="cpu", help="without --config (a config names its own device)")
    parser.add_argument("--config", type=Path, default=None, help="run this config's stages instead of decode -> null")
    parser.add_argument("--clip-frames", type=int, default=60, help="frames of the generated clip (it loops)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--feeder-threads", type=int, default=None, help="sources share N threads")
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave what setup left alive in the GC's generations (`streamflow run` freezes it)",
    )
    parser.add_argument(
        "--scrape-path", default="/metrics", help="what the scraper GETs (/healthz: the HTTP round trip alone)"
    )
    parser.add_argument(
        "--watch-loop",
        action="store_true",
        help="run LoopStalls (a heartbeat on the loop every 2 ms, a sampler thread every 1 ms: both perturb)",
    )
    parser.add_argument("--stall-ms", type=float, default=20.0, help="with --watch-loop: the lateness reported")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="control_api_bench_"))
    clip = write_clip(workdir / "clip.mp4", width=args.width, height=args.height, frames=args.clip_frames, fps=30)
    frames = FramesDone()
    timeline = AddTimeline()
    observers: list[Observer] = [frames, timeline]
    if not args.no_gc_freeze:
        observers.append(FreezeObjectsAfterSetup())  # as `streamflow run` does
    pipeline = looping_pipeline(
        args.config,
        clip,
        args.sources,
        observers,
        device=args.device,
        stay_open=True,
        feeder_threads=args.feeder_threads,
    )
    server = ControlServer(pipeline, port=0)

    handler_s: list[float] = []  # each /metrics request's time inside the server

    @web.middleware
    async def stamp_requests(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/sources":
            timeline.post_received = time.perf_counter()
        began = time.perf_counter()
        response = await handler(request)
        if request.path == args.scrape_path:
            handler_s.append(time.perf_counter() - began)
        return response  # type: ignore[no-any-return]

    server.app.middlewares.insert(0, stamp_requests)  # outermost: the moment the handler chain starts
    result: dict[str, Any] = {}

    def measure() -> None:
        try:
            while server.port == 0:  # bound once the run starts
                time.sleep(0.05)
            result.update(client(server.port, pipeline, frames, timeline, args, clip))
        finally:
            pipeline.stop()

    stalls = LoopStalls(args.stall_ms / 1000)

    @contextlib.asynccontextmanager
    async def serving_and_watching() -> AsyncIterator[None]:
        async with server.serving():
            if not args.watch_loop:
                yield
                return
            async with stalls.running():
                yield

    worker = threading.Thread(target=measure, name="bench-client")
    worker.start()
    pipeline.run_sync(alongside=serving_and_watching)
    worker.join()
    if not result:
        print("the measurement failed (see above)", file=sys.stderr)
        return 1
    inside = sorted(1000 * d for d in handler_s)
    if inside:
        result["scrape_in_server_ms_p50"] = round(statistics.median(inside), 2)
        result["scrape_in_server_ms_p95"] = round(inside[int(0.95 * (len(inside) - 1))], 2)
    if args.watch_loop:
        result["loop_stalls"] = stalls.summary()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    every, fast = f"fps scrape/{args.interval:g}s", f"fps scrape/{args.fast_interval:g}s"
    print(f"{'sources':>8} {'fps no scrape':>14} {every:>17} {fast:>17} {'scrape p50 ms':>14} {'p95':>7}")
    slow_fps, fast_fps = (
        result[f"fps_scraped_every_{args.interval:g}s"],
        result[f"fps_scraped_every_{args.fast_interval:g}s"],
    )
    print(
        f"{result['sources']:>8} {result['fps_without_scrapes']:>14} {slow_fps:>17} {fast_fps:>17} "
        f"{result['scrape_ms_p50']:>14} {result['scrape_ms_p95']:>7}"
    )
    print(
        f"each window (fps): no scrape {result['fps_without_scrapes_each']}, scraped every {args.interval:g} s "
        f"{result[f'fps_scraped_every_{args.interval:g}s_each']}, every {args.fast_interval:g} s "
        f"{result[f'fps_scraped_every_{args.fast_interval:g}s_each']}"
    )
    print(
        f"POST -> first frame of the new source (ms): p50 {result['post_to_first_frame_ms_p50']}, "
        f"each {result['post_to_first_frame_ms']}"
    )
    print_breakdown(result["post_to_first_frame_steps_ms"], result["gc_during_add"])
    print(f"garbage collections over the whole measurement: {result['gc_over_the_measurement']}")
    print(f"a full collection at the end: {result['gc_full_collection_at_the_end']}")
    print(
        f"{args.scrape_path} inside the server (ms): p50 {result.get('scrape_in_server_ms_p50')}, "
        f"p95 {result.get('scrape_in_server_ms_p95')}"
    )
    late = result.get("loop_stalls")
    if late is None:
        return 0
    print(
        f"loop late by over {late['threshold_ms']:g} ms: {late['late_wakes']} times, p50 {late['late_ms_p50']} ms, "
        f"max {late['late_ms_max']} ms, {late['late_ms_total']} ms in all, its thread on a CPU "
        f"{100 * late['running_share']:.0f} % of that; innermost frames while late:"
    )
    for row in late["where"]:
        print(f"  {100 * row['share']:5.1f} %  {row['site']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
