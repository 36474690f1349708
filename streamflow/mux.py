"""Cross-source batching: the stage after the sources reads many source edges as one input.

Each source feeds its own bounded `Edge`, so a fast or stalled source only fills its own queue.
`SourceMux.take(limit)` gathers items for one call of the next stage, up to `limit` frames,
taking one item from each source in turn (round robin, starting after the source served last),
so no source can starve the others and each source's items keep their order. A source's first
item goes ahead of the round: a source added to a busy pipeline would otherwise wait a whole
round of the others (one call of the next stage each) before its first frames move. With a
`timeout_s`, a batch that is not full waits at most that long after its first item for more
(nvstreammux's push timeout); without one it takes what is queued and goes (lowest latency).

End of stream: a source's driver ends its edge with `SourceEnd`; the mux turns it into an
in-band `EndOfStream(source_id)` for the stages after it, behind that source's last frame, and
after the last source (unless the pipeline stays open for sources added later) one
`EndOfStream()` that ends the run. All of it runs on the event loop and touches items, never
frames one by one.

Example:
    >>> import asyncio
    >>> from streamflow.testing import make_frames
    >>> async def demo():
    ...     mux = SourceMux()
    ...     for name in ("a", "b"):
    ...         edge = Edge(name, capacity=4)
    ...         mux.add(name, edge)
    ...         for frame in make_frames(2, source_id=name):
    ...             await edge.put(frame)
    ...         await edge.put(SourceEnd(name))
    ...     first = await mux.take(3)
    ...     return [f.source_id for f in first], await mux.take(3), await mux.take(3)
    >>> asyncio.run(demo())[0]
    ['a', 'b', 'a']
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass

from streamflow.edge import Edge
from streamflow.frame import Batch, EndOfStream, Frame

__all__ = ["SourceEnd", "SourceMux"]


@dataclass(frozen=True, slots=True)
class SourceEnd(EndOfStream):
    """The last item a source's driver puts on its edge (also after a failure or removal)."""


class SourceMux:
    """Many source edges read as one input; see the module docstring."""

    def __init__(self, *, timeout_s: float | None = None, end_when_empty: bool = True) -> None:
        self.timeout_s = timeout_s
        #: False while the pipeline waits for sources added at run time (`Pipeline(stay_open=True)`).
        self.end_when_empty = end_when_empty
        #: Reason carried by the final `EndOfStream` (the runner sets it when stopped).
        self.final_reason = "finished"
        self._order: list[tuple[str, Edge]] = []  # (source id, its edge), in round-robin order
        self._cursor = 0
        self._fresh: list[tuple[str, Edge]] = []  # sources none of whose items was taken yet, oldest first
        self._arrived = asyncio.Event()
        self._pending: collections.deque[EndOfStream] = collections.deque()
        self._ended = False

    def add(self, source_id: str, edge: Edge) -> None:
        """Read `edge` from now on. An id may come back (removed, then added again) while its old
        edge still drains: each edge is its own input until its `SourceEnd`."""
        edge.listener = self._arrived
        if all(known != source_id for known, _ in self._order):
            # (An id added again while its old edge drains waits for that edge to end, see `_sweep`.)
            self._fresh.append((source_id, edge))
        self._order.append((source_id, edge))
        self._arrived.set()

    def wake(self) -> None:
        """Re-check the end condition (after `end_when_empty` changed)."""
        self._arrived.set()

    async def take(self, limit: int) -> list[Frame | Batch] | EndOfStream:
        """Items for one call (at most `limit` frames, at least one item), or the next end of stream."""
        if self._pending:
            return self._pending.popleft()
        items: list[Frame | Batch] = []
        count = 0
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before the sweep: an arrival while we wait below sets it again, none is missed.
            self._arrived.clear()
            count = self._sweep(items, count, limit)
            if self._pending:
                return items or self._pending.popleft()
            if items and (count >= limit or not self.timeout_s):
                return items
            if not items and not self._order and self.end_when_empty:
                if self._ended:
                    raise RuntimeError("take() after the final end of stream")
                self._ended = True
                return EndOfStream(reason=self.final_reason)
            if not items:
                await self._arrived.wait()
                continue
            if deadline is None:
                deadline = loop.time() + (self.timeout_s or 0.0)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return items
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _sweep(self, items: list[Frame | Batch], count: int, limit: int) -> int:
        """First items of new sources, then round robin over the sources until `limit` frames, no
        more queued, or an end of stream."""
        for entry in list(self._fresh) if self._fresh else ():
            if count >= limit:
                return count
            item = entry[1].get_nowait()
            if item is None:
                continue
            self._fresh.remove(entry)
            position = self._order.index(entry)
            if isinstance(item, EndOfStream):
                self._end(position, item)
                return count
            items.append(item)
            count += len(item.frames)
        progress = True
        while progress and count < limit and not self._pending:
            progress = False
            start = self._cursor % len(self._order) if self._order else 0
            # An id added again is read only once its previous edge has ended: per-source state
            # downstream (windows, open files) must never see two generations of one id interleaved.
            oldest = {source_id: position for position, (source_id, _) in reversed(list(enumerate(self._order)))}
            for position in [*range(start, len(self._order)), *range(start)]:
                if count >= limit:
                    break
                source_id, edge = self._order[position]
                if oldest[source_id] != position:
                    continue
                item = edge.get_nowait()
                if item is None:
                    continue
                progress = True
                self._cursor = position + 1
                if isinstance(item, EndOfStream):
                    # Stop here: this source's later items must not overtake its end of stream.
                    self._end(position, item)
                    return count
                items.append(item)
                count += len(item.frames)
        return count

    def _end(self, position: int, item: EndOfStream) -> None:
        if isinstance(item, SourceEnd):
            source_id, _ = self._order.pop(position)
            if position < self._cursor:
                self._cursor -= 1
            self._pending.append(EndOfStream(source_id=source_id, reason=item.reason))
        else:  # an end of stream a source emitted in band is passed on as it is
            self._pending.append(item)
