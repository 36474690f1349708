"""The runner's hand-off from the event loop to a stage's thread and back, alone: hand-offs a second.

Every item of every source crosses it at least twice (the source's `generate` step, each stage's
call), so its cost is paid per frame under the GIL. The runner's own `_StageWorker` both ways, in
turns (`--rounds`), on asyncio's loop and on uvloop's where installed: as it was
(`loop.run_in_executor(worker.executor, worker._in_context, fn)`, a concurrent future chained into
an asyncio one) and as it is (`worker.call(fn)`: the thread puts the result on a plain asyncio future
with `call_soon_threadsafe`). `--workers` coroutines each own a worker (a stage with its one-thread
executor) and make `--calls` sequential calls of a function that returns at once.

Usage:
    python benchmarks/handoff.py --workers 16 --calls 3000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from stages.null import NullSink
from streamflow.pipeline import _StageWorker


def _returns(value: int) -> int:
    return value


async def through_run_in_executor(worker: _StageWorker, calls: int) -> None:
    """The hand-off before 2026-11-29's change, on the same worker."""
    loop = asyncio.get_running_loop()
    for index in range(calls):
        await loop.run_in_executor(worker.executor, worker._in_context, _returns, index)


async def through_worker_call(worker: _StageWorker, calls: int) -> None:
    for index in range(calls):
        await worker.call(_returns, index)


Way = Callable[[_StageWorker, int], Coroutine[Any, Any, None]]


def rate(way: Way, workers: int, calls: int, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> float:
    stage_workers = [_StageWorker(NullSink(name=f"sink{i}")) for i in range(workers)]

    async def all_workers() -> None:
        await asyncio.gather(*(way(worker, calls) for worker in stage_workers))

    started = time.perf_counter()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(all_workers())
    elapsed = time.perf_counter() - started
    for worker in stage_workers:
        worker.shutdown()
    return workers * calls / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]] = [("asyncio", None)]
    try:
        import uvloop

        loops.append(("uvloop", uvloop.new_event_loop))
    except ImportError:
        pass
    ways: list[tuple[str, Way]] = [
        ("run_in_executor", through_run_in_executor),
        ("worker.call", through_worker_call),
    ]
    for loop_name, factory in loops:
        for _ in range(args.rounds):
            for way_name, way in ways:
                per_second = rate(way, args.workers, args.calls, factory)
                print(f"{loop_name:<8} {way_name:<16} {per_second:>10,.0f} hand-offs/s ({args.workers} workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
