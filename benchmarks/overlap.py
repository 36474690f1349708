"""Do GPU stages on their own CUDA streams overlap? Two stages each doing `ms` of GPU work per frame.

Serial execution would take N x 2 x ms; perfect overlap N x ms (+ one stage's latency). Prints the
measured wall time, both references and the overlap ratio. Run on a GPU host:

    python benchmarks/overlap.py --frames 100 --ms 5 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import ClassVar

import torch

from streamflow import Batch, Frame, Pipeline, Source, Stage, StageConfig
from streamflow.frame import Item
from streamflow.testing import ListSink


def cycles_per_ms() -> float:
    """Calibrate torch.cuda._sleep (a spin kernel counting clock cycles) against CUDA events."""
    torch.cuda._sleep(1_000_000)  # warm-up: module load, clocks up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(50_000_000)
    end.record()
    end.synchronize()
    return 50_000_000 / start.elapsed_time(end)


class GpuFrames(Source):
    class Config(StageConfig):
        count: int = 100

    uses_gpu: ClassVar[bool] = True

    def generate(self) -> Iterator[Item]:
        for index in range(self.config.count):
            image = torch.full((3, 64, 64), index % 256, dtype=torch.uint8, device=self.device)
            yield Frame(image, pts=index, time_base=Fraction(1, 30), index=index)


class GpuWork(Stage):
    """Spins the GPU for `cycles` on the stage's own stream, then touches the frame."""

    class Config(StageConfig):
        cycles: int

    uses_gpu: ClassVar[bool] = True

    def process(self, item: Frame | Batch) -> Frame | Batch:
        torch.cuda._sleep(self.config.cycles)
        for frame in item.frames:
            frame.image = frame.image + 1
        return item


def measure_overlap(frames: int, ms: float) -> dict[str, float]:
    cycles = int(cycles_per_ms() * ms)
    sink = ListSink(name="sink")
    pipeline = Pipeline(
        [
            GpuFrames(name="source", count=frames),
            GpuWork(name="a", cycles=cycles),
            GpuWork(name="b", cycles=cycles),
            sink,
        ],
        device="cuda",
    )
    started = time.perf_counter()
    pipeline.run_sync()
    wall_ms = (time.perf_counter() - started) * 1000
    correct = all(int(f.image[0, 0, 0]) == (f.index % 256 + 2) % 256 for f in sink.frames)
    return {
        "frames": frames,
        "gpu_ms_per_stage": ms,
        "wall_ms": round(wall_ms, 1),
        "serial_reference_ms": frames * 2 * ms,
        "overlapped_reference_ms": frames * ms,
        "wall_over_serial": round(wall_ms / (frames * 2 * ms), 3),
        "data_correct": correct,
        "gpu": torch.cuda.get_device_name(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--ms", type=float, default=5.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    measure_overlap(10, args.ms)  # warm-up run: CUDA context, streams, allocator
    result = measure_overlap(args.frames, args.ms)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
