"""Small stages used by the core tests (a YAML config names them `support.stages:Name`; tests/ is on the path)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import torch

from streamflow import Batch, Frame, Source, Stage, StageConfig
from streamflow.frame import Item


class CountingSource(Source):
    """Frames 0..count-1 (count=0: until stopped), `interval` seconds apart."""

    class Config(StageConfig):
        count: int = 10
        interval: float = 0.0
        size: int = 4

    def generate(self) -> Iterator[Item]:
        index = 0
        while (self.config.count == 0 or index < self.config.count) and not self.stopping.is_set():
            if self.config.interval:
                time.sleep(self.config.interval)
            yield Frame(
                torch.full((3, self.config.size, self.config.size), index % 256, dtype=torch.uint8),
                pts=index,
                time_base=Fraction(1, 30),
                source_id=self.name,
                index=index,
            )
            index += 1


class LinesSink(Stage):
    """Writes one JSON line per frame and a closing line at teardown: a file that is only
    complete if teardown ran."""

    class Config(StageConfig):
        path: Path
        delay: float = 0.0
        flush_delay: float = 0.0  # a sink that still has work after the last frame (an encoder's lookahead)

    def setup(self) -> None:
        self.file = self.config.path.open("w")

    def flush(self) -> None:
        if self.config.flush_delay:
            time.sleep(self.config.flush_delay)

    def process(self, item: Frame | Batch) -> None:
        if self.config.delay:
            time.sleep(self.config.delay)
        for frame in item.frames:
            self.file.write(json.dumps({"index": frame.index}) + "\n")
        self.file.flush()

    def teardown(self) -> None:
        self.file.write(json.dumps({"end": True}) + "\n")
        self.file.close()


class FailOn(Stage):
    """Raises `KeyError` on the frame with index `index`; passes the others on."""

    class Config(StageConfig):
        index: int = 3

    def process(self, item: Frame | Batch) -> Frame | Batch:
        for frame in item.frames:
            if frame.index == self.config.index:
                raise KeyError(f"frame {frame.index} is bad")
        return item


class Tracker(Stage):
    """Records in-flight counts between a source (`emitted`) and itself."""

    def __init__(self, source: Source, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.source = source
        self.consumed = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def process(self, item: Frame | Batch) -> None:
        emitted = getattr(self.source, "emitted", 0)
        self.max_in_flight = max(self.max_in_flight, emitted - self.consumed)
        time.sleep(0.005)
        self.consumed += len(item.frames)


class StaggeredSetup(Stage):
    """For worker-process tests: the first process to set this stage up takes no time, each later one
    `delay` seconds more. Into `folder` it writes the wall-clock time its setup ended
    (`set-up-N`) and the time it saw its first frame (`first-frame-N`), N its place in that order."""

    class Config(StageConfig):
        folder: Path
        delay: float = 2.0

    def setup(self) -> None:
        self.slot = 0
        while True:  # claim the next free place; O_EXCL makes that atomic between processes
            try:
                os.close(os.open(self.config.folder / f"slot-{self.slot}", os.O_CREAT | os.O_EXCL))
                break
            except FileExistsError:
                self.slot += 1
        time.sleep(self.slot * self.config.delay)
        self.seen_frame = False
        (self.config.folder / f"set-up-{self.slot}").write_text(repr(time.time()))

    def process(self, item: Frame | Batch) -> Frame | Batch:
        if not self.seen_frame:
            self.seen_frame = True
            (self.config.folder / f"first-frame-{self.slot}").write_text(repr(time.time()))
        return item
