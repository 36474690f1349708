"""Helpers for testing stages and pipelines, shipped with the package so plugins can use them too.

Example:
    >>> from fractions import Fraction
    >>> import torch
    >>> from streamflow import Stage
    >>> class Double(Stage):
    ...     def process(self, item):
    ...         for frame in item.frames:
    ...             frame.image = frame.image * 2
    ...         return item
    >>> out = run_stage(Double(), make_frames(2))
    >>> [int(f.image.max()) for f in out]
    [0, 2]
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import torch

from streamflow.frame import Batch, EndOfStream, Frame, Item, PixelFormat
from streamflow.pipeline import Pipeline
from streamflow.stage import DeviceSpec, Source, Stage, StageConfig

__all__ = ["ListSink", "ListSource", "RaiseError", "make_frames", "run_stage"]


@dataclass(frozen=True, slots=True)
class RaiseError:
    """Put this in a `ListSource`'s items to make the source raise `error` at that point."""

    error: BaseException


class ListSource(Source):
    """Emits the given items in order, then ends. `RaiseError(e)` raises `e`; an `EndOfStream`
    item is passed through in band. `interval` (seconds) paces the items like a live source."""

    class Config(StageConfig):
        interval: float = 0.0

    def __init__(self, items: Sequence[Item | RaiseError] = (), *, live: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.items = list(items)
        self.live = live  # per instance: tests use both behaviours
        self.emitted = 0

    def generate(self) -> Iterator[Item]:
        for item in self.items:
            if self.stopping.is_set():
                return
            if isinstance(item, RaiseError):
                raise item.error
            if self.config.interval:
                time.sleep(self.config.interval)
            if self.live:
                for frame in item.frames if not isinstance(item, EndOfStream) else ():
                    frame.arrival_time = time.time()
            self.emitted += 1
            yield item


class ListSink(Stage):
    """Keeps everything it receives (`items`, and `frames` flattened); `delay` slows it down."""

    class Config(StageConfig):
        delay: float = 0.0

    is_sink: ClassVar[bool] = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.items: list[Frame | Batch] = []
        self.flushed = False
        self.torn_down = False

    def process(self, item: Frame | Batch) -> None:
        if self.config.delay:
            time.sleep(self.config.delay)
        self.items.append(item)

    def flush(self) -> None:
        self.flushed = True

    def teardown(self) -> None:
        self.torn_down = True

    @property
    def frames(self) -> list[Frame]:
        return [frame for item in self.items for frame in item.frames]


def make_frames(
    count: int,
    *,
    height: int = 4,
    width: int = 4,
    source_id: str = "0",
    device: str | torch.device = "cpu",
    fps: int = 30,
) -> list[Frame]:
    """`count` RGB frames whose pixels all equal their index (mod 256), pts = index."""
    return [
        Frame(
            image=torch.full((3, height, width), i % 256, dtype=torch.uint8, device=device),
            pts=i,
            time_base=Fraction(1, fps),
            source_id=source_id,
            index=i,
            format=PixelFormat.RGB,
        )
        for i in range(count)
    ]


def run_stage(stage: Stage, items: Sequence[Item | RaiseError], *, device: DeviceSpec = "cpu") -> list[Frame | Batch]:
    """Run one stage through the real runner on `items`; return all it emitted (flush included)."""
    sink = ListSink(name="_test_sink")
    Pipeline([ListSource(items, name="_test_source"), stage, sink], device=device).run_sync()
    return [item for item in sink.items if not isinstance(item, EndOfStream)]
