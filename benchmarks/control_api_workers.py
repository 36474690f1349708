"""Control API benchmark over worker processes: /metrics at the driver, its fps cost, POST to first result.

The same questions as `control_api.py`, for `streamflow run CONFIG --workers W --api ...`: the
config's stages run in W worker processes (`streamflow.cluster.processes`) over `--sources` looping
copies of a generated clip, unpaced, and the driver process serves the control API
(`ClusterControlServer`: `/metrics` gathers every worker's families). Measured, in windows taken in
turn for `--rounds` rounds:

1. fps with no scrape, with `/metrics` scraped every `--interval` s and every `--fast-interval` s
   (the scraper in its own process, as Prometheus would be), with each scrape's time at the client;
2. `--adds` times: `POST /sources` of one more looping source to its first result at the sink (the
   worker's own monotonic clock, which on one machine is the driver's), then `DELETE`.

Fps counts frames delivered by every source as the workers report them to the driver (every
`--poll` s), so a window's figure is exact to about one report.

Usage:
    python benchmarks/control_api_workers.py --config configs/face_detect_bench.yaml --workers 8 --sources 64 \\
        --width 1280 --height 720 --clip-frames 300
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from control_api import fps_over, request  # this folder's control_api.py (on the path when run as a script)

from streamflow.cli.multibench import per_source_paths
from streamflow.cluster import ClusterConfig
from streamflow.cluster.api import ClusterControlServer
from streamflow.cluster.driver import ClusterRunner
from streamflow.config import load_config
from streamflow.observers import percentile
from streamflow.sources import SourceSpec
from streamflow.video.synth import write_clip


class DeliveredFrames:
    """`count`: frames delivered over every source, as the workers last reported them."""

    def __init__(self, runner: ClusterRunner) -> None:
        self.runner = runner

    @property
    def count(self) -> int:
        return sum(outcome.frames for outcome in list(self.runner.sources.values()))


def first_result_after_post(runner: ClusterRunner, port: int, uri: str, source_id: str) -> float:
    """Seconds from sending POST /sources to the new source's first result at the sink."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = time.monotonic()
    status, body = request(connection, "POST", "/sources", {"id": source_id, "uri": uri, "loop": True})
    if status != 201:
        raise RuntimeError(f"POST /sources: {status} {body[:200]!r}")
    deadline = sent + 60
    while time.monotonic() < deadline:
        first = runner.sources[source_id].current.progress.first_at
        if first is not None:
            status, body = request(connection, "DELETE", f"/sources/{source_id}?wait=60")
            if status != 200:
                raise RuntimeError(f"DELETE /sources/{source_id}: {status} {body[:200]!r}")
            return first - sent
        time.sleep(0.01)
    raise RuntimeError(f"no result of {source_id} within 60 s")


def summary(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values) if values else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sources", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=6.0, help="each fps window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--fast-interval", type=float, default=0.1)
    parser.add_argument("--adds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between the workers' progress reports")
    parser.add_argument("--clip-frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds after every source delivered")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="control_api_workers_"))
    clip = str(write_clip(workdir / "clip.mp4", width=args.width, height=args.height, frames=args.clip_frames, fps=30))
    config = per_source_paths(load_config(args.config))
    sources = [SourceSpec.model_validate({"id": f"s{i}", "uri": clip, "loop": True}) for i in range(args.sources)]
    cluster = ClusterConfig(backend="processes", actors=args.workers, poll_interval_s=args.poll)
    runner = ClusterRunner(config, cluster=cluster, sources=sources, stay_open=True)
    server = ClusterControlServer(runner, port=0)
    server.serve_in_thread()
    runner.start()
    result_box: dict[str, Any] = {}
    watcher = threading.Thread(target=lambda: result_box.setdefault("result", runner.run()), daemon=True)
    watcher.start()
    frames = DeliveredFrames(runner)
    figures: dict[str, Any] = {"workers": args.workers, "sources": args.sources, "windows": []}
    try:
        while any(outcome.current.progress.first_at is None for outcome in list(runner.sources.values())):
            if not watcher.is_alive():
                raise RuntimeError("the run ended before every source delivered (see the error above)")
            time.sleep(0.1)
        time.sleep(args.warmup)
        fps: dict[str, list[float]] = {"none": [], "slow": [], "fast": []}
        scrapes: dict[str, list[float]] = {"slow": [], "fast": []}
        for _ in range(args.rounds):
            for label, every in (("none", None), ("slow", args.interval), ("fast", args.fast_interval)):
                rate, durations = fps_over(frames, args.seconds, server.port, every)  # type: ignore[arg-type]
                fps[label].append(rate)
                scrapes.get(label, []).extend(durations)
                figures["windows"].append({"scrape": label, "fps": rate})
                print(f"{label:>4}: {rate:,.0f} fps" + (f", {len(durations)} scrapes" if durations else ""))
        adds = [first_result_after_post(runner, server.port, clip, f"added{i}") for i in range(args.adds)]
    finally:
        runner.stop()
        watcher.join(timeout=120)
        server.close()
    all_scrapes = [1000 * d for label in scrapes for d in scrapes[label]]
    figures["fps"] = {label: statistics.median(values) for label, values in fps.items()}
    figures["scrape_ms"] = summary(all_scrapes)
    figures["post_to_first_result_ms"] = summary([1000 * a for a in adds])
    print(
        f"{args.workers} workers, {args.sources} sources: fps (median of {args.rounds}) no scrape "
        f"{figures['fps']['none']:,.0f}, every {args.interval:g} s {figures['fps']['slow']:,.0f}, every "
        f"{args.fast_interval:g} s {figures['fps']['fast']:,.0f}"
    )
    scrape = figures["scrape_ms"]
    print(f"/metrics at the client: p50 {scrape['p50']:.1f} ms, p95 {scrape['p95']:.1f} ms, max {scrape['max']:.1f} ms")
    added = figures["post_to_first_result_ms"]
    if adds:
        print(f"POST to first result: p50 {added['p50']:.0f} ms, max {added['max']:.0f} ms over {len(adds)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
