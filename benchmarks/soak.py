"""Does anything grow with running time? Many looping sources for a while, memory sampled throughout.

One process runs `decode -> null` (or `--config`'s stages) over `--sources` looping copies of a
generated clip for `--minutes`, unpaced, and every `--every` seconds samples, from outside the
pipeline's own figures: resident host memory (`/proc/self/status` VmRSS), GPU memory allocated and
reserved by torch (when the process uses CUDA), threads, open file descriptors, objects tracked by
the garbage collector, and frames done. Each source loops the clip, so decoders are re-created and
files re-opened hundreds of times: what a leak per loop or per frame would need to show.

Reported: the first sample after `--warmup` seconds and the last, and the least-squares slope of each
figure over the samples after warm-up (per minute), with frames a second. Flat slopes (host memory
within allocator noise, the counts exactly flat) are the pass condition a reader checks; the script
asserts nothing, it measures. `--json` writes every sample.

Usage:
    python benchmarks/soak.py --sources 16 --minutes 3
    python benchmarks/soak.py --config configs/face_detect_bench.yaml --sources 64 --width 1280 --height 720 --minutes 5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from control_api import FramesDone, looping_pipeline  # benchmarks/, beside this script

from streamflow import Observer
from streamflow.observers import FreezeObjectsAfterSetup
from streamflow.video.synth import write_clip


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def sample(frames: FramesDone, started: float, *, count_objects: bool = True) -> dict[str, float]:
    row = {
        "t_s": time.perf_counter() - started,
        "frames": float(frames.count),
        "host_rss_mib": _rss_mib(),
        "threads": float(threading.active_count()),
        "fds": float(len(os.listdir("/proc/self/fd"))),
    }
    if count_objects:
        row["gc_tracked"] = float(len(gc.get_objects()))
    if torch.cuda.is_initialized():
        row["gpu_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
        row["gpu_reserved_mib"] = torch.cuda.memory_reserved() / 2**20
    return row


def slope_per_minute(rows: Sequence[dict[str, float]], key: str) -> float:
    """Least-squares slope of `key` against time, per minute."""
    times = [r["t_s"] / 60 for r in rows]
    values = [r[key] for r in rows]
    if len(rows) < 2:
        return 0.0
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True)) / spread


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the samples that count")
    parser.add_argument("--device", default="cpu", help="without --config (a config names its own device)")
    parser.add_argument("--config", type=Path, default=None, help="run this config's stages instead of decode -> null")
    parser.add_argument("--clip-frames", type=int, default=60, help="frames of the generated clip (it loops)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument(
        "--no-object-count",
        action="store_true",
        help="leave gc.get_objects() out of the samples (it walks every object)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="soak_"))
    clip = write_clip(workdir / "clip.mp4", width=args.width, height=args.height, frames=args.clip_frames, fps=30)
    frames = FramesDone()
    observers: list[Observer] = [frames, FreezeObjectsAfterSetup()]  # as `streamflow run` does
    pipeline = looping_pipeline(args.config, clip, args.sources, observers, device=args.device)
    rows: list[dict[str, float]] = []

    def watch() -> None:
        try:
            while frames.count == 0:
                time.sleep(0.05)
            started = time.perf_counter()
            deadline = started + 60 * args.minutes
            while time.perf_counter() < deadline:
                rows.append(sample(frames, started, count_objects=not args.no_object_count))
                time.sleep(args.every)
            rows.append(sample(frames, started, count_objects=not args.no_object_count))
        finally:
            pipeline.stop()

    watcher = threading.Thread(target=watch, name="soak-watch")
    watcher.start()
    stats = pipeline.run_sync()
    watcher.join()
    counted = [r for r in rows if r["t_s"] >= args.warmup]
    if len(counted) < 2:
        print(f"only {len(counted)} samples after the warm-up: run longer", file=sys.stderr)
        return 1
    first, last = counted[0], counted[-1]
    fps = (last["frames"] - first["frames"]) / (last["t_s"] - first["t_s"])
    loops = sum(stage.counters.get("loops", 0) for stage in stats.stages)
    keys = [k for k in first if k not in ("t_s", "frames")]
    report = {
        "sources": args.sources,
        "config": str(args.config) if args.config else "decode -> null",
        "clip": f"{args.width}x{args.height}x{args.clip_frames}",
        "minutes_sampled": round((last["t_s"] - first["t_s"]) / 60, 2),
        "fps": round(fps, 1),
        "loops_counted": loops,
        "first": {k: round(first[k], 1) for k in keys},
        "last": {k: round(last[k], 1) for k in keys},
        "slope_per_minute": {k: round(slope_per_minute(counted, k), 2) for k in keys},
        "samples": rows,
    }
    print(
        f"{report['sources']} sources, {report['config']}, clip {report['clip']}: {report['fps']} fps over "
        f"{report['minutes_sampled']} min after {args.warmup:g} s of warm-up"
    )
    print(f"{'figure':<20} {'first':>12} {'last':>12} {'slope / min':>12}")
    for key in keys:
        print(f"{key:<20} {first[key]:>12.1f} {last[key]:>12.1f} {report['slope_per_minute'][key]:>12.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
