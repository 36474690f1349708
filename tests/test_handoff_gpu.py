"""CUDA hand-off between stages on different streams: correctness, lifetime and overlap (GPU only)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from streamflow import Batch, Frame, Pipeline, Source, Stage, StageConfig
from streamflow.frame import Item
from streamflow.testing import ListSink

pytestmark = pytest.mark.gpu
SIZE = (3, 512, 512)


class SlowProducer(Source):
    """Writes frame i's value with a long spin kernel in front, on its own stream."""

    class Config(StageConfig):
        count: int = 16
        cycles: int = 20_000_000

    uses_gpu: ClassVar[bool] = True

    def generate(self) -> Iterator[Item]:
        for index in range(self.config.count):
            image = torch.empty(SIZE, dtype=torch.uint8, device=self.device)
            torch.cuda._sleep(self.config.cycles)  # the write below lands long after generate() returns
            image.fill_(index + 1)
            yield Frame(image, pts=index, time_base=Fraction(1, 30), index=index)


class SlowConsumer(Stage):
    """Reads the frame after a spin on its own stream and drops the input: only record_stream keeps
    the producer's allocator from reusing that memory while this stream still reads it."""

    class Config(StageConfig):
        cycles: int = 20_000_000

    uses_gpu: ClassVar[bool] = True

    def process(self, item: Frame | Batch) -> Frame | Batch:
        for frame in item.frames:
            torch.cuda._sleep(self.config.cycles)
            frame.results["seen"] = frame.image.clone()
            frame.image = torch.empty(0, device=self.device)
        return item


class GpuListSink(ListSink):
    """Keeps items on the device: a host stage would (rightly) synchronise on each item's event."""

    uses_gpu: ClassVar[bool] = True


def test_gpu_stages_hand_over_complete_data_without_host_sync() -> None:
    sink = GpuListSink(name="sink")
    torch.cuda.set_sync_debug_mode("error")  # any implicit host sync in the GPU stages raises
    try:
        Pipeline([SlowProducer(name="producer"), SlowConsumer(name="consumer"), sink], device="cuda").run_sync()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [f.index for f in sink.frames] == list(range(16))
    for frame in sink.frames:
        seen = frame.results["seen"]
        assert bool((seen == frame.index + 1).all()), f"frame {frame.index} saw incomplete or reused memory"


def test_serial_schedule_hands_over_complete_data_on_per_stage_streams() -> None:
    """`serial=True` keeps each stage's stream and the event hand-off; it adds a device wait per frame."""
    sink = GpuListSink(name="sink")
    stages = [SlowProducer(name="producer", count=6), SlowConsumer(name="consumer"), sink]
    stats = Pipeline(stages, device="cuda", serial=True).run_sync()
    assert [f.index for f in sink.frames] == list(range(6))
    assert stages[0].stream is not None and stages[1].stream is not None and stages[0].stream != stages[1].stream
    for frame in sink.frames:
        assert bool((frame.results["seen"] == frame.index + 1).all()), f"frame {frame.index} saw incomplete memory"
    assert stats.stage("consumer").queue_capacity is None


def test_two_gpu_stages_overlap() -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from overlap import measure_overlap

    measure_overlap(5, 5.0)
    result = measure_overlap(60, 5.0)
    assert result["data_correct"]
    # Serial would be 2 x 5 ms per frame; overlapped streams approach 1 x 5 ms.
    assert result["wall_over_serial"] < 0.75, result
