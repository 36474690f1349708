"""Live RTSP benchmark: capture-to-detection latency, and how many live streams one process keeps up with.

A real RTSP server (`tests/support/rtsp_server.py`: gst-rtsp-server under Debian's /usr/bin/python3, x264
ultrafast/zerolatency, one keyframe per second) serves a live `videotestsrc` stream on 127.0.0.1.
Each stream is one pipeline `rtsp -> preprocess -> infer (CenterFace) -> centerface -> null`; K
streams are K such pipelines (K RTSP sessions, K decoders, K models) on one event loop in this process.
The server's media is shared, so K clients cost the server one encoder.

Figures, per K = 1, 2, ... (stops at the first K that does not keep up, or `--max-streams`):
- capture-to-detection latency p50/p95/p99: from a packet's arrival (`Frame.arrival_time`, when the
  demuxer handed it over) to the end of the detection postprocess, over the measured window only;
- frames detected per stream per second, frames dropped on the drop_oldest edge after the camera and
  packets dropped before the decoder, in the window;
- the CPU used by this process and by the server (cores).
A stream "keeps up" when nothing was dropped in the window and its detection rate is at least 97 %
of the camera's frame rate. The result is the largest K for which every stream keeps up.

Usage (CPU machine; 1080p is the GPU host's size):
    python benchmarks/rtsp_latency.py --width 640 --height 360 --input-width 320 --input-height 192 \\
        --json out/rtsp_latency.json
    python benchmarks/rtsp_latency.py --width 1920 --height 1080 --device cuda --format nv12 --json out/r.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stages.centerface import CenterFace  # noqa: E402  (after the repo root is importable)
from stages.infer import Infer  # noqa: E402
from stages.null import NullSink  # noqa: E402
from stages.preprocess import Preprocess  # noqa: E402
from stages.rtsp import RtspSource  # noqa: E402
from streamflow import Observer, Pipeline  # noqa: E402
from streamflow.frame import Frame  # noqa: E402
from streamflow.observers import percentile  # noqa: E402
from streamflow.stage import Stage  # noqa: E402

MODEL = ROOT / "models" / "centerface.onnx"
SINK = "sink"
CAMERA = "camera"


def load_server_module() -> Any:
    spec = importlib.util.spec_from_file_location("rtsp_server", ROOT / "tests" / "support" / "rtsp_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DetectionLatency(Observer):
    """Capture-to-detection latency of frames leaving the detection postprocess, with their time."""

    def __init__(self, stage_name: str) -> None:
        self.stage_name = stage_name
        self.samples: list[tuple[float, float]] = []  # (wall time done, latency s)

    def on_processed(self, stage: Stage, frames_in: Any, frames_out: Any, busy_s: float) -> None:
        if stage.name != self.stage_name:
            return
        now = time.time()
        frames: list[Frame] = list(frames_out)
        self.samples.extend((now, now - f.arrival_time) for f in frames if f.arrival_time is not None)

    def window(self, start: float, end: float) -> list[float]:
        return [latency for done, latency in self.samples if start <= done < end]


def build(uri: str, index: int, args: argparse.Namespace) -> tuple[Pipeline, DetectionLatency]:
    probe = DetectionLatency("faces")
    stages: list[Stage] = [
        RtspSource(uri=uri, name=CAMERA, transport=args.transport, format=args.format, source_id=str(index)),
        # Short queues after the camera: a backlog builds on its drop_oldest edge, not in blocking queues.
        Preprocess(
            name="preprocess",
            queue_size=args.queue_size,
            width=args.input_width,
            height=args.input_height,
            dtype="fp16" if args.fp16 else "fp32",
        ),
        Infer(
            name="detect",
            queue_size=1,
            model=MODEL,
            input_shapes={"input.1": [1, 3, args.input_height, args.input_width]},
            precision="fp16" if args.fp16 else "fp32",
        ),
        CenterFace(name="faces", threshold=0.5),
        NullSink(name=SINK),
    ]
    return Pipeline(stages, name=f"stream{index}", device=args.device, observers=[probe]), probe


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), children excluded."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(pipeline: Pipeline) -> dict[str, float]:
    stats = pipeline.snapshot()
    return {
        "dropped": float(sum(stage.dropped for stage in stats.stages)),
        "packets_dropped": stats.stage(CAMERA).counters.get("packets_dropped", 0.0),
        "reconnects": stats.stage(CAMERA).counters.get("reconnect_attempts", 0.0),
        "camera": float(stats.stage(CAMERA).frames_out),
        "detected": float(stats.stage("faces").frames_out),
    }


async def measure(k: int, uri: str, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    built = [build(uri, i, args) for i in range(k)]
    tasks = [asyncio.create_task(p.run(), name=p.name) for p, _ in built]
    try:
        deadline = time.monotonic() + args.startup_timeout
        while not all(probe.samples for _, probe in built):
            for task in tasks:
                if task.done():
                    task.result()  # a pipeline failed to start: raise its error
            if time.monotonic() > deadline:
                raise TimeoutError(f"{k} stream(s): no detections after {args.startup_timeout} s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(args.warmup)  # past the burst of frames buffered while the stream was probed
        before = [counters(p) for p, _ in built]
        cpu0, server0, t0 = cpu_seconds(), cpu_seconds(server_pid), time.time()
        await asyncio.sleep(args.duration)
        t1 = time.time()
        cpu1, server1 = cpu_seconds(), cpu_seconds(server_pid)
        after = [counters(p) for p, _ in built]
    finally:
        for pipeline, _ in built:
            pipeline.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    window = t1 - t0
    streams = []
    latencies: list[float] = []
    for (_, probe), b, a in zip(built, before, after, strict=True):
        delta = {key: a[key] - b[key] for key in a}
        lat = probe.window(t0, t1)
        latencies.extend(lat)
        detected_fps = delta["detected"] / window
        streams.append(
            {
                "camera_fps": round(delta["camera"] / window, 2),
                "detected_fps": round(detected_fps, 2),
                "dropped_frames": int(delta["dropped"]),
                "dropped_packets": int(delta["packets_dropped"]),
                "reconnect_attempts": int(delta["reconnects"]),
                "keeps_up": delta["dropped"] == 0 and delta["packets_dropped"] == 0 and detected_fps >= 0.97 * args.fps,
            }
        )
    ms = [x * 1000 for x in latencies]
    return {
        "streams": k,
        "window_s": round(window, 2),
        "latency_ms": {f"p{q}": round(percentile(ms, q) or 0.0, 1) for q in (50, 95, 99)} if ms else None,
        "detected_fps_total": round(sum(s["detected_fps"] for s in streams), 2),
        "dropped_frames_total": sum(s["dropped_frames"] for s in streams),
        "client_cpu_cores": round((cpu1 - cpu0) / window, 2),
        "server_cpu_cores": round((server1 - server0) / window, 2),
        "all_keep_up": all(s["keeps_up"] for s in streams),
        "per_stream": streams,
    }


def machine() -> dict[str, Any]:
    import av
    import onnxruntime
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "av": av.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1920, help="stream width")
    parser.add_argument("--height", type=int, default=1080, help="stream height")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--input-width", type=int, default=640, help="detector input width (multiple of 32)")
    parser.add_argument("--input-height", type=int, default=384, help="detector input height (multiple of 32)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--format", choices=("rgb", "nv12"), default="rgb")
    parser.add_argument("--fp16", action="store_true", help="fp16 model input and inference (CUDA only)")
    parser.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    parser.add_argument("--queue-size", type=int, default=2, help="capacity of the drop_oldest edge after the camera")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first detection, not measured")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument("--max-streams", type=int, default=8)
    parser.add_argument("--streams", type=str, default=None, help="measure exactly these K (e.g. 1,3), no stepping")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    server_module = load_server_module()
    reason = server_module.server_unavailable_reason()
    if reason is not None:
        sys.exit(f"cannot run the RTSP server: {reason}")
    result: dict[str, Any] = {
        "machine": machine(),
        "stream": {
            "width": args.width,
            "height": args.height,
            "fps": args.fps,
            "codec": "h264 (x264 ultrafast, zerolatency, keyframe every second)",
            "transport": args.transport,
        },
        "detector": {
            "model": "CenterFace",
            "input": [args.input_height, args.input_width],
            "fp16": args.fp16,
            "device": args.device,
            "format": args.format,
        },
        "steps": [],
    }
    with server_module.RtspServer(width=args.width, height=args.height, fps=args.fps) as server:
        steps = [int(k) for k in args.streams.split(",")] if args.streams else range(1, args.max_streams + 1)
        for k in steps:
            step = asyncio.run(measure(k, server.uri, server.proc.pid, args))
            result["steps"].append(step)
            lat = step["latency_ms"] or {}
            print(
                f"{k} stream(s): detected {step['detected_fps_total']:.1f} fps in all, "
                f"dropped {step['dropped_frames_total']}, latency p50 {lat.get('p50')} ms p95 {lat.get('p95')} ms, "
                f"cpu {step['client_cpu_cores']} cores (server {step['server_cpu_cores']}), "
                f"{'keeps up' if step['all_keep_up'] else 'falls behind'}",
                flush=True,
            )
            if not step["all_keep_up"] and not args.streams:
                break
    kept = [s["streams"] for s in result["steps"] if s["all_keep_up"]]
    # With explicit --streams the steps need not be contiguous: only a stepped run answers "how many".
    result["real_time_streams"] = (max(kept) if kept else 0) if not args.streams else None
    first = result["steps"][0]
    result["single_stream_latency_ms"] = first["latency_ms"]
    result["machine"]["load_average_at_end"] = os.getloadavg()
    print(
        f"real-time streams in one process: {result['real_time_streams']}; "
        f"1-stream capture-to-detection latency {first['latency_ms']}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
