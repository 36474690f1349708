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
- Sources: each source has its own task, thread (or a share of `feeder_threads`) and edge; the
  stage after them reads all those edges round robin (`streamflow.mux.SourceMux`). A source's end
  travels as `EndOfStream(source_id)` (stages run `end_source`), the last one's as `EndOfStream()`.
- An exception in any stage after the sources cancels the others and leaves `run()` as itself,
  with a note naming the stage (and `exc.stage_name`). A source that fails ends alone, logged in
  one line; `run()` raises its error once the others are done (with `.run_stats`).
  `teardown()` runs for every stage that was set up, always.
- `stop()` (and SIGINT/SIGTERM under `run_sync(handle_signals=True)` or the CLI) makes the sources
  stop producing; what is in flight drains, every stage flushes and tears down, outputs are final.
- A second SIGINT/SIGTERM (or `stop_timeout_s` after a stop) abandons stages still inside a hook:
  the others tear down, `RunStats.unfinished` names the abandoned ones (their threads live on, so a
  process should then end with `os._exit`). `watchdog_s` warns once about a long hook call.
- `serial=True` (a config's `serial: true`; `streamflow bench`'s baseline) switches concurrency
  off and nothing else: the same workers, streams, hooks, observers and end of stream, but one
  loop takes each item from the one source through every stage in order and waits for the device
  before the next, with no queues in between (a stage's `batch_size` then gathers nothing: only
  one item is ever waiting). One source only.
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
import enum
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from streamflow.edge import Edge
from streamflow.frame import Batch, EndOfStream, Frame, Item
from streamflow.handoff import accept_on_host, accept_on_stream, mark_ready
from streamflow.mux import SourceEnd, SourceMux
from streamflow.observers import Observer, RunStats, StatsCollector
from streamflow.preflight import PreflightError, check_pipeline_files
from streamflow.sources import SourceSpec, SourceSpecError, SourceTemplate, build_source, source_id_of
from streamflow.stage import DeviceSpec, Overflow, Source, Stage, StageOutput, resolve_device
from streamflow.uri import redact_uri

__all__ = [
    "FrameLossError",
    "Pipeline",
    "PipelineError",
    "SourceError",
    "SourceState",
    "SourceStatus",
    "StageContractError",
]

log = logging.getLogger("streamflow.pipeline")
#: After stop() (a signal, an error), how long the runner waits for stages to drain and finalize
#: before it abandons the ones still inside a hook. Off by default: finalizing a long encode can
#: legitimately take long, and abandoning it would lose the output; a second signal always abandons.
DEFAULT_STOP_TIMEOUT_S: float | None = None
_MONITOR_PERIOD_S = 0.1
# The stage hook behind each of a worker's own methods, as watchdog and abandon messages name it.
_HOOK_NAMES = {"next_from": "generate", "open_source": "setup"}
T = TypeVar("T")


class FrameLossError(RuntimeError):
    """Strict frame accounting: a source delivered fewer frames than its container states."""


class PipelineError(ValueError):
    """The pipeline graph is invalid (raised when it is built, before anything runs), or a source
    can't be added; `field` names the offending option of a source spec when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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


def _settle(future: asyncio.Future[T], result: T) -> None:
    if not future.done():  # its caller was cancelled meanwhile
        future.set_result(result)


def _settle_with_error(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class _StageWorker:
    """Runs one stage's hooks in its own thread, with its CUDA stream and the hand-off protocol."""

    def __init__(
        self, stage: Stage, *, executor: ThreadPoolExecutor | None = None, stamp_name: str | None = None
    ) -> None:
        self.stage = stage
        # Sources may share a pool of feeder threads (`feeder_threads`); every other stage owns one.
        self.owns_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"streamflow-{stage.name}")
        #: Name under which frames are time-stamped (a source's: the template's, for latency).
        self.stamp_name = stamp_name or stage.name
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

    def shutdown(self) -> None:
        if self.owns_executor:
            self.executor.shutdown(wait=False)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        # The result comes back by `call_soon_threadsafe` onto a plain asyncio future rather than
        # through `run_in_executor`, whose chaining of a concurrent future into an asyncio one
        # (callbacks, state copies, loop checks) took a tenth of the GIL's time in a many-source
        # profile (docs/MEASURED.md): every frame of every source makes this hand-off.
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        work = self.executor.submit(self._call_in_thread, loop, done, fn, args)
        try:
            return await done
        except asyncio.CancelledError:
            work.cancel()  # not started yet: then it never runs, as with run_in_executor
            raise

    def _call_in_thread(
        self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[T], fn: Callable[..., T], args: tuple[Any, ...]
    ) -> None:
        try:
            result = self._in_context(fn, *args)
        except BaseException as error:
            loop.call_soon_threadsafe(_settle_with_error, done, error)
        else:
            loop.call_soon_threadsafe(_settle, done, result)

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

    def open_source(self) -> Iterator[Item]:
        """A source's `setup()`, then its `generate()`, in one call of its thread: one hand-off
        fewer before its first frame (each is a wait for the GIL while many threads run)."""
        stage = self.stage
        if not isinstance(stage, Source):
            raise TypeError(f"stage {stage.name!r} is not a source")
        stage.setup()
        self.set_up = True
        return stage.generate()

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
                frame.timestamps[self.stamp_name] = now


