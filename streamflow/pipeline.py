"""The pipeline and its runner.

`Pipeline([source, stage, ..., sink])` validates the graph when it is built (unique names, a source
first, no source later), allocates nothing, and runs with `await pipeline.run()` or
`pipeline.run_sync()`.

How a run works:
- Each stage gets one worker thread (all its hooks run there, in order) and, when it runs on a GPU,
  its own CUDA stream, current in that thread while a hook runs. Every edge is an `Edge` with a
  capacity and an overflow policy.
- One asyncio task per stage, all owned by a TaskGroup, moves items: take from the input edge,
  hand the item to the stage's thread, put what comes back on the output edge. The event loop
  only moves references; it never waits on a device or on I/O.
- End of stream travels in band behind the last frame; each stage runs `flush()` when it arrives
  and passes it on.
- An exception in any stage cancels the others and leaves `run()` as itself, with a note naming
  the stage (and `exc.stage_name`). `teardown()` runs for every stage that was set up, always.
- `stop()` (and SIGINT/SIGTERM under `run_sync(handle_signals=True)` or the CLI) makes the source
  stop producing; what is in flight drains, every stage flushes and tears down, outputs are final.
- A second SIGINT/SIGTERM (or `stop_timeout_s` after a stop) abandons stages still inside a hook:
  the others tear down, `RunStats.unfinished` names the abandoned ones (their threads live on, so a
  process should then end with `os._exit`). `watchdog_s` warns once about a long hook call.
- Before anything starts, `preflight()` checks devices and files (`streamflow.preflight`). After a
  source ran to its end, `Source.frame_shortfall()` says whether frames were lost: one warning in
  `RunStats.warnings`, or `FrameLossError` with `strict_frames`.

Example:
    >>> from streamflow.testing import ListSink, ListSource
    >>> from streamflow.frame import Frame
    >>> from fractions import Fraction
    >>> import torch
    >>> frames = [Frame(torch.zeros(3, 2, 2, dtype=torch.uint8), i, Fraction(1, 30), index=i) for i in range(3)]
    >>> sink = ListSink()
    >>> stats = Pipeline([ListSource(frames), sink], device="cpu").run_sync()
    >>> [f.index for f in sink.frames]
    [0, 1, 2]
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from streamflow.edge import Edge
from streamflow.frame import Batch, EndOfStream, Frame, Item
from streamflow.handoff import accept_on_host, accept_on_stream, mark_ready
from streamflow.observers import Observer, RunStats, StatsCollector
from streamflow.preflight import PreflightError, check_pipeline_files
from streamflow.stage import DeviceSpec, Overflow, Source, Stage, StageOutput, resolve_device

__all__ = ["FrameLossError", "Pipeline", "PipelineError", "StageContractError"]

log = logging.getLogger("streamflow.pipeline")
#: After stop() (a signal, an error), how long the runner waits for stages to drain and finalize
#: before it abandons the ones still inside a hook. Off by default: finalizing a long encode can
#: legitimately take long, and abandoning it would lose the output; a second signal always abandons.
DEFAULT_STOP_TIMEOUT_S: float | None = None
_MONITOR_PERIOD_S = 0.1
T = TypeVar("T")


class FrameLossError(RuntimeError):
    """Strict frame accounting: a source delivered fewer frames than its container states."""


class PipelineError(ValueError):
    """The pipeline graph is invalid (raised when it is built, before anything runs)."""


_ALLOWED_OUTPUT = "a Frame, a Batch, EndOfStream, a list or other iterable of them, or None"


class StageContractError(TypeError):
    """A stage broke the contract (returned something that isn't an item, called sys.exit...)."""


def _shown(value: object) -> str:
    text = " ".join(repr(value).split())  # one line, also for tensors inside
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _as_items(output: StageOutput, stage: Stage, hook: str) -> list[Frame | Batch | EndOfStream]:
    if output is None:
        return []
    if isinstance(output, Frame | Batch | EndOfStream):
        return [output]
    where = f"stage {stage.name!r} ({type(stage).__name__}): {hook}() returned"
    # Strings, bytes and mappings are iterable, but their characters or keys are never items.
    if isinstance(output, str | bytes | Mapping) or not isinstance(output, Iterable):
        raise StageContractError(f"{where} {_shown(output)}; allowed: {_ALLOWED_OUTPUT}")
    items = list(output)
    for item in items:
        if not isinstance(item, Frame | Batch | EndOfStream):
            raise StageContractError(f"{where} an iterable holding {_shown(item)}; allowed: {_ALLOWED_OUTPUT}")
    return items


def _frames_of(items: Iterable[Item]) -> list[Frame]:
    frames: list[Frame] = []
    for item in items:
        if isinstance(item, Frame):
            frames.append(item)
        elif isinstance(item, Batch):
            frames.extend(item.frames)
    return frames


def _merge(items: list[Frame | Batch]) -> Frame | Batch:
    """Gather items into one batch. A lone batch passes as is; stacked `data` is concatenated."""
    if len(items) == 1 and isinstance(items[0], Batch):
        return items[0]
    frames = _frames_of(items)
    datas = [item.data for item in items if isinstance(item, Batch)]
    data = None
    if datas and len(datas) == len(items) and all(d is not None for d in datas):
        data = torch.cat([d for d in datas if d is not None])
    return Batch(frames=frames, data=data)


class _StageWorker:
    """Runs one stage's hooks in its own thread, with its CUDA stream and the hand-off protocol."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"streamflow-{stage.name}")
        self.set_up = False
        #: The hook running in the stage's thread now and since when (perf_counter), for the
        #: watchdog and for naming a stage that never returns.
        self.busy_hook: str | None = None
        self.busy_since: float | None = None
        self.watchdog_warned = False
        #: process() calls that returned None, and items passed on by any hook.
        self.none_returns = 0
        self.items_out = 0
        self.last_output_was_none = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._in_context, fn, *args)

    def _in_context(self, fn: Callable[..., T], *args: Any) -> T:
        self.busy_hook = getattr(fn, "__name__", "hook")
        self.watchdog_warned = False
        self.busy_since = time.perf_counter()
        try:
            stream = self.stage.stream
            if stream is None:
                return fn(*args)
            with torch.cuda.stream(stream):
                return fn(*args)
        except SystemExit as exit_:
            # sys.exit() in a worker thread would end the run with that code and no word; it is an
            # error of the stage, reported like any other.
            raise StageContractError(
                f"stage {self.stage.name!r} ({type(self.stage).__name__}) called sys.exit({exit_.code!r}); "
                "a stage must raise an exception instead"
            ) from None
        finally:
            self.busy_since = None
            self.busy_hook = None

    # The bodies below run in the worker thread.
    def process(self, item: Frame | Batch) -> tuple[list[Item], float]:
        stage = self.stage
        if stage.stream is not None:
            accept_on_stream(item, stage.stream)
        else:
            accept_on_host(item)
        outputs, busy = self._timed(stage.process, item)
        if not outputs and self.last_output_was_none:
            self.none_returns += 1
        return outputs, busy

    def flush(self) -> tuple[list[Item], float]:
        return self._timed(self.stage.flush)

    def end_source(self, source_id: str) -> tuple[list[Item], float]:
        return self._timed(self.stage.end_source, source_id)

    def _timed(self, hook: Callable[..., StageOutput], *args: Any) -> tuple[list[Item], float]:
        started = time.perf_counter()
        output = hook(*args)
        self.last_output_was_none = output is None
        outputs = _as_items(output, self.stage, getattr(hook, "__name__", "hook"))
        busy = time.perf_counter() - started
        self.items_out += len(outputs)
        self._finish(outputs)
        return outputs, busy

    def next_from(self, generator: Iterator[Item]) -> tuple[Item | None, float]:
        started = time.perf_counter()
        item = next(generator, None)
        busy = time.perf_counter() - started
        if item is not None:
            self._finish([item])
        return item, busy

    def _finish(self, outputs: list[Item]) -> None:
        now = time.perf_counter()
        for item in outputs:
            if self.stage.stream is not None:
                mark_ready(item, self.stage.stream)
            for frame in _frames_of([item]):
                frame.timestamps[self.stage.name] = now


class Pipeline:
    """A linear chain of stages: one source, then stages that transform, then (usually) sinks.

    `queue_size` is the default capacity of every edge; a stage's own `queue_size`/`overflow`
    override it for its input edge. The edge after a live source (`live = True` on the source's
    class) defaults to `drop_oldest`. `max_frames` stops the source after that many frames.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        name: str = "pipeline",
        device: DeviceSpec = "auto",
        queue_size: int = 4,
        overflow: Overflow | str | None = None,
        observers: Sequence[Observer] = (),
        max_frames: int | None = None,
        watchdog_s: float | None = None,
        stop_timeout_s: float | None = DEFAULT_STOP_TIMEOUT_S,
        strict_frames: bool = False,
    ) -> None:
        if not stages:
            raise PipelineError("a pipeline needs at least one stage")
        if queue_size < 1:
            raise PipelineError(f"queue_size must be >= 1, got {queue_size}")
        if max_frames is not None and max_frames < 1:
            raise PipelineError(f"max_frames must be >= 1, got {max_frames}")
        names = [stage.name for stage in stages]
        duplicates = sorted(name for name, count in collections.Counter(names).items() if count > 1)
        if duplicates:
            raise PipelineError(f"stage names must be unique; repeated: {', '.join(duplicates)}")
        if not isinstance(stages[0], Source):
            raise PipelineError(f"the first stage must be a source; {stages[0].name!r} is {type(stages[0]).__name__}")
        for stage in stages[1:]:
            if isinstance(stage, Source):
                raise PipelineError(f"stage {stage.name!r} is a source and can only be first")
        self.stages = list(stages)
        self.name = name
        self.device_spec = device
        self.queue_size = queue_size
        self.overflow = Overflow(overflow) if overflow is not None else None
        self.observers = list(observers)
        self.max_frames = max_frames
        self.collector = StatsCollector(name)
        self.edges: dict[str, Edge] = {}
        self._stop_reason: str | None = None
        self._stop_event = threading.Event()
        #: Files the pipeline reads besides its stages' own (the config file): outputs may not overwrite them.
        self.input_files: list[str] = []
        #: (owner, path) of files written besides the stages' own (a statistics file), checked alike.
        self.output_files: list[tuple[str, str]] = []
        #: Default of every stage's `watchdog_s`: warn once when one hook call runs longer than this.
        self.watchdog_s = watchdog_s
        self.stop_timeout_s = stop_timeout_s
        #: A source that delivered fewer frames than its container states fails the run (else: a warning).
        self.strict_frames = strict_frames
        self._frame_loss: str | None = None
        #: Names of stages abandoned inside a hook. Their threads still run: a process that had
        #: any should end with `os._exit()` (the CLI does), as interpreter exit would wait for them.
        self.unfinished: list[str] = []
        self._stop_requested_at: float | None = None
        self._abandoned: str | None = None
        self._abandon_event: asyncio.Event | None = None
        self._body: asyncio.Task[None] | None = None
        self._workers: list[_StageWorker] = []

    # -- control ------------------------------------------------------------------------------
    def stop(self, reason: str = "stop()") -> None:
        """Stop taking input; everything in flight is drained and flushed. Safe from any thread."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._stop_requested_at is None:
            self._stop_requested_at = time.perf_counter()
        self._stop_event.set()
        for stage in self.stages:
            stage.stopping.set()

    def preflight(self, *, create_folders: bool = True) -> None:
        """Cheap checks before anything starts: devices, inputs, outputs (`streamflow.preflight`)."""
        try:
            resolve_device(self.device_spec)
        except ValueError as error:
            raise PreflightError(f"pipeline: {error}") from None
        check_pipeline_files(
            self.stages,
            extra_inputs=self.input_files,
            extra_outputs=self.output_files,
            create_folders=create_folders,
        )

    def snapshot(self) -> RunStats:
        """Live figures while running (used by progress displays)."""
        return self.collector.snapshot()

    # -- running ------------------------------------------------------------------------------
    def run_sync(self, *, handle_signals: bool = False) -> RunStats:
        """Run to completion on a fresh event loop (uvloop when installed)."""
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # uvloop is optional: the standard loop works, a little slower
            loop_factory = None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(self.run(handle_signals=handle_signals))

    async def run(self, *, handle_signals: bool = False) -> RunStats:
        """Run until end of stream, `stop()`, or an error (re-raised as itself)."""
        self.preflight()
        self._prepare()
        workers = [_StageWorker(stage) for stage in self.stages]
        self._workers = workers
        loop = asyncio.get_running_loop()
        self.unfinished = []
        self._frame_loss = None
        self._abandoned = None
        self._abandon_event = asyncio.Event()
        installed: list[int] = []
        if handle_signals:
            installed = self._install_signal_handlers(loop)
        failed = False
        # The monitor (watchdog, stop timeout) is owned here: cancelled and awaited in `finally`.
        monitor = asyncio.create_task(self._monitor(workers), name="streamflow:monitor")
        self._body = asyncio.create_task(self._run_stages(workers), name="streamflow:stages")
        try:
            try:
                await self._body
            except asyncio.CancelledError:
                if self._abandoned is None:
                    raise
                # Abandoned (second signal, stop timeout): finalize what the other stages wrote.
        except BaseException:
            failed = True
            # Cancelled from outside, say: stages stop taking input, and the stop timeout (if any)
            # bounds the teardown below.
            self.stop(reason="cancelled")
            raise
        finally:
            teardown_error = await self._teardown_all(workers)
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
            for sig in installed:
                loop.remove_signal_handler(sig)
            stats = self.collector.snapshot()
            stats.stopped_by = self._stop_reason
            stats.unfinished = list(self.unfinished)
            stats.warnings.extend(self._unfinished_warnings(workers))
            if self._frame_loss is not None:
                stats.warnings.append(self._frame_loss)
            for line in stats.warnings:
                log.warning("%s", line)
            for observer in self.observers:
                try:
                    observer.on_end(stats)
                except Exception as error:  # an observer must not hide the run's own outcome
                    log.error("observer %r failed in on_end: %s", observer, error)
            if teardown_error is not None and not failed:
                raise teardown_error
        if self._frame_loss is not None and self.strict_frames:
            raise FrameLossError(f"{self._frame_loss} (strict frame accounting)")
        return stats

    async def _run_stages(self, workers: list[_StageWorker]) -> None:
        await self._setup_all(workers)
        for observer in self._all_observers():
            observer.on_start(self.stages, self.edges)
        try:
            async with asyncio.TaskGroup() as group:
                for index, worker in enumerate(workers):
                    group.create_task(self._drive(index, worker), name=f"stage:{worker.stage.name}")
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None

    def _abandon(self, why: str) -> None:
        """Stop waiting for stages: cancel their tasks; a hook still running in a thread is left behind."""
        if self._abandoned is not None:
            return
        self._abandoned = why
        busy = [f"{w.stage.name!r}" for w in self._workers_busy()]
        log.warning("%s: abandoning %s", why, ", ".join(busy) or "the run")
        if self._abandon_event is not None:
            self._abandon_event.set()
        if self._body is not None:
            self._body.cancel()

    def _workers_busy(self) -> list[_StageWorker]:
        return [w for w in self._workers if w.busy_since is not None]

    def _unfinished_warnings(self, workers: list[_StageWorker]) -> list[str]:
        by_name = {w.stage.name: w for w in workers}
        lines = []
        for name in self.unfinished:
            worker = by_name[name]
            hook = {"next_from": "generate"}.get(worker.busy_hook or "", worker.busy_hook or "a hook")
            busy = time.perf_counter() - worker.busy_since if worker.busy_since is not None else 0.0
            lines.append(
                f"stage {name!r} ({type(worker.stage).__name__}) did not return from {hook}() "
                f"(busy for {busy:.1f} s); abandoned after {self._abandoned}, other stages finalized"
            )
        return lines

    async def _monitor(self, workers: list[_StageWorker]) -> None:
        """Watchdog warnings for long hook calls; abandon the run when the stop timeout passes."""
        while True:
            await asyncio.sleep(_MONITOR_PERIOD_S)
            now = time.perf_counter()
            for worker in workers:
                limit = worker.stage.watchdog_s if worker.stage.watchdog_s is not None else self.watchdog_s
                since = worker.busy_since
                if limit is None or since is None or worker.watchdog_warned or now - since <= limit:
                    continue
                worker.watchdog_warned = True
                hook = {"next_from": "generate"}.get(worker.busy_hook or "", worker.busy_hook)
                log.warning(
                    "watchdog: stage %r (%s) has been busy in one %s() call for more than %g s",
                    worker.stage.name,
                    type(worker.stage).__name__,
                    hook,
                    limit,
                )
            requested = self._stop_requested_at
            if self.stop_timeout_s is not None and requested is not None and now - requested > self.stop_timeout_s:
                self._abandon(f"stop timeout ({self.stop_timeout_s:g} s)")

    def _all_observers(self) -> list[Observer]:
        return [self.collector, *self.observers]

    def _prepare(self) -> None:
        pipeline_device = resolve_device(self.device_spec)
        self.edges = {}
        previous: Stage | None = None
        for stage in self.stages:
            stage.device = (
                resolve_device(stage.device_spec) if stage.device_spec not in (None, "auto") else pipeline_device
            )
            stage.stream = (
                torch.cuda.Stream(device=stage.device) if stage.uses_gpu and stage.device.type == "cuda" else None
            )
            stage.stopping.clear()
            stage.counters.clear()
            if previous is not None:
                overflow = stage.overflow or self.overflow
                if overflow is None:
                    live = isinstance(previous, Source) and previous.live
                    overflow = Overflow.DROP_OLDEST if live else stage.default_overflow
                capacity = stage.queue_size or self.queue_size
                self.edges[stage.name] = Edge(f"{previous.name}->{stage.name}", capacity, overflow)
            previous = stage

    async def _setup_all(self, workers: list[_StageWorker]) -> None:
        # Stages set up one after another, each in its own thread, so a model load that fails
        # leaves nothing half-started behind it and errors name the right stage.
        for worker in workers:
            try:
                await worker.call(worker.stage.setup)
            except Exception as error:
                raise _annotate(error, worker.stage) from None
            worker.set_up = True

    async def _teardown_all(self, workers: list[_StageWorker]) -> BaseException | None:
        """Tear down every stage that was set up; return the first failure (after trying all)."""
        first_error: BaseException | None = None
        for worker in workers:
            if worker.set_up:
                if self._abandoned is not None and worker.busy_since is not None:
                    # Its thread is inside a hook: a teardown queued behind it would wait forever.
                    self.unfinished.append(worker.stage.name)
                    worker.executor.shutdown(wait=False)
                    continue
                try:
                    if self._abandoned is None:
                        await self._unless_abandoned(worker.call(worker.stage.teardown))
                    else:  # abandoned already, but this stage's thread is free: its teardown runs
                        await asyncio.shield(worker.call(worker.stage.teardown))
                except _Abandoned:
                    self.unfinished.append(worker.stage.name)
                except Exception as error:
                    log.error("teardown of stage %r failed: %s", worker.stage.name, error)
                    first_error = first_error or _annotate(error, worker.stage)
                worker.set_up = False
            worker.executor.shutdown(wait=False)
        return first_error

    async def _unless_abandoned(self, call: Awaitable[T]) -> T:
        """Await `call` (shielded from cancellation) unless the run is abandoned first."""
        task = asyncio.ensure_future(call)
        assert self._abandon_event is not None
        abandoned = asyncio.ensure_future(self._abandon_event.wait())
        try:
            await asyncio.wait({task, abandoned}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abandoned.cancel()
        if task.done():
            return task.result()
        raise _Abandoned

    async def _drive(self, index: int, worker: _StageWorker) -> None:
        stage = worker.stage
        output = self.edges.get(self.stages[index + 1].name) if index + 1 < len(self.stages) else None
        try:
            if isinstance(stage, Source):
                await self._drive_source(stage, worker, output)
            else:
                await self._drive_stage(stage, worker, self.edges[stage.name], output)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.stop(reason=self._stop_reason or "error")
            raise _annotate(error, stage) from None

    async def _emit(self, stage: Stage, items: list[Item], output: Edge | None) -> None:
        if output is None:
            return
        for item in items:
            await output.put(item)

    def _notify(self, stage: Stage, frames_in: list[Frame], outputs: list[Item], busy: float) -> None:
        frames_out = _frames_of(outputs)
        for observer in self._all_observers():
            observer.on_processed(stage, frames_in, frames_out, busy)

    async def _drive_source(self, stage: Source, worker: _StageWorker, output: Edge | None) -> None:
        generator = await worker.call(stage.generate)
        produced = 0
        try:
            while not self._stop_event.is_set():
                item, busy = await worker.call(worker.next_from, generator)
                if item is None:
                    # Ran to its end: did everything the container promised come out?
                    self._frame_loss = stage.frame_shortfall(produced)
                    break
                if isinstance(item, EndOfStream):
                    await self._emit(stage, [item], output)
                    continue
                if self.max_frames is not None and isinstance(item, Batch):
                    item.frames = item.frames[: self.max_frames - produced]
                    if item.data is not None:
                        item.data = item.data[: len(item.frames)]
                produced += len(item.frames)
                self._notify(stage, [], [item], busy)
                await self._emit(stage, [item], output)
                if self.max_frames is not None and produced >= self.max_frames:
                    break
        finally:
            close = getattr(generator, "close", None)
            if close is not None:
                await worker.call(close)
        await self._emit(stage, [EndOfStream(reason=self._stop_reason or "finished")], output)

    async def _drive_stage(self, stage: Stage, worker: _StageWorker, inbox: Edge, output: Edge | None) -> None:
        pending: Item | None = None
        while True:
            item = pending if pending is not None else await inbox.get()
            pending = None
            if isinstance(item, EndOfStream):
                if item.source_id is not None:  # one source ended; others may go on
                    outputs, busy = await worker.call(worker.end_source, item.source_id)
                    self._notify(stage, [], outputs, busy)
                    await self._emit(stage, [*outputs, item], output)
                    continue
                outputs, busy = await worker.call(worker.flush)
                if output is not None and not stage.is_sink and worker.items_out == 0 and worker.none_returns:
                    raise StageContractError(
                        f"stage {stage.name!r} ({type(stage).__name__}): process() returned None for all "
                        f"{worker.none_returns} items it got, so nothing reached the stages after it; return the "
                        "item to pass it on, [] to drop it on purpose, or set is_sink = True on a sink"
                    )
                self._notify(stage, [], outputs, busy)
                await self._emit(stage, [*outputs, item], output)
                return
            if stage.batch_size > 1:
                gathered = [item]
                count = len(item.frames)
                # Greedy gathering: take what is already queued, never wait for a full batch, so
                # latency stays low when the producer is the bottleneck.
                while count < stage.batch_size:
                    extra = inbox.get_nowait()
                    if extra is None:
                        break
                    if isinstance(extra, EndOfStream):
                        pending = extra
                        break
                    gathered.append(extra)
                    count += len(extra.frames)
                item = _merge(gathered)
            outputs, busy = await worker.call(worker.process, item)
            self._notify(stage, item.frames, outputs, busy)
            await self._emit(stage, outputs, output)

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for sig, label in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):

            def handler(label: str = label, number: int = sig) -> None:
                if self._abandoned is not None:
                    # Third time: even a teardown hangs. Nothing more can be saved by waiting.
                    log.error("%s again while abandoning: exiting now", label)
                    os._exit(128 + number)
                if self._stop_event.is_set():
                    self._abandon(f"{label} again")
                    return
                log.warning("%s: stopping input, draining and finalizing outputs", label)
                self.stop(reason=label)

            try:
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals
                log.debug("cannot install a handler for %s here", label)
        return installed


class _Abandoned(Exception):
    """A wait given up because the run was abandoned."""


def _annotate(error: BaseException, stage: Stage) -> BaseException:
    if getattr(error, "stage_name", None) is None:
        # Exceptions with __slots__ refuse new attributes: the note still names the stage.
        with contextlib.suppress(AttributeError):
            error.stage_name = stage.name  # type: ignore[attr-defined]
        error.add_note(f"raised in stage {stage.name!r} ({type(stage).__name__})")
    return error


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The original exception out of a TaskGroup's group (not the cancellations it caused)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]
