"""Many sources, one process vs Ray actors sharing the machine's GPUs: aggregate fps side by side.

Runs a config (default: `configs/face_detect_bench.yaml`) over N copies of its input twice, through
the same runner both times:

- `one process`: one pipeline with every source (`Pipeline(sources=...)`);
- `ray, K actors`: `streamflow.cluster` with K actors (`--gpus-per-actor 0.5` puts two on one GPU),
  the sources spread over them.

Aggregate fps = frames delivered by the last stage / the span from the first frame any source
produced to the last (one machine: the processes share the monotonic clock; an actor's own run
also waits for the driver to end it, which must not count). Per-source results
go to `out/cluster_bench/<run>/{source}.jsonl`. Needs `ray` (`pip install 'streamflow[ray]'`).

Usage:
    python benchmarks/cluster_sources.py --sources 32 --actors 2 --gpus-per-actor 0.5 --frames-per-source 240
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from streamflow.cluster import ClusterConfig
from streamflow.cluster.driver import ClusterRunner
from streamflow.config import build_pipeline, load_config
from streamflow.sources import SourceSpec


def _specs(uri: str, count: int, frames: int) -> list[SourceSpec]:
    return [SourceSpec(id=f"s{i:03d}", uri=uri, loop=True, max_frames=frames) for i in range(count)]


def _aggregate(sources: list[dict[str, Any]]) -> tuple[int, float]:
    """Frames delivered and the span from the first frame produced to the last, over all sources."""
    frames = sum(source["frames_done"] for source in sources)
    first = min(source["first_out"] for source in sources if source["first_out"] is not None)
    last = max(source["last_out"] for source in sources if source["last_out"] is not None)
    return frames, last - first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/face_detect_bench.yaml")
    parser.add_argument("--sources", type=int, default=32)
    parser.add_argument("--frames-per-source", type=int, default=240)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--gpus-per-actor", type=float, default=0.5)
    parser.add_argument("--sink", default="detections", help="the file sink stage whose path gets {source}")
    parser.add_argument("--json", type=Path, default=Path("out/cluster_bench.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    figures: dict[str, Any] = {"sources": args.sources, "frames_per_source": args.frames_per_source}

    def config_for(run: str) -> Any:
        out = Path("out/cluster_bench") / run
        out.mkdir(parents=True, exist_ok=True)
        return load_config(args.config, [f"{args.sink}.path={out}/{{source}}.jsonl"])

    config = config_for("one_process")
    uri = str(config.stages[0].options["uri"])
    specs = _specs(uri, args.sources, args.frames_per_source)
    started = time.perf_counter()
    stats = build_pipeline(config, sources=specs).run_sync()
    done, span = _aggregate([source.summary() for source in stats.sources])
    figures["one_process"] = {"frames": done, "span_s": span, "fps": done / span}
    print(f"one process: {done} frames, {done / span:.1f} fps ({time.perf_counter() - started:.1f} s in all)")

    cluster = ClusterConfig(actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=1)
    started = time.perf_counter()
    result = ClusterRunner(config_for("ray"), cluster=cluster, sources=specs).run()
    runs = [actor["run"] for actor in result.actors.values() if actor.get("run")]
    frames, wall = _aggregate([source for run in runs for source in run["sources"]])
    figures["ray"] = {"actors": args.actors, "frames": frames, "span_s": wall, "fps": frames / wall}
    print(
        f"ray, {args.actors} actors x {args.gpus_per_actor:g} GPU: {frames} frames, {frames / wall:.1f} fps "
        f"({time.perf_counter() - started:.1f} s in all, actor start included)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
