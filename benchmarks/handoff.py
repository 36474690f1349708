"""The runner's hand-off from the event loop to a stage's thread and back, alone: hand-offs a second.

Every item of every source crosses it at least twice (the source's `generate` step, each stage's
call), so its cost is paid per frame under the GIL. Two ways side by side, in turns (`--rounds`),
on asyncio's loop and on uvloop's where installed: `loop.run_in_executor` (a concurrent future
chained into an asyncio one) and what `streamflow.pipeline._StageWorker.call` does (the thread puts
the result on a plain asyncio future with `call_soon_threadsafe`). `--workers` coroutines each own a
one-thread executor, as the stages do, and make `--calls` sequential calls of a function that
returns at once.

Usage:
    python benchmarks/handoff.py --workers 16 --calls 3000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _returns(value: int) -> int:
    return value


def _settle(future: asyncio.Future[int], result: int) -> None:
    if not future.done():
        future.set_result(result)


async def through_run_in_executor(executor: ThreadPoolExecutor, calls: int) -> None:
    loop = asyncio.get_running_loop()
    for index in range(calls):
        await loop.run_in_executor(executor, _returns, index)


async def through_call_soon_threadsafe(executor: ThreadPoolExecutor, calls: int) -> None:
    loop = asyncio.get_running_loop()

    def job(done: asyncio.Future[int], index: int) -> None:
        loop.call_soon_threadsafe(_settle, done, _returns(index))

    for index in range(calls):
        done: asyncio.Future[int] = loop.create_future()
        executor.submit(job, done, index)
        await done


Way = Callable[[ThreadPoolExecutor, int], Coroutine[Any, Any, None]]


def rate(way: Way, workers: int, calls: int, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> float:
    executors = [ThreadPoolExecutor(1) for _ in range(workers)]

    async def all_workers() -> None:
        await asyncio.gather(*(way(executor, calls) for executor in executors))

    started = time.perf_counter()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(all_workers())
    elapsed = time.perf_counter() - started
    for executor in executors:
        executor.shutdown()
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
        ("call_soon_threadsafe", through_call_soon_threadsafe),
    ]
    for loop_name, factory in loops:
        for _ in range(args.rounds):
            for way_name, way in ways:
                per_second = rate(way, args.workers, args.calls, factory)
                print(f"{loop_name:<8} {way_name:<21} {per_second:>10,.0f} hand-offs/s ({args.workers} workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
