"""Worker processes on this machine, behind the same driver as Ray actors.

Why: one process runs every source under one interpreter lock. Feeding tens of decoders and
launching the model from Python threads of one process is what keeps a single pipeline well below
the NVDEC ceiling (see the README's measured section); several processes on the same GPU each have
their own. `ClusterRunner` already places sources on pipelines in other processes, moves them off
dead ones and serves the control API for all of them; this module gives it those pipelines as child
processes of the driver instead of Ray actors, so one machine needs neither Ray nor a cluster.

`LocalProcesses` implements the few calls of Ray's API that the driver makes (`remote` classes and
their `.options(...).remote(...)`, `handle.method.remote(...)`, `get`, `wait`, `kill`,
`cluster_resources`, and `exceptions.RayActorError` / `GetTimeoutError`), over child processes: a
fresh interpreter each (its own CUDA context, never a forked copy of the driver's threads), talking
to the driver over a socket pair with `multiprocessing.connection`. Each child builds its object
(`PipelineHost`) and answers calls from a small thread pool, as a Ray actor with `max_concurrency`
does, so a progress call is answered while `finish` waits. A reply is a plain pickled value; an
exception raised by a call is raised again in the caller with its own type (a `KeyError` stays a `KeyError`).

GPUs: a worker started with `num_gpus > 0` sees one GPU through `CUDA_VISIBLE_DEVICES`, assigned in
turn by share (0.25 a worker: four workers on GPU 0, then four on GPU 1); with `num_gpus == 0` it
sees none. A worker ignores SIGINT (the driver stops it, after Ctrl-C reached the whole process
group) and, when the driver disappears without stopping it (its pipe closes), finishes its pipeline
so that its outputs are finalized, then exits.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = ["LocalProcesses", "ReplyTimeout", "WorkerDied"]

log = logging.getLogger("streamflow.cluster")
# How long a worker whose driver vanished gives its pipeline to finalize its outputs.
_ORPHAN_FINISH_S = 60.0
_CALL_THREADS = 4


class WorkerDied(RuntimeError):
    """The worker process exited (or failed to start) before it answered."""


class ReplyTimeout(TimeoutError):
    """No answer within the time asked."""


class _Exceptions:
    # The names the driver catches, as on Ray.
    RayActorError = WorkerDied
    GetTimeoutError = ReplyTimeout


def _visible_gpu_ids() -> list[str]:
    """The GPUs this process may hand out: its own CUDA_VISIBLE_DEVICES, or every GPU torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [item.strip() for item in listed.split(",") if item.strip()]
    try:
        import torch
    except ImportError:
        return []
    # device_count asks NVML and does not create a CUDA context in this (driver) process.
    return [str(index) for index in range(torch.cuda.device_count())]


class _WorkerHandle:
    """The driver's side of one worker: its process, its pipe, and the calls waiting for answers."""

    def __init__(self, process: subprocess.Popen[bytes], connection: Connection, label: str) -> None:
        self.process = process
        self.label = label
        self._connection = connection
        self._send_lock = threading.Lock()  # the driver calls from its poll thread and the API's thread
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._pending_lock = threading.Lock()
        self._call_ids = itertools.count()
        self._gone: str | None = None
        self._reader = threading.Thread(target=self._read_replies, name=f"streamflow-{label}-replies", daemon=True)
        self._reader.start()

    def __getattr__(self, method: str) -> _RemoteMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return _RemoteMethod(self, method)

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._pending_lock:
            if self._gone is not None:
                future.set_exception(WorkerDied(self._gone))
                return future
            call_id = next(self._call_ids)
            self._pending[call_id] = future
        try:
            with self._send_lock:
                self._connection.send((call_id, method, args, kwargs))
        except (OSError, EOFError):  # BrokenPipeError is an OSError
            self._fail_all(f"{self.label}: its process is gone")
        return future

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._fail_all(f"{self.label}: killed")
        self._connection.close()

    def _read_replies(self) -> None:
        while True:
            try:
                call_id, ok, value = self._connection.recv()
            except (EOFError, OSError):
                break
            except Exception as error:  # a reply that does not unpickle fails its call only
                log.error("%s: unreadable reply: %s", self.label, error)
                continue
            with self._pending_lock:
                future = self._pending.pop(call_id, None)
            if future is None:
                continue
            if ok:
                future.set_result(value)
            elif isinstance(value, WorkerDied):
                future.set_exception(WorkerDied(str(value)))
            else:
                future.set_exception(value)
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._fail_all(f"{self.label} (pid {self.process.pid}) exited" + ("" if code is None else f" with code {code}"))

    def _fail_all(self, reason: str) -> None:
        with self._pending_lock:
            if self._gone is None:
                self._gone = reason
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(WorkerDied(reason))


