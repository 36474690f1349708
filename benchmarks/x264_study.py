"""How fast CPU libx264 encodes the super-resolution output on this host, and what slows it down.

The super-resolution benchmark on a GPU without NVENC is bound by libx264 (see models/VSR.md and the
issue's closing note). This script measures the encoder alone, on the same content and settings as
`configs/super_resolution.yaml` (1280x720, preset veryfast, CRF 18), so the pipeline's encode stage
can be compared with its ceiling:

- one encoder fed host NV12 frames: fps and the CPU cores it keeps busy (process CPU time / wall);
- the same with x264 threads fixed, with other presets, and with NV12 passed straight to x264;
- the same while another Python thread holds the GIL in a pure-Python loop (what other stages do);
- K independent encoders in K threads (aggregate fps): the ceiling of chunked, parallel encoding.

Frames: `samples/sr_input.mp4` (640x360) decoded by PyAV, bicubic x2 by torch, converted to NV12.

    python benchmarks/x264_study.py --frames 240 --json out/x264.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F

from streamflow.ops.color import rgb_to_nv12
from streamflow.video.pyav_encoder import EncoderProcess, EncoderSettings


def load_frames(clip: str, scale: int, limit: int) -> list[np.ndarray]:
    frames = []
    with av.open(clip) as container:
        for frame in container.decode(video=0):
            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float().unsqueeze(0)
            if scale != 1:
                rgb = F.interpolate(rgb, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 255)
            frames.append(rgb_to_nv12(rgb[0].round().to(torch.uint8)).numpy().copy())
            if len(frames) >= limit:
                break
    return frames


def encode_in_child(frames: list[np.ndarray], count: int, path: str) -> None:
    """The same encode through `EncoderProcess` (what `cpu_encoder: process` uses), fed as fast as it takes frames."""
    height, width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    settings = EncoderSettings(path, "mp4", width, height, Fraction(30), Fraction(1, 30), crf=18, preset="veryfast")
    process = EncoderProcess(settings, fmt="nv12", slots=8)
    for index in range(count):
        slot = process.acquire()
        assert slot is not None
        process.slot(slot)[:] = frames[index % len(frames)]
        process.submit([(slot, index)])
    process.close()


def encode(
    frames: list[np.ndarray],
    count: int,
    path: str,
    *,
    preset: str = "veryfast",
    threads: int | None = None,
    direct_nv12: bool = False,
) -> float:
    height, width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height = width, height
        stream.pix_fmt = "nv12" if direct_nv12 else "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        if threads is not None:
            stream.codec_context.thread_count = threads
        stream.options = {"preset": preset, "crf": "18"}
        began = time.perf_counter()
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frames[index % len(frames)], format="nv12")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return time.perf_counter() - began


def measure(name: str, fn: Any, frames_total: int, results: list[dict[str, Any]]) -> None:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    row = {
        "case": name,
        "fps": round(frames_total / wall, 1),
        "cores_busy": round(cpu / wall, 2),
        "cpu_ms_per_frame": round(1000 * cpu / frames_total, 2),
    }
    results.append(row)
    print(
        f"{name:<48} {row['fps']:>7.1f} fps  {row['cores_busy']:>5.2f} cores"
        f"  {row['cpu_ms_per_frame']:>6.2f} CPU ms/frame (this process)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="samples/sr_input.mp4")
    parser.add_argument("--scale", type=int, default=2, help="bicubic upscale of the clip's frames (1: as they are)")
    parser.add_argument("--max-source-frames", type=int, default=120)
    parser.add_argument("--quick", action="store_true", help="only the cases that matter for the pipeline")
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--out", default="/tmp/x264_study")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    frames = load_frames(args.clip, args.scale, args.max_source_frames)
    n = args.frames
    print(f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0] * 2 // 3} NV12, {os.cpu_count()} CPUs")
    results: list[dict[str, Any]] = []
    o = args.out
    measure("veryfast, threads auto", lambda: encode(frames, n, f"{o}/a.mp4"), n, results)
    measure(
        "veryfast, in a child process (EncoderProcess)", lambda: encode_in_child(frames, n, f"{o}/ch.mp4"), n, results
    )
    if not args.quick:
        _single_encoder_variants(frames, n, o, results)
    for k in (2, 3) if args.quick else (2, 4):
        measure(
            f"veryfast, {k} encoders in parallel (aggregate)",
            lambda k=k: _parallel(frames, n, k, o),
            n // k * k,
            results,
        )
    _save(args.json, results)


def _single_encoder_variants(frames: list[np.ndarray], n: int, o: str, results: list[dict[str, Any]]) -> None:
    """NV12 straight in, fixed thread counts, other presets, and the encoder next to a GIL-holding thread."""
    measure(
        "veryfast, threads auto, NV12 into x264", lambda: encode(frames, n, f"{o}/b.mp4", direct_nv12=True), n, results
    )
    for threads in (8, 16, 32):
        measure(
            f"veryfast, threads {threads}", lambda t=threads: encode(frames, n, f"{o}/c{t}.mp4", threads=t), n, results
        )
    for preset in ("superfast", "ultrafast", "faster"):
        measure(f"{preset}, threads auto", lambda p=preset: encode(frames, n, f"{o}/d{p}.mp4", preset=p), n, results)

    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    measure("veryfast, auto, + a GIL-holding Python thread", lambda: encode(frames, n, f"{o}/e.mp4"), n, results)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    measure("same, switch interval 0.5 ms", lambda: encode(frames, n, f"{o}/e2.mp4"), n, results)
    sys.setswitchinterval(previous)
    stop.set()
    spinner.join()


def _parallel(frames: list[np.ndarray], n: int, k: int, out: str) -> None:
    workers = [threading.Thread(target=encode, args=(frames, n // k, f"{out}/p{k}_{i}.mp4")) for i in range(k)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _save(path: str | None, results: list[dict[str, Any]]) -> None:
    if path:
        Path(path).write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
