"""Decode benchmark: raw PyNvVideoCodec loops vs the `decode -> null` pipeline, in one process.

Runs on a CUDA machine with PyNvVideoCodec. Over the same 1080p H.264 clip (generated with PyAV
unless `--clip` is given) it measures:

- `raw nv12`: PyNvVideoCodec's demuxer + `CreateDecoder`, frames counted, nothing copied;
- `raw batch rgb`: `ThreadedDecoder(..., output_color_type=RGBP).get_batch_frames(B)`;
- `pipeline nv12` / `pipeline rgb`: `Decode(format=...) -> NullSink` through `streamflow.Pipeline`;
- the same with `--sources` (default 4) decoders / pipelines running at once (aggregate fps).

Prints a table with fps and pipeline/raw ratios and writes the figures as JSON to `--json`.

Usage:
    python benchmarks/decode.py --frames 600 --json out/decode.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def make_clip(path: Path, frames: int) -> Path:
    from streamflow.video.synth import write_clip

    if not path.exists():
        write_clip(path, width=1920, height=1080, frames=frames, codec="h264", crf=23)
    return path


def raw_nv12(clip: Path) -> int:
    """PyNvVideoCodec's own demuxer and decoder, device memory; counts frames."""
    import PyNvVideoCodec as nvc

    demuxer = nvc.CreateDemuxer(filename=str(clip))
    decoder = nvc.CreateDecoder(
        gpuid=0, codec=demuxer.GetNvCodecId(), cudacontext=0, cudastream=0, usedevicememory=True
    )
    count = 0
    for packet in demuxer:
        count += len(decoder.Decode(packet))
    return count


def raw_batch_rgb(clip: Path, batch: int) -> int:
    """ThreadedDecoder with decoder-side planar RGB; counts frames."""
    import PyNvVideoCodec as nvc

    decoder = nvc.ThreadedDecoder(
        str(clip), buffer_size=batch, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGBP
    )
    count = 0
    while True:
        frames = decoder.get_batch_frames(batch)
        if not frames:
            break
        count += len(frames)
    decoder.end()
    return count


def timed_threads(fn: Callable[[], int], copies: int) -> tuple[int, float]:
    results = [0] * copies

    def run(i: int) -> None:
        results[i] = fn()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(copies)]
    torch.cuda.synchronize()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    return sum(results), time.perf_counter() - start


def pipelines(clip: Path, fmt: str, copies: int, emit_batch: int) -> tuple[int, float, list[dict[str, Any]]]:
    from stages.decode import Decode
    from stages.null import NullSink
    from streamflow import Pipeline

    runs = [
        Pipeline(
            [Decode(uri=str(clip), format=fmt, emit_batch=emit_batch, name="decode"), NullSink(name="null")],
            name=f"p{i}",
            device="cuda",
        )
        for i in range(copies)
    ]

    async def all_of_them() -> list[Any]:
        return await asyncio.gather(*(p.run() for p in runs))

    torch.cuda.synchronize()
    start = time.perf_counter()
    stats = asyncio.run(all_of_them())
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    frames = sum(s.stage("null").frames_in for s in stats)
    return frames, wall, [s.to_dict() for s in stats]


def timed_pipelines(clip: Path, fmt: str, copies: int, emit_batch: int) -> tuple[int, float]:
    frames, wall, _ = pipelines(clip, fmt, copies, emit_batch)
    return frames, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=None, help="1080p H.264 clip (default: generate one)")
    parser.add_argument("--frames", type=int, default=600, help="frames of the generated clip")
    parser.add_argument("--sources", type=int, default=4, help="parallel sources for the multi-source rows")
    parser.add_argument("--batch", type=int, default=8, help="emit_batch of the pipeline / raw batch size")
    parser.add_argument("--repeat", type=int, default=2, help="runs per row; the best is reported")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    clip = make_clip(args.clip or Path("/tmp/streamflow_bench_1080p.mp4"), args.frames)
    raw_nv12(clip)  # warm up: CUDA context, decoder creation, file cache

    rows: list[dict[str, Any]] = []

    def best(label: str, sources: int, run: Callable[[], tuple[int, float]]) -> dict[str, Any]:
        results = [run() for _ in range(args.repeat)]
        frames, wall = max(results, key=lambda r: r[0] / r[1])
        row = {"case": label, "sources": sources, "frames": frames, "wall_s": round(wall, 4), "fps": frames / wall}
        rows.append(row)
        return row

    for sources in (1, args.sources):
        raw = best("raw nv12", sources, functools.partial(timed_threads, functools.partial(raw_nv12, clip), sources))
        raw_rgb = best(
            "raw batch rgb",
            sources,
            functools.partial(timed_threads, functools.partial(raw_batch_rgb, clip, args.batch), sources),
        )
        for fmt, base in (("nv12", raw), ("rgb", raw_rgb)):
            for emit in (1, args.batch):
                row = best(
                    f"pipeline {fmt} emit_batch={emit}",
                    sources,
                    functools.partial(timed_pipelines, clip, fmt, sources, emit),
                )
                row["ratio_vs_raw_nv12"] = row["fps"] / raw["fps"]
                row["ratio_vs_raw_same_format"] = row["fps"] / base["fps"]

    device = torch.cuda.get_device_name(0)
    print(f"device: {device}; clip: {clip} ({args.frames} frames 1080p H.264)")
    print(f"{'case':32} {'sources':>7} {'frames':>7} {'fps':>9} {'/raw nv12':>10} {'/raw same fmt':>14}")
    for row in rows:
        ratio = f"{row['ratio_vs_raw_nv12']:.3f}" if "ratio_vs_raw_nv12" in row else "-"
        same = f"{row['ratio_vs_raw_same_format']:.3f}" if "ratio_vs_raw_same_format" in row else "-"
        print(f"{row['case']:32} {row['sources']:>7} {row['frames']:>7} {row['fps']:>9.1f} {ratio:>10} {same:>14}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "clip": str(clip), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