class SourceState(enum.StrEnum):
    """Where one source is in its life (`Pipeline.source_status`)."""

    STARTING = "starting"  # added; its input is being opened
    RUNNING = "running"  # input open, producing frames
    DRAINING = "draining"  # stopped producing; its last frames and end are on their way to the last stage
    ENDED = "ended"  # its end passed the last stage: its outputs are finalized
    FAILED = "failed"  # it could not be opened or broke while reading (`error` says why); outputs finalized


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One source as operators see it: id, uri with credentials masked, state and error."""

    id: str
    uri: str | None
    state: SourceState
    error: str | None = None
    ended: str | None = None  # why it ended: finished, removed, a stop reason, failed: ...
    #: Given before the run started (config, CLI, `add_source` before `run()`); False: added while running.
    configured: bool = True


@dataclass(eq=False)
class _SourceRun:
    """One source of a running (or about to run) pipeline."""

    source_id: str
    stage: Source | None  # None: its spec could not be turned into a stage (`build_error` says why)
    build_error: str | None = None
    worker: _StageWorker | None = None
    edge: Edge | None = None
    task: asyncio.Task[None] | None = None
    removed: bool = False
    error: BaseException | None = None
    display_uri: str | None = None
    state: SourceState = SourceState.STARTING
    end_reason: str | None = None
    configured: bool = True  # see `SourceStatus.configured`
    # Set on the loop when the input is open (or the source ended) and when its end left the last stage.
    opened: asyncio.Event | None = None
    drained: asyncio.Event | None = None


class Pipeline:
    """A chain of stages fed by one or many sources.

    `queue_size` is the default capacity of every edge; a stage's own `queue_size`/`overflow`
    override it for its input edge. The edge after a live source (`live = True` on the source's
    class) defaults to `drop_oldest`. `max_frames` stops each source after that many frames.

    Sources: without `sources`, the first stage is the one source. With `sources` (a list of
    `SourceSpec`s, mappings with id/uri/options, or `Source` stages), the first stage is the
    template each spec is built from (see `streamflow.sources`) and every source feeds its own
    edge; the next stage gathers batches across sources (`SourceMux`; its `batch_size` and
    `batch_timeout_ms`). A source that fails is logged in one line and ends alone; the others go
    on, and `run()` raises the first source failure once everything has drained. Sources can be
    added and removed while the pipeline runs (`add_source`, `remove_source`), up to
    `max_sources`; with `stay_open` the run waits for new sources when none is left, until
    `stop()`. `feeder_threads=N` runs the sources' hooks on a shared pool of N threads instead of
    a thread per source (many file decoders: fewer threads contending for the GIL).

    `serial=True` runs the same stages with concurrency off: one loop takes each item of the one
    source through every stage and waits for the device before the next (see the module docstring).
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
        sources: Sequence[SourceSpec | Mapping[str, Any] | Source] | None = None,
        max_sources: int | None = None,
        feeder_threads: int | None = None,
        stay_open: bool = False,
        serial: bool = False,
    ) -> None:
        if not stages:
            raise PipelineError("a pipeline needs at least one stage")
        if queue_size < 1:
            raise PipelineError(f"queue_size must be >= 1, got {queue_size}")
        if max_frames is not None and max_frames < 1:
            raise PipelineError(f"max_frames must be >= 1, got {max_frames}")
        if max_sources is not None and max_sources < 1:
            raise PipelineError(f"max_sources must be >= 1, got {max_sources}")
        if feeder_threads is not None and feeder_threads < 1:
            raise PipelineError(f"feeder_threads must be >= 1, got {feeder_threads}")
        if serial and (stay_open or (sources is not None and len(sources) != 1)):
            got = "stay_open" if stay_open else f"{len(sources or [])} sources"
            raise PipelineError(f"serial runs exactly one source to its end; got {got}")
        names = [stage.name for stage in stages]
        duplicates = sorted(name for name, count in collections.Counter(names).items() if count > 1)
        if duplicates:
            raise PipelineError(f"stage names must be unique; repeated: {', '.join(duplicates)}")
        if not isinstance(stages[0], Source):
            raise PipelineError(f"the first stage must be a source; {stages[0].name!r} is {type(stages[0]).__name__}")
        for stage in stages[1:]:
            if isinstance(stage, Source):
                raise PipelineError(f"stage {stage.name!r} is a source and can only be first")
        if sources is None and isinstance(stages[0], SourceTemplate):
            raise PipelineError(f"stage {stages[0].name!r} is a source template: give the pipeline its sources")
        self.stages = list(stages)
        self.name = name
        self.device_spec = device
        self.queue_size = queue_size
        self.overflow = Overflow(overflow) if overflow is not None else None
        self.observers = list(observers)
        self.max_frames = max_frames
        self.max_sources = max_sources
        self.feeder_threads = feeder_threads
        self.stay_open = stay_open
        #: One loop, one item at a time through every stage, no overlap (see the module docstring).
        self.serial = serial
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
        #: Names of stages abandoned inside a hook. Their threads still run: a process that had
        #: any should end with `os._exit()` (the CLI does), as interpreter exit would wait for them.
        self.unfinished: list[str] = []
        self._stop_requested_at: float | None = None
        self._abandoned: str | None = None
        self._abandon_event: asyncio.Event | None = None
        self._body: asyncio.Task[None] | None = None
        self._workers: list[_StageWorker] = []  # the stages after the sources
        #: One line per source that delivered fewer frames than its container states.
        self._frame_losses: list[str] = []
        self._lock = threading.Lock()  # guards `_runs` against add/remove from other threads
        self._runs: dict[str, _SourceRun] = {}
        self._finished: list[_SourceRun] = []  # ended sources, in the order they ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: asyncio.TaskGroup | None = None
        self._mux: SourceMux | None = None
        self._feeders: ThreadPoolExecutor | None = None
        self._pipeline_device: torch.device | None = None
        self._ended = False
        #: Set once every stage is set up and the configured sources have started; a source added from
        #: then on starts at once. Other threads wait on it (a worker process answers `ready` after it).
        self.started = threading.Event()
        self._serial_error: BaseException | None = None  # the first stage failure of a serial run
        self._serial_devices: set[torch.device] = set()  # the CUDA devices a serial run waits for per item
        # Built with a source list (or grown by add_source): failures are reported per source.
        self._many = sources is not None
        for entry in [stages[0]] if sources is None else sources:
            self._register(self._new_run(entry))

    @property
    def template(self) -> Source:
        """The first stage: the one source, or the template of every source."""
        return self.stages[0]  # type: ignore[return-value]  # checked in __init__

    @property
    def source_ids(self) -> list[str]:
        """Ids of the sources not yet ended (or all configured ones before the run)."""
        with self._lock:
            return list(self._runs)

    def source_stage(self, source_id: str) -> Source | None:
        """The stage of a source not yet ended (None for one whose uri was refused when it was built)."""
        with self._lock:
            run = self._runs.get(source_id)
        if run is None:
            raise KeyError(f"no source {source_id!r}")
        return run.stage

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
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.stage is not None:
                run.stage.stopping.set()
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                self._loop.call_soon_threadsafe(self._end_when_empty)

    def add_source(self, spec: SourceSpec | Mapping[str, Any] | Source) -> str:
        """Add a source (before or during the run; safe from any thread); returns its id.

        A spec is built from the template at once, so a bad option raises here (`ValueError`,
        `pydantic.ValidationError`); a uri that can't be opened fails that source alone, later.
        Raises `PipelineError` for a duplicate id, past `max_sources`, or once the run has ended.
        """
        run = self._new_run(spec)
        if self.serial:
            raise PipelineError(f"cannot add source {run.source_id!r}: a serial pipeline runs exactly one source")
        if self._stop_event.is_set() or self._ended:
            raise PipelineError(f"cannot add source {run.source_id!r}: the pipeline is stopping or has ended")
        run.configured = self._loop is None  # not started yet: it starts with the others
        self._register(run)
        self._many = True
        loop = self._loop
        if loop is not None:
            try:
                if _on_loop(loop):
                    self._start_run(run)
                else:
                    loop.call_soon_threadsafe(self._start_run, run)
            except RuntimeError:  # the loop closed: the run is over
                with self._lock:
                    self._runs.pop(run.source_id, None)
                raise PipelineError(f"cannot add source {run.source_id!r}: the pipeline has ended") from None
        return run.source_id

    def remove_source(self, source_id: str) -> None:
        """Stop one source (safe from any thread): what it queued drains, its outputs are finalized.

        Raises `KeyError` for an unknown (or already ended) id.
        """
        with self._lock:
            run = self._runs.get(source_id)
            if run is None:
                raise KeyError(f"no source {source_id!r}; sources: {sorted(self._runs)}")
            run.removed = True
            if self._loop is None:  # not running yet: just forget it
                del self._runs[source_id]
                return
        if run.stage is not None:
            run.stage.stopping.set()

    def preflight(self, *, create_folders: bool = True) -> None:
        """Cheap checks before anything starts: devices, inputs, outputs (`streamflow.preflight`)."""
        try:
            resolve_device(self.device_spec)
        except ValueError as error:
            raise PreflightError(f"pipeline: {error}") from None
        with self._lock:
            runs = list(self._runs.values())
        # Every source's own stage (its uri is an input), not the template; outputs that hold
        # {source} are checked once per source id.
        sources = [run.stage for run in runs if run.stage is not None]
        check_pipeline_files(
            [*sources, *self.stages[1:]],
            source_ids=[run.source_id for run in runs],
            extra_inputs=self.input_files,
            extra_outputs=self.output_files,
            create_folders=create_folders,
        )

    def snapshot(self) -> RunStats:
        """Live figures while running (used by progress displays and metrics exporters)."""
        return self.collector.snapshot()

    @property
    def running(self) -> bool:
        """True once every stage is set up (models loaded) and until the run stops."""
        return self._group is not None and not self._stop_event.is_set()

    def source_status(self) -> list[SourceStatus]:
        """Every source's state: the ones running and, per id, the last that ended (safe from any thread)."""
        with self._lock:
            latest = {run.source_id: run for run in [*self._finished, *self._runs.values()]}
        return [
            SourceStatus(
                id=run.source_id,
                uri=run.display_uri,
                state=run.state,
                error=None if run.error is None else _one_line(run.error),
                ended=run.end_reason,
                configured=run.configured,
            )
            for run in latest.values()
        ]

    async def source_opened(self, source_id: str) -> SourceStatus:
        """Wait (on the run's loop) until the source's input is open or it ended; its status then.

        A uri that can't be opened shows as `SourceState.FAILED` with the reason in `error`.
        """
        run = self._latest_run(source_id)
        if run.opened is not None:
            await run.opened.wait()
        return self._status_of(source_id)

    async def source_drained(self, source_id: str) -> SourceStatus:
        """Wait (on the run's loop) until the source's end passed the last stage: outputs finalized."""
        run = self._latest_run(source_id)
        if run.drained is not None:
            await run.drained.wait()
        return self._status_of(source_id)

    def _status_of(self, source_id: str) -> SourceStatus:
        return next(status for status in self.source_status() if status.id == source_id)

    def _latest_run(self, source_id: str) -> _SourceRun:
        with self._lock:
            run = self._runs.get(source_id)
            if run is None:
                run = next((r for r in reversed(self._finished) if r.source_id == source_id), None)
            if run is None:
                raise KeyError(f"no source {source_id!r}; sources: {sorted(self._runs)}")
            return run

    def _source_drained(self, source_id: str) -> None:
        # Generations of one id (removed, then added again) drain in the order they ended.
        with self._lock:
            run = next((r for r in self._finished if r.source_id == source_id and _draining(r)), None)
        if run is not None:
            _mark_drained(run)

    def _new_run(self, entry: SourceSpec | Mapping[str, Any] | Source) -> _SourceRun:
        if isinstance(entry, Source):
            if isinstance(entry, SourceTemplate):
                raise PipelineError(f"source {entry.name!r} is a template, not a source")
            return _SourceRun(source_id_of(entry), entry, display_uri=_display_uri_of(entry))
        spec = entry if isinstance(entry, SourceSpec) else SourceSpec(**entry)
        try:
            return _SourceRun(spec.id, build_source(spec, self.template), display_uri=spec.display_uri)
        except SourceSpecError as error:
            if error.field == "uri":
                # The uri is wrong (a missing file): a fault of this source alone, reported when it starts.
                return _SourceRun(spec.id, None, build_error=error.reason, display_uri=spec.display_uri)
            raise PipelineError(str(error), field=error.field) from None
        except (LookupError, TypeError, ValueError) as error:
            raise PipelineError(f"source {spec.id!r}: {error}") from None

    def _register(self, run: _SourceRun) -> None:
        with self._lock:
            if run.source_id in self._runs:
                raise PipelineError(f"source id {run.source_id!r} is already in use")
            if self.max_sources is not None and len(self._runs) >= self.max_sources:
                raise PipelineError(f"cannot add source {run.source_id!r}: max_sources ({self.max_sources}) reached")
            self._runs[run.source_id] = run

    # -- running ------------------------------------------------------------------------------
    def run_sync(
        self,
        *,
        handle_signals: bool = False,
        alongside: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
    ) -> RunStats:
        """Run to completion on a fresh event loop (uvloop when installed).

        `alongside` makes a context entered on that loop before the run and left after it (a
        control server that must share the pipeline's loop).
        """
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # uvloop is optional: the standard loop works, a little slower
            loop_factory = None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(self._run_alongside(alongside, handle_signals=handle_signals))

    async def _run_alongside(
        self, alongside: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None, *, handle_signals: bool
    ) -> RunStats:
        if alongside is None:
            return await self.run(handle_signals=handle_signals)
        async with alongside():
            return await self.run(handle_signals=handle_signals)

    async def run(self, *, handle_signals: bool = False) -> RunStats:
        """Run until every source ended, `stop()`, or an error (re-raised as itself).

        A source that failed does not stop the others; its error is raised after the run.
        """
        self.preflight()
        self._prepare()
        workers = [_StageWorker(stage) for stage in self.stages[1:]]
        self._workers = workers
        loop = asyncio.get_running_loop()
        self.unfinished = []
        self._frame_losses = []
        self._abandoned = None
        self._abandon_event = asyncio.Event()
        installed: list[int] = []
        if handle_signals:
            installed = self._install_signal_handlers(loop)
        failed = False
        # The monitor (watchdog, stop timeout) is owned here: cancelled and awaited in `finally`.
        monitor = asyncio.create_task(self._monitor(), name="streamflow:monitor")
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
            self._group = None
            self._ended = True
            teardown_error = await self._teardown_all(workers)
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
            with self._lock:
                for run in [*self._finished, *self._runs.values()]:
                    _mark_drained(run)  # every stage has flushed (or failed): outputs final
            for sig in installed:
                loop.remove_signal_handler(sig)
            stats = self.collector.snapshot()
            stats.stopped_by = self._stop_reason
            stats.unfinished = list(self.unfinished)
            stats.warnings.extend(self._unfinished_warnings())
            stats.warnings.extend(self._frame_losses)
            for line in stats.warnings:
                log.warning("%s", line)
            for observer in self.observers:
                try:
                    observer.on_end(stats)
                except Exception as error:  # an observer must not hide the run's own outcome
                    log.error("observer %r failed in on_end: %s", observer, error)
            if teardown_error is not None and not failed:
                raise teardown_error
        if self._frame_losses and self.strict_frames:
            raise FrameLossError(f"{'; '.join(self._frame_losses)} (strict frame accounting)")
        source_error = self._first_source_error()
        if source_error is not None:
            source_error.run_stats = stats  # type: ignore[attr-defined]  # for callers that report
            raise source_error
        return stats

    async def _run_stages(self, workers: list[_StageWorker]) -> None:
        await self._setup_all(workers)
        for observer in self._all_observers():
            observer.on_start(self.stages, self.edges)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._loop = asyncio.get_running_loop()
                if not self.serial:  # serially, the source's task drives every stage (`_run_serial`)
                    for index, worker in enumerate(workers, start=1):
                        group.create_task(self._drive(index, worker), name=f"stage:{worker.stage.name}")
                with self._lock:
                    runs = list(self._runs.values())
                for run in runs:
                    self._start_run(run)
                self.started.set()
                if self._stop_event.is_set():
                    self._end_when_empty()
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

    def _all_workers(self) -> list[_StageWorker]:
        """Workers of the sources (running or ended) and of the stages after them."""
        with self._lock:
            runs = [*self._finished, *self._runs.values()]
        return [*(run.worker for run in runs if run.worker is not None), *self._workers]

    def _workers_busy(self) -> list[_StageWorker]:
        return [w for w in self._all_workers() if w.busy_since is not None]

    def _unfinished_warnings(self) -> list[str]:
        by_name = {w.stage.name: w for w in self._all_workers()}
        lines = []
        for name in self.unfinished:
            worker = by_name[name]
            hook = _HOOK_NAMES.get(worker.busy_hook or "", worker.busy_hook or "a hook")
            busy = time.perf_counter() - worker.busy_since if worker.busy_since is not None else 0.0
            lines.append(
                f"stage {name!r} ({type(worker.stage).__name__}) did not return from {hook}() "
                f"(busy for {busy:.1f} s); abandoned after {self._abandoned}, other stages finalized"
            )
        return lines

    async def _monitor(self) -> None:
        """Watchdog warnings for long hook calls; abandon the run when the stop timeout passes."""
        while True:
            await asyncio.sleep(_MONITOR_PERIOD_S)
            now = time.perf_counter()
            for worker in self._all_workers():  # sources come and go: looked up each time
                limit = worker.stage.watchdog_s if worker.stage.watchdog_s is not None else self.watchdog_s
                since = worker.busy_since
                if limit is None or since is None or worker.watchdog_warned or now - since <= limit:
                    continue
                worker.watchdog_warned = True
                hook = _HOOK_NAMES.get(worker.busy_hook or "", worker.busy_hook)
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

    def _first_source_error(self) -> BaseException | None:
        """The failure to raise after the run: a lone failed source's own error, or one listing them all."""
        failed = [run for run in self._finished if run.error is not None]
        if not failed:
            return None
        if len(failed) == 1:
            return failed[0].error
        names = ", ".join(repr(run.source_id) for run in failed)
        error = SourceError(f"{len(failed)} of {len(self._finished)} sources failed: {names}")
        error.__cause__ = failed[0].error
        return error

    def _all_observers(self) -> list[Observer]:
        return [self.collector, *self.observers]

    def _prepare(self) -> None:
        if self._loop is not None:
            raise PipelineError("a pipeline runs once; build a new one to run again")
        self._pipeline_device = resolve_device(self.device_spec)
        self.edges = {}
        self._finished = []
        for index, stage in enumerate(self.stages):
            self._place(stage)
            if index >= 2 and not self.serial:
                previous = self.stages[index - 1]
                self.edges[stage.name] = Edge(f"{previous.name}->{stage.name}", *self._edge_settings(previous, stage))
        after = self.stages[1] if len(self.stages) > 1 else None
        timeout = after.batch_timeout_ms / 1000 if after is not None and after.batch_timeout_ms is not None else None
        self._mux = SourceMux(timeout_s=timeout, end_when_empty=not self.stay_open)
        if self.feeder_threads is not None:
            self._feeders = ThreadPoolExecutor(max_workers=self.feeder_threads, thread_name_prefix="streamflow-feeder")

    def _place(self, stage: Stage) -> None:
        """Device, CUDA stream and a fresh stop flag and counters for `stage`."""
        assert self._pipeline_device is not None
        stage.device = (
            resolve_device(stage.device_spec) if stage.device_spec not in (None, "auto") else self._pipeline_device
        )
        stage.stream = (
            torch.cuda.Stream(device=stage.device) if stage.uses_gpu and stage.device.type == "cuda" else None
        )
        stage.stopping.clear()
        stage.counters.clear()

    def _edge_settings(self, producer: Stage, consumer: Stage) -> tuple[int, Overflow]:
        overflow = consumer.overflow or self.overflow
        if overflow is None:
            live = isinstance(producer, Source) and producer.live
            overflow = Overflow.DROP_OLDEST if live else consumer.default_overflow
        return consumer.queue_size or self.queue_size, overflow

    def _start_run(self, run: _SourceRun) -> None:
        """Connect a source to the mux and start its task (on the loop)."""
        if run.task is not None:  # added from another thread while the run was starting: already started
            return
        group, mux = self._group, self._mux
        if group is None or mux is None or self._stop_event.is_set():
            with self._lock:
                self._runs.pop(run.source_id, None)
            log.warning("source %r not started: the pipeline is stopping", run.source_id)
            return
        consumer = self.stages[1] if len(self.stages) > 1 else None
        run.opened, run.drained = asyncio.Event(), asyncio.Event()
        if run.stage is not None:
            self._place(run.stage)
            if self._stop_event.is_set() or run.removed:
                run.stage.stopping.set()
            producer: Stage = run.stage
            run.worker = _StageWorker(run.stage, executor=self._feeders, stamp_name=self.template.name)
        else:
            producer = self.template
        if consumer is not None and not self.serial:
            run.edge = Edge(f"{run.source_id}->{consumer.name}", *self._edge_settings(producer, consumer))
            mux.add(run.source_id, run.edge)
        for observer in self._all_observers():
            observer.on_source_added(run.source_id, run.stage, run.edge)
        driver = self._run_serial(run) if self.serial else self._drive_source(run)
        run.task = group.create_task(driver, name=f"source:{run.source_id}")

    def _end_when_empty(self) -> None:
        if self._mux is not None:
            self._mux.final_reason = self._stop_reason or "finished"
            self._mux.end_when_empty = True
            self._mux.wake()

    async def _setup_all(self, workers: list[_StageWorker]) -> None:
        # Stages set up one after another, each in its own thread, so a model load that fails
        # leaves nothing half-started behind it and errors name the right stage, and nothing else
        # works on the GPU while a model captures its CUDA graph (setting up at once, with sources
        # opening meanwhile, broke captures: docs/MEASURED.md). Sources set up in their own tasks,
        # after these: one that can't open its input fails alone.
        for worker in workers:
            began = time.perf_counter()
            try:
                await worker.call(worker.stage.setup)
            except Exception as error:
                raise _annotate(error, worker.stage) from None
            worker.set_up = True
            for observer in self._all_observers():
                observer.on_stage_set_up(worker.stage, time.perf_counter() - began)

    async def _teardown_all(self, workers: list[_StageWorker]) -> BaseException | None:
        """Tear down every stage that was set up; return the first failure (after trying all)."""
        first_error: BaseException | None = None
        for worker in self._all_workers():  # the sources', then `workers` (the stages after them)
            if worker.set_up:
                if self._abandoned is not None and worker.busy_since is not None:
                    # Its thread is inside a hook: a teardown queued behind it would wait forever.
                    self.unfinished.append(worker.stage.name)
                    worker.shutdown()  # a shared feeder pool stays open for the other sources
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
            worker.shutdown()
        if self._feeders is not None:
            self._feeders.shutdown(wait=False)
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
            if index == 1:
                assert self._mux is not None
                await self._drive_stage(index, worker, self._mux.take, output)
            else:
                await self._drive_stage(index, worker, _GreedyInbox(self.edges[stage.name]).take, output)
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

    async def _drive_source(self, run: _SourceRun) -> None:
        """One source: set up, generate until its end (or stop/removal), tear down; failures stay here."""
        reason = "finished"
        cancelled = False
        try:
            if run.stage is None:
                raise SourceError(run.build_error or "cannot be built")
            worker = run.worker
            assert worker is not None
            generator = await worker.call(worker.open_source)
            run.state = SourceState.RUNNING
            if run.opened is not None:
                run.opened.set()
            for observer in self._all_observers():
                observer.on_source_opened(run.source_id)
            await self._generate(run, run.stage, worker, generator)
            reason = "removed" if run.removed else (self._stop_reason or "finished")
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Exception as error:
            if run.stage is None:
                error.stage_name = f"{self.template.name}[{run.source_id}]"  # type: ignore[attr-defined]
            run.error = _annotate(error, run.stage or self.template)
            reason = f"failed: {_one_line(error)}"
            if self._many:  # one line per failed source, naming it; the other sources go on
                log.error("source %r failed: %s", run.source_id, _one_line(error))
        finally:
            if not cancelled:
                await self._finish_source(run, reason)

    async def _generate(self, run: _SourceRun, stage: Source, worker: _StageWorker, generator: Iterator[Item]) -> None:
        produced = 0
        # Closed here only after a normal end: a generator that raised is already closed, and after a
        # cancellation its thread may still be inside it (teardown then releases what it holds).
        while not stage.stopping.is_set():
            item, busy = await worker.call(worker.next_from, generator)
            if item is None:
                # Ran to its end: did everything the container promised come out?
                loss = stage.frame_shortfall(produced)
                if loss is not None:
                    self._frame_losses.append(loss)
                break
            if isinstance(item, EndOfStream):
                await self._deliver(run, item)
                continue
            if self.max_frames is not None and isinstance(item, Batch):
                item.frames = item.frames[: self.max_frames - produced]
                if item.data is not None:
                    item.data = item.data[: len(item.frames)]
            produced += len(item.frames)
            self._notify(stage, [], [item], busy)
            await self._deliver(run, item)
            if self.max_frames is not None and produced >= self.max_frames:
                break
        close = getattr(generator, "close", None)
        if close is not None:
            await worker.call(close)

    async def _finish_source(self, run: _SourceRun, reason: str) -> None:
        worker = run.worker
        if worker is not None:
            if worker.set_up:
                try:
                    await worker.call(worker.stage.teardown)
                except Exception as error:
                    log.error("teardown of source %r failed: %s", run.source_id, _one_line(error))
                worker.set_up = False
            worker.shutdown()
        with self._lock:
            self._runs.pop(run.source_id, None)
            self._finished.append(run)
        run.end_reason = reason
        run.state = SourceState.FAILED if run.error is not None else SourceState.DRAINING
        if run.opened is not None:
            run.opened.set()
        if len(self.stages) == 1:  # no stage after the source: nothing left to drain
            _mark_drained(run)
        for observer in self._all_observers():
            observer.on_source_ended(run.source_id, reason, None if run.error is None else _one_line(run.error))
        await self._deliver(run, SourceEnd(run.source_id, reason))

    async def _deliver(self, run: _SourceRun, item: Item) -> None:
        """A source's item goes on: onto its edge, or (serial) through every stage before the next is made."""
        if not self.serial:
            if run.edge is not None:
                await run.edge.put(item)
            return
        if isinstance(item, SourceEnd):  # as the mux hands it on
            item = EndOfStream(source_id=item.source_id, reason=item.reason)
        await self._push_serial(item)

    async def _run_serial(self, run: _SourceRun) -> None:
        """The serial schedule, in the one source's task: its driver hands each item through every
        stage (`_deliver`), its end follows, then the final end of stream flushes the stages in order."""
        stages = [run.stage, *self.stages[1:]]
        self._serial_devices = {s.device for s in stages if s is not None and s.device.type == "cuda"}
        await self._drive_source(run)
        await self._push_serial(EndOfStream(reason=self._stop_reason or "finished"))
        if self._serial_error is not None:
            raise self._serial_error

    async def _push_serial(self, item: Item) -> None:
        """One item through every stage after the source, in order, then wait for the device(s).

        A stage that fails stops the source (its error leaves `run()` once the source has ended);
        nothing more goes through, as the concurrent schedule cancels the stages after a failure.
        """
        if self._serial_error is not None:
            return
        items = [item]
        for index, worker in enumerate(self._workers, start=1):
            passed: list[Item] = []
            try:
                for got in items:
                    passed.extend(await self._step(index, worker, got if isinstance(got, EndOfStream) else [got]))
            except Exception as error:
                self.stop(reason=self._stop_reason or "error")
                self._serial_error = _annotate(error, worker.stage)
                return
            items = passed
        if self._serial_devices:
            # Off the loop: a device wait blocks its thread; each item is finished before the next starts.
            await asyncio.to_thread(_synchronize, self._serial_devices)

    async def _drive_stage(
        self,
        index: int,
        worker: _StageWorker,
        take: Callable[[int], Awaitable[list[Frame | Batch] | EndOfStream]],
        output: Edge | None,
    ) -> None:
        while True:
            got = await take(worker.stage.batch_size)
            await self._emit(worker.stage, await self._step(index, worker, got), output)
            if isinstance(got, EndOfStream) and got.source_id is None:
                return

    async def _step(self, index: int, worker: _StageWorker, got: list[Frame | Batch] | EndOfStream) -> list[Item]:
        """One input of stage `index` through its hook; what it passes on (an end of stream behind its outputs).

        Both schedules run every stage hook through here: the concurrent one from each stage's
        task, the serial one from its single loop.
        """
        stage = worker.stage
        last = index == len(self.stages) - 1
        if isinstance(got, EndOfStream):
            if got.source_id is not None:  # one source ended; others may go on
                outputs, busy = await worker.call(worker.end_source, got.source_id)
                self._notify(stage, [], outputs, busy)
                if last:  # the last stage finalized this source's outputs
                    self._source_drained(got.source_id)
                    for observer in self._all_observers():
                        observer.on_source_drained(got.source_id)
                return [*outputs, got]
            outputs, busy = await worker.call(worker.flush)
            if not last and not stage.is_sink and worker.items_out == 0 and worker.none_returns:
                raise StageContractError(
                    f"stage {stage.name!r} ({type(stage).__name__}): process() returned None for all "
                    f"{worker.none_returns} items it got, so nothing reached the stages after it; return the "
                    "item to pass it on, [] to drop it on purpose, or set is_sink = True on a sink"
                )
            self._notify(stage, [], outputs, busy)
            return [*outputs, got]
        item = _merge(got) if stage.batch_size > 1 else got[0]
        outputs, busy = await worker.call(worker.process, item)
        self._notify(stage, item.frames, outputs, busy)
        return outputs

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