class _RemoteMethod:
    def __init__(self, handle: _WorkerHandle, name: str) -> None:
        self._handle = handle
        self._name = name

    def remote(self, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return self._handle.call(self._name, args, kwargs)


class _RemoteClass:
    """`LocalProcesses.remote(...)(cls)`: `.options(num_gpus=..., ...).remote(*args)` starts a worker."""

    def __init__(self, backend: LocalProcesses, cls: type, num_gpus: float = 0.0) -> None:
        self._backend = backend
        self._cls = cls
        self._num_gpus = num_gpus

    def options(self, *, num_gpus: float = 0.0, **_ignored: Any) -> _RemoteClass:
        # num_cpus, name: Ray's scheduling; one machine's processes share its cores as the OS sees fit.
        return _RemoteClass(self._backend, self._cls, num_gpus)

    def remote(self, *args: Any, **kwargs: Any) -> _WorkerHandle:
        return self._backend.start_worker(self._cls, args, kwargs, num_gpus=self._num_gpus)


class LocalProcesses:
    """Child processes of this one, driven through the part of Ray's API that `ClusterRunner` uses."""

    exceptions = _Exceptions

    def __init__(self) -> None:
        self._gpu_ids = _visible_gpu_ids()
        self._gpu_slot = 0.0
        self._handles: list[_WorkerHandle] = []
        self._numbers = itertools.count()

    # -- the calls the driver makes --------------------------------------------------------------
    def is_initialized(self) -> bool:
        return True

    def shutdown(self) -> None:
        for handle in self._handles:
            handle.kill()
        self._handles.clear()

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": float(os.cpu_count() or 1), "GPU": float(len(self._gpu_ids))}

    def remote(self, **_options: Any) -> Callable[[type], _RemoteClass]:
        return lambda cls: _RemoteClass(self, cls)

    def get(self, refs: Any, timeout: float | None = None) -> Any:
        if isinstance(refs, list):
            return [self.get(ref, timeout) for ref in refs]
        try:
            return refs.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise ReplyTimeout(f"no answer within {timeout} s") from None

    def wait(
        self, refs: Sequence[concurrent.futures.Future[Any]], *, num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[concurrent.futures.Future[Any]], list[concurrent.futures.Future[Any]]]:
        when = concurrent.futures.ALL_COMPLETED if num_returns >= len(refs) else concurrent.futures.FIRST_COMPLETED
        done, _ = concurrent.futures.wait(refs, timeout=timeout, return_when=when)
        ready = [ref for ref in refs if ref in done]
        return ready, [ref for ref in refs if ref not in done]

    def kill(self, handle: _WorkerHandle, no_restart: bool = True) -> None:
        handle.kill()

    # -- workers ----------------------------------------------------------------------------------
    def start_worker(
        self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any], *, num_gpus: float
    ) -> _WorkerHandle:
        label = str(kwargs.get("name") or f"worker-{next(self._numbers)}")
        environment = dict(os.environ, CUDA_VISIBLE_DEVICES=self._next_gpu(num_gpus))
        environment["PYTHONPATH"] = os.pathsep.join(_import_paths())
        parent_end, child_end = socket.socketpair()
        # A fresh interpreter running this module (not multiprocessing's spawn, which would import
        # the caller's main script again in the child: a script without a __main__ guard would
        # start workers of its own).
        process = subprocess.Popen(
            [sys.executable, "-m", "streamflow.cluster.processes", str(child_end.fileno())],
            pass_fds=[child_end.fileno()],
            env=environment,
        )
        child_end.close()
        connection = Connection(parent_end.detach())
        connection.send_bytes(pickle.dumps((cls, args, kwargs)))
        handle = _WorkerHandle(process, connection, label)
        self._handles.append(handle)
        return handle

    def _next_gpu(self, share: float) -> str:
        if share <= 0 or not self._gpu_ids:
            return ""
        index = int(self._gpu_slot) % len(self._gpu_ids)
        self._gpu_slot += min(share, 1.0)
        return self._gpu_ids[index]


