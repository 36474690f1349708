"""The worker-process backend on its own: real child processes answering the driver's calls."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from streamflow.cluster.processes import LocalProcesses, ReplyTimeout, WorkerDied
from support.workers import Echo


@pytest.fixture
def backend() -> Iterator[LocalProcesses]:
    processes = LocalProcesses()
    yield processes
    processes.shutdown()


def test_calls_are_answered_in_order_of_need_and_errors_keep_their_type(backend: LocalProcesses) -> None:
    handle = backend.remote()(Echo).options(num_gpus=0).remote("a")
    info = backend.get(handle.ready.remote(), timeout=60)
    assert info["pid"] != os.getpid() and info["gpus"] == "", "a worker without a GPU share sees none"
    slow = handle.slow.remote(8.0)  # far longer than the quick call takes even on a loaded machine
    quick = handle.echo.remote({"frames": [1, 2, 3]})
    ready, waiting = backend.wait([slow, quick], num_returns=1, timeout=7.0)
    assert ready == [quick] and waiting == [slow], "a slow call does not hold the others back"
    assert backend.get(quick) == {"frames": [1, 2, 3]}
    with pytest.raises(ReplyTimeout):
        backend.get(handle.slow.remote(5.0), timeout=0.2)
    with pytest.raises(KeyError, match="cam9"):
        backend.get(handle.lookup.remote("cam9"), timeout=30)
    assert backend.get(slow, timeout=30) == "slept"


def test_a_worker_that_fails_to_start_or_dies_fails_its_calls(backend: LocalProcesses) -> None:
    refused = backend.remote()(Echo).remote("b", fail=True)
    with pytest.raises(WorkerDied, match="failed to start: ValueError: b refused to start"):
        backend.get(refused.ready.remote(), timeout=60)
    handle = backend.remote()(Echo).remote("c")
    pid = backend.get(handle.ready.remote(), timeout=60)["pid"]
    pending = handle.slow.remote(30.0)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match=f"pid {pid}"):
        backend.get(pending, timeout=30)
    with pytest.raises(WorkerDied):
        backend.get(handle.echo.remote(1), timeout=30)


def test_gpu_shares_are_handed_out_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    backend = LocalProcesses()
    try:
        handles = [backend.remote()(Echo).options(num_gpus=0.5).remote(f"w{i}") for i in range(4)]
        seen = [backend.get(h.ready.remote(), timeout=60)["gpus"] for h in handles]
        assert seen == ["3", "3", "5", "5"]
        assert backend.cluster_resources()["GPU"] == 2
    finally:
        backend.shutdown()
