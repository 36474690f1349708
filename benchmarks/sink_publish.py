"""Result-sink throughput: messages per second from the `redis` and `mqtt` sinks into local servers.

Measures the sink alone, no video: a real redis-server and mosquitto (tests/support/message_servers.py, on
127.0.0.1, started and stopped here) and the sink stage's own hooks called in a loop, as the runner
calls them in the stage's thread: `setup()`, `process(batch)` for every batch of frames, `flush()`
(which returns once the server has accepted every message: acknowledged, or at MQTT QoS 0 written to
the socket), `teardown()`. The clock covers the process calls and the flush, so it counts delivered
messages, not buffered ones. Each run is then counted at the server, outside the clock: the length
of its own stream (`XLEN`), or the broker's count of PUBLISH packets received (`$SYS`); a count that
differs from what was sent fails the benchmark.

Each frame carries what CenterFace attaches (`boxes` (K, 4), `scores` (K,), `landmarks` (K, 5, 2) as
tensors, K faces), so the figure includes building and encoding the JSON message (about 400 bytes
with K = 2). `--write-batch` lists the per-round-trip batch sizes to measure; the runner batch (frames
per `process` call) is `--frames-per-call`.

Usage:
    python benchmarks/sink_publish.py --messages 50000 --write-batch 100 500 2000 --json out/sink_publish.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stages.mqtt_sink import MqttSink  # noqa: E402  (after the repo root is importable)
from stages.redis_sink import RedisSink  # noqa: E402
from streamflow.frame import Batch  # noqa: E402
from streamflow.results import encode_message, frame_messages  # noqa: E402
from streamflow.sinks.stage import PublishingSink  # noqa: E402
from streamflow.testing import make_frames  # noqa: E402

_SERVER_COUNT_S = 30.0  # how long the broker's $SYS counter (updated every second) may take to catch up


def _servers() -> Any:
    spec = importlib.util.spec_from_file_location("message_servers", ROOT / "tests" / "support" / "message_servers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def batches(messages: int, per_call: int, faces: int) -> list[Batch]:
    frames = make_frames(messages)
    generator = torch.Generator().manual_seed(0)
    for frame in frames:
        frame.results["boxes"] = torch.rand(faces, 4, generator=generator) * 640
        frame.results["scores"] = torch.rand(faces, generator=generator)
        frame.results["landmarks"] = torch.rand(faces, 5, 2, generator=generator) * 640
    return [Batch(frames[i : i + per_call]) for i in range(0, messages, per_call)]


def stream_length(client: Any, stream: str) -> int:
    """Entries in the streams of template `stream` (every source)."""
    return sum(client.xlen(key) for key in client.scan_iter(stream.format(source="*")))


def broker_received(servers: Any, mosquitto: Any, before: int, count: int) -> int:
    """PUBLISH packets the broker received since its counter read `before`, once `count` arrived."""
    return int(servers.published_count(mosquitto, before + count, _SERVER_COUNT_S)) - before


def measure(sink: PublishingSink, items: list[Batch], counted: Any) -> dict[str, Any]:
    """Run `items` through `sink`; `counted()` says how many messages the server got (after the clock)."""
    sink.setup()
    try:
        cpu = time.process_time()
        started = time.perf_counter()
        for item in items:
            sink.process(item)
        sink.flush()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        sink.teardown()
    count = sum(len(item) for item in items)
    if sink.counters.get("published") != count:
        raise RuntimeError(f"{sink.name}: published {sink.counters.get('published')} of {count}")
    at_server = counted()
    if at_server != count:
        raise RuntimeError(f"{sink.name}: the server counted {at_server} messages of {count}")
    return {
        "messages": count,
        "seconds": round(seconds, 3),
        "messages_per_s": round(count / seconds),
        "cpu_cores": round(cpu / seconds, 2),  # this process (stage thread + I/O thread)
        # What one core of this process sustains: the figure that holds on a machine shared with other
        # work, where the wall-clock rate only shows the share of the CPU this process was given.
        "messages_per_cpu_s": round(count / cpu) if cpu > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--write-batch", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--frames-per-call", type=int, default=8, help="frames per process() call (runner batch)")
    parser.add_argument("--faces", type=int, default=2, help="detections per frame")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    servers = _servers()
    items = batches(args.messages, args.frames_per_call, args.faces)
    size = len(encode_message(frame_messages(items[0].frames[:1])[0]))
    results: list[dict[str, Any]] = []
    with servers.RedisServer() as redis, servers.MosquittoServer() as mosquitto:
        # redis-server here syncs every write to disk (the tests' durability setting): measure without it.
        client = redis.client()
        client.config_set("appendonly", "no")
        broker_before = servers.published_count(mosquitto, 0)
        for write_batch in args.write_batch:
            options: dict[str, Any] = {"write_batch": write_batch, "buffer_size": 4 * write_batch}
            stream = f"bench:{write_batch}:{{source}}"  # a stream of its own per run, counted with XLEN
            runs: list[tuple[str, PublishingSink, Callable[[], int]]] = [
                ("redis", RedisSink(port=redis.port, stream=stream, **options),
                 functools.partial(stream_length, client, stream)),
            ]  # fmt: skip
            for qos in (0, 1):
                sink = MqttSink(port=mosquitto.port, qos=qos, **options)
                counted = functools.partial(broker_received, servers, mosquitto, broker_before, args.messages)
                runs.append((f"mqtt qos{qos}", sink, counted))
                broker_before += args.messages
            for name, sink, counted in runs:
                row = {"sink": name, "write_batch": write_batch, **measure(sink, items, counted)}
                row["load_average"] = round(os.getloadavg()[0], 2)
                results.append(row)
                print(
                    f"{name:10s} write_batch {write_batch:5d}: {row['messages_per_s']:8d} messages/s "
                    f"({row['messages']} in {row['seconds']} s, {row['cpu_cores']} cores of this process, "
                    f"{row['messages_per_cpu_s']} messages per CPU second; load average {row['load_average']})",
                    flush=True,
                )
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "message_bytes": size,
    }
    print(f"message size {size} bytes; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