def _import_paths() -> list[str]:
    """What a worker needs on its path to import what this process imports: streamflow from where
    this process has it, then the folders added to this process's path (by PYTHONPATH, the script's
    folder, a test runner), which a fresh interpreter would not have; the installation's own
    folders it has anyway."""
    own = (sys.prefix, sys.base_prefix, sys.exec_prefix)
    added = [entry for entry in sys.path if entry and not entry.startswith(own)]
    paths = [str(Path(__file__).resolve().parents[2]), *added]
    return list(dict.fromkeys(paths))


def _serve(connection: Connection) -> None:
    """A worker's main: build the object, then answer calls until the driver goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()

    def reply(call_id: int, ok: bool, value: Any) -> None:
        try:
            message = pickle.dumps((call_id, ok, value))
        except Exception as error:  # an answer or exception that does not pickle: its text instead
            message = pickle.dumps((call_id, False, RuntimeError(f"{type(value).__name__}: {value}; ({error})")))
        with send_lock:
            connection.send_bytes(message)

    try:
        cls, args, kwargs = pickle.loads(connection.recv_bytes())
        instance = cls(*args, **kwargs)
    except BaseException as error:  # the driver gets the reason; this process ends
        reason = f"failed to start: {type(error).__name__}: {error}".splitlines()[0]
        _refuse_calls(connection, reply, reason)
        return

    def answer(call_id: int, method: str, call_args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> None:
        try:
            value = getattr(instance, method)(*call_args, **call_kwargs)
        except BaseException as error:  # raised again in the driver
            reply(call_id, False, error)
        else:
            reply(call_id, True, value)

    calls = concurrent.futures.ThreadPoolExecutor(max_workers=_CALL_THREADS, thread_name_prefix="streamflow-call")
    while True:
        try:
            call_id, method, call_args, call_kwargs = connection.recv()
        except (EOFError, OSError):
            break
        calls.submit(answer, call_id, method, call_args, call_kwargs)
    # The driver is gone (killed, or ended without finishing this worker): finalize what was written.
    finish = getattr(instance, "finish", None)
    if callable(finish):
        try:
            finish(_ORPHAN_FINISH_S)
        except Exception as error:
            print(f"streamflow worker: finishing after the driver left failed: {error}", file=sys.stderr)
    calls.shutdown(wait=False, cancel_futures=True)
    os._exit(0)  # threads the pipeline left behind (daemon decoders) must not hold the exit


def _refuse_calls(connection: Connection, reply: Callable[[int, bool, Any], None], reason: str) -> None:
    """The object could not be built: every call gets the reason, as a worker that died would."""
    print(f"streamflow worker: {reason}", file=sys.stderr)
    while True:
        try:
            call_id, *_ = connection.recv()
        except (EOFError, OSError):
            return
        reply(call_id, False, WorkerDied(reason))


if __name__ == "__main__":
    # Through the module's own name, so that what the worker pickles (WorkerDied) is
    # `streamflow.cluster.processes.WorkerDied` to the driver, not `__main__.WorkerDied`.
    from streamflow.cluster.processes import _serve as serve

    serve(Connection(int(sys.argv[1])))
