"""Stages that misbehave on purpose, for the fault tests (importable as `support.fault_stages:Name` with
tests/ on the path)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from streamflow import Batch, Frame, Stage, StageConfig


class BlockOn(Stage):
    """Passes frames on; on frame `index` blocks (or spins) for `seconds`, or forever."""

    class Config(StageConfig):
        index: int = 5
        seconds: float | None = None  # None: never return
        spin: bool = False
        marker: str | None = None  # a file created when the block starts (tests wait for it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()  # set by an in-process test to end the block
        self.returned = False

    def process(self, item: Frame | Batch) -> Frame | Batch:
        if any(frame.index == self.config.index for frame in item.frames):
            if self.config.marker:
                Path(self.config.marker).touch()
            deadline = None if self.config.seconds is None else time.monotonic() + self.config.seconds
            if self.config.spin:
                while (deadline is None or time.monotonic() < deadline) and not self.release.is_set():
                    pass
            else:
                self.release.wait(self.config.seconds)
            self.returned = True
        return item


class ReturnsNone(Stage):
    """Forgets `return item`."""

    def process(self, item: Frame | Batch) -> None:
        for frame in item.frames:
            frame.results["seen"] = True


class Returns(Stage):
    """Returns a value that is not an item."""

    class Config(StageConfig):
        value: str = "text"  # text | dict | int

    def process(self, item: Frame | Batch) -> Any:
        return {"text": "frames", "dict": {"frames": item.frames}, "int": 3}[self.config.value]


class Exits(Stage):
    """Calls sys.exit(code) on the first frame."""

    class Config(StageConfig):
        code: int = 3

    def process(self, item: Frame | Batch) -> None:
        sys.exit(self.config.code)
