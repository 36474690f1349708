"""Bounded edges between stages.

Invariant: an edge never holds more than `capacity` data items (frames or batches). With
`Overflow.BLOCK` a producer waits until the consumer takes an item, so a fast source in front of a
slow sink holds at most `capacity` items per edge plus one item being worked on by each stage.
With `Overflow.DROP_OLDEST` the producer never waits: the oldest queued data item is discarded and
counted. End-of-stream items are never dropped and never wait for room, so a stop always gets
through, even on a full edge.

Example:
    >>> import asyncio
    >>> from streamflow.frame import EndOfStream
    >>> async def demo():
    ...     edge = Edge("demo", capacity=1, overflow=Overflow.DROP_OLDEST)
    ...     await edge.put("a"); await edge.put("b"); await edge.put(EndOfStream())
    ...     return [await edge.get(), await edge.get()], edge.dropped
    >>> asyncio.run(demo())
    (['b', EndOfStream(source_id=None, reason='finished')], 1)
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from streamflow.frame import Batch, EndOfStream
from streamflow.stage import Overflow

__all__ = ["Edge"]


class Edge:
    """An asyncio queue with a fixed capacity and an overflow policy; counts drops and depth."""

    def __init__(self, name: str, capacity: int, overflow: Overflow = Overflow.BLOCK) -> None:
        if capacity < 1:
            raise ValueError(f"edge {name!r}: capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self.overflow = overflow
        self._items: collections.deque[Any] = collections.deque()
        self._data_count = 0  # data items queued (end-of-stream items do not count against capacity)
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        #: Frames discarded by DROP_OLDEST (a dropped batch counts all its frames).
        self.dropped = 0
        #: Largest number of data items ever queued at once.
        self.max_depth = 0
        #: Set on every arrival too: lets one consumer wait on many edges (`SourceMux`).
        self.listener: asyncio.Event | None = None

    @property
    def depth(self) -> int:
        return self._data_count

    async def put(self, item: Any) -> None:
        if isinstance(item, EndOfStream):
            self._append(item, counts=False)
            return
        if self.overflow is Overflow.DROP_OLDEST:
            while self._data_count >= self.capacity:
                self._drop_oldest()
        else:
            while self._data_count >= self.capacity:
                self._not_full.clear()
                await self._not_full.wait()
        self._append(item, counts=True)

    def _append(self, item: Any, *, counts: bool) -> None:
        self._items.append(item)
        if counts:
            self._data_count += 1
            self.max_depth = max(self.max_depth, self._data_count)
        self._not_empty.set()
        if self.listener is not None:
            self.listener.set()

    def _drop_oldest(self) -> None:
        for index, queued in enumerate(self._items):
            if not isinstance(queued, EndOfStream):
                del self._items[index]
                self._data_count -= 1
                self.dropped += len(queued.frames) if isinstance(queued, Batch) else 1
                return
        raise AssertionError("edge data count out of step with its contents")  # pragma: no cover

    async def get(self) -> Any:
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        return self._pop()

    def get_nowait(self) -> Any | None:
        """The next item if one is queued, else None (never blocks)."""
        return self._pop() if self._items else None

    def _pop(self) -> Any:
        item = self._items.popleft()
        if not isinstance(item, EndOfStream):
            self._data_count -= 1
            self._not_full.set()
        return item