class SourceError(RuntimeError):
    """A source could not be built from its spec (its uri was rejected)."""


class _GreedyInbox:
    """One edge read the way the stage after it wants: one item, or what is queued up to a batch.

    Greedy: it takes what is already queued and never waits for a full batch, so latency stays low
    when the producer is the bottleneck. An end of stream met while gathering waits for the next call.
    """

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self._pending: EndOfStream | None = None

    async def take(self, limit: int) -> list[Frame | Batch] | EndOfStream:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        first = await self.edge.get()
        if isinstance(first, EndOfStream):
            return first
        items: list[Frame | Batch] = [first]
        count = len(first.frames)
        while count < limit:
            extra = self.edge.get_nowait()
            if extra is None:
                break
            if isinstance(extra, EndOfStream):
                self._pending = extra
                break
            items.append(extra)
            count += len(extra.frames)
        return items


def _synchronize(devices: set[torch.device]) -> None:
    for device in devices:
        torch.cuda.synchronize(device)


def _mark_drained(run: _SourceRun) -> None:
    if run.state is SourceState.DRAINING:
        run.state = SourceState.ENDED
    for event in (run.opened, run.drained):  # nobody waits on a source whose run is over
        if event is not None:
            event.set()


def _draining(run: _SourceRun) -> bool:
    return run.drained is not None and not run.drained.is_set()


def _display_uri_of(stage: Source) -> str | None:
    uri = getattr(stage.config, "uri", None)
    return redact_uri(str(uri)) if uri is not None else None


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _one_line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
