from __future__ import annotations

import asyncio

import pytest

from streamflow.edge import Edge
from streamflow.frame import Batch, EndOfStream
from streamflow.stage import Overflow
from streamflow.testing import make_frames


async def test_block_waits_for_room_and_never_drops() -> None:
    edge = Edge("e", capacity=2, overflow=Overflow.BLOCK)
    frames = make_frames(3)
    await edge.put(frames[0])
    await edge.put(frames[1])
    third = asyncio.create_task(edge.put(frames[2]))
    await asyncio.sleep(0.01)
    assert not third.done(), "a full BLOCK edge must make the producer wait"
    assert await edge.get() is frames[0]
    await asyncio.wait_for(third, 1)
    assert [await edge.get(), await edge.get()] == [frames[1], frames[2]]
    assert edge.dropped == 0
    assert edge.max_depth == 2


async def test_drop_oldest_drops_and_counts_frames_of_batches() -> None:
    edge = Edge("e", capacity=2, overflow=Overflow.DROP_OLDEST)
    frames = make_frames(5)
    await edge.put(Batch(frames[:2]))  # a batch of two frames, dropped as two
    await edge.put(frames[2])
    await edge.put(frames[3])
    await edge.put(frames[4])
    assert edge.dropped == 3
    assert [await edge.get(), await edge.get()] == [frames[3], frames[4]]


async def test_end_of_stream_is_never_dropped_and_never_waits() -> None:
    edge = Edge("e", capacity=1, overflow=Overflow.BLOCK)
    await edge.put(make_frames(1)[0])
    await asyncio.wait_for(edge.put(EndOfStream()), 0.5)  # full edge, still accepted at once
    drop = Edge("d", capacity=1, overflow=Overflow.DROP_OLDEST)
    await drop.put(EndOfStream("a"))
    for frame in make_frames(3):
        await drop.put(frame)
    first = await drop.get()
    assert isinstance(first, EndOfStream) and first.source_id == "a"


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Edge("e", capacity=0)
