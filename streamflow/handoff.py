"""Handing items between stages that run on different CUDA streams, without host syncs.

Protocol (run by the runner, in each stage's worker thread):

1. After a GPU stage produced an item, `mark_ready(item, stream)` records an event on the
   producer's stream; the event completes once every kernel that wrote the item's tensors is done.
2. Before a GPU stage reads the item, `accept_on_stream(item, stream)` makes the consumer's stream
   wait for that event (a device-side wait: the host does not block) and calls
   `Tensor.record_stream(consumer)` on every CUDA tensor of the item. The latter is what prevents
   use-after-free: the caching allocator of the producer's stream will not hand the memory to a new
   allocation until the consumer stream's work queued so far has finished.
3. Before a CPU stage reads the item, `accept_on_host(item)` blocks the stage's own thread (never
   the event loop) on the event: the only place where the host waits for the GPU.
"""

from __future__ import annotations

import torch

from streamflow.frame import Batch, EndOfStream, Frame, Item, iter_tensors

__all__ = ["accept_on_host", "accept_on_stream", "mark_ready"]


def mark_ready(item: Item, stream: torch.cuda.Stream) -> None:
    """Record on `stream` the point after which `item`'s tensors are complete."""
    if isinstance(item, EndOfStream):
        return
    event = torch.cuda.Event()
    event.record(stream)
    item.ready = event
    if isinstance(item, Batch):
        # Frames inside a batch were produced by the same work: one event covers them all.
        for frame in item.frames:
            frame.ready = event


def accept_on_stream(item: Frame | Batch, stream: torch.cuda.Stream) -> None:
    """Order `stream` after the item's producer and keep its tensors alive for `stream`."""
    event = item.ready
    if event is None and isinstance(item, Batch):
        for frame in item.frames:
            if frame.ready is not None:
                stream.wait_event(frame.ready)
    elif event is not None:
        stream.wait_event(event)
    for tensor in iter_tensors(item):
        if tensor.is_cuda:
            tensor.record_stream(stream)


def accept_on_host(item: Frame | Batch) -> None:
    """Block the calling (worker) thread until the item's tensors are complete."""
    event = item.ready
    if event is not None:
        event.synchronize()
    elif isinstance(item, Batch):
        for frame in item.frames:
            if frame.ready is not None:
                frame.ready.synchronize()
