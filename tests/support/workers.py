"""Small objects for the worker-process backend's tests (`streamflow.cluster.processes`): they run
in child processes, so they live in an importable module."""

from __future__ import annotations

import os
import threading
import time


class Echo:
    """Answers calls; `slow` sleeps in its call thread, so other calls must still be answered."""

    def __init__(self, name: str, *, fail: bool = False) -> None:
        if fail:
            raise ValueError(f"{name} refused to start")
        self.name = name
        self.finished = threading.Event()

    def ready(self) -> dict[str, object]:
        return {"pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def echo(self, value: object) -> object:
        return value

    def slow(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    def lookup(self, key: str) -> str:
        raise KeyError(key)

    def finish(self, timeout_s: float) -> None:
        self.finished.set()
