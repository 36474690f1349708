"""Sources spread over worker processes of this machine (`--workers N`, `backend: processes`), no Ray.

Real child processes, real clips, the real control API over HTTP: spread and per-source outputs, one
bad source failing alone, a SIGKILLed worker's sources moved, the driver SIGKILLed (the workers
finalize their outputs), and the many-source bench over workers.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import av
import pytest

from streamflow.cli.multibench import run_sources_bench
from streamflow.cluster import ClusterConfig
from streamflow.cluster.driver import ClusterRunner
from streamflow.config import load_config
from streamflow.video.synth import write_clip
from support.cluster import NVDEC_FRAMES, NVDEC_SOURCES, http, indices_by_source, nvdec_config, served_run, wait_for

FPS = 10


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    made = {
        "small": write_clip(folder / "small.mp4", width=64, height=48, frames=30, fps=FPS),
        "wide": write_clip(folder / "wide.mp4", width=96, height=40, frames=20, fps=FPS),
        "tall": write_clip(folder / "tall.mp4", width=48, height=80, frames=25, fps=FPS),
    }
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(4096))
    made["corrupt"] = corrupt
    return made


def write_config(tmp_path: Path, sources: dict[str, Path], *, realtime: bool = False, extra: str = "") -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    listed = "\n".join(f"  - {{id: {sid}, uri: {uri}}}" for sid, uri in sources.items())
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""
name: workers-test
device: cpu
overflow: block
stages:
  - {{name: cam, type: decode, backend: cpu, realtime: {str(realtime).lower()}}}
  - {{name: out, type: jsonl, path: "{out}/{{source}}.jsonl"}}
{extra}
sources:
{listed}
"""
    )
    return path


class Cli:
    """`streamflow run ...` in a child process, stderr collected line by line."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "streamflow.cli", "run", *args]
        # tests/ on the path: configs may name test stages (`support.stages:...`), in the workers too.
        path = os.pathsep.join(p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        stream = self.process.stderr
        assert stream is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")))
        self._reader.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._reader.join(timeout=10)


def test_cli_workers_write_every_source_and_a_corrupt_one_fails_alone(clips: dict[str, Path], tmp_path: Path) -> None:
    path = write_config(tmp_path, clips)
    stats = tmp_path / "stats.json"
    cli = Cli(str(path), "--workers", "2", "--stats-json", str(stats))
    code = cli.wait(timeout=180)
    assert code == 1, cli.text[-2000:]
    failed_lines = [line for line in cli.lines if "corrupt" in line and "fail" in line]
    assert failed_lines, cli.text[-2000:]
    written = indices_by_source(tmp_path / "out")
    expected = {"small": 30, "wide": 20, "tall": 25}
    for source_id, frames in expected.items():
        assert written[source_id] == list(range(frames)), f"{source_id}: complete and in order"
    summary = json.loads(stats.read_text())
    assert summary["sources"]["corrupt"]["ended"] == "failed" and summary["sources"]["corrupt"]["error"]
    assert {summary["sources"][s]["ended"] for s in expected} == {"finished"}
    workers = summary["actors"]
    assert sorted(workers) == ["worker-0", "worker-1"]
    pids = {info["pid"] for info in workers.values()}
    assert len(pids) == 2 and cli.process.pid not in pids, "two processes of their own"


def test_a_killed_worker_loses_its_sources_to_the_others_and_the_run_ends_with_exit_0(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    ids = {f"cam{i}": clips["small"] for i in range(6)}
    path = write_config(tmp_path, ids, realtime=True, extra="cluster: {backend: processes, poll_interval_s: 0.2}")
    cli = Cli(str(path), "--workers", "3")
    out = tmp_path / "out"

    def lines_of(source_id: str) -> int:
        file = out / f"{source_id}.jsonl"
        return len(file.read_text().splitlines()) if file.exists() else 0

    try:
        wait_for(lambda: "sources placed:" in cli.text, timeout=120, what="the placement line")
        placed = ast.literal_eval(re.search(r"sources placed: (\{.*\})", cli.text).group(1))  # type: ignore[union-attr]
        pid = int(re.search(r"worker-1 up: pid (\d+)", cli.text).group(1))  # type: ignore[union-attr]
        wait_for(lambda: all(lines_of(s) >= 3 for s in placed["worker-1"]), timeout=120, what="worker-1's frames")
        os.kill(pid, signal.SIGKILL)
    finally:
        code = cli.wait(timeout=180)
    assert code == 0, cli.text[-2000:]
    gone = rf"worker-1 is gone: .*pid {pid}\) exited with code -{int(signal.SIGKILL)}"
    assert re.search(gone, cli.text), "why the worker is gone, in the log: " + cli.text[-2000:]
    for source_id in placed["worker-1"]:
        assert re.search(rf"source {source_id} moved from worker-1 to worker-[02] as {source_id}\.part1", cli.text)
    written = indices_by_source(out)
    assert all(set(written[s]) == set(range(30)) for s in ids), "every frame of every source at least once"


def test_sources_start_only_once_every_worker_has_set_up(clips: dict[str, Path], tmp_path: Path) -> None:
    # Workers share a GPU: one that started its cameras while another still loads its model would
    # compete with that load. Here the second worker to set up takes 3 s longer than the first; no
    # frame may reach either before both are set up.
    marks = tmp_path / "marks"
    marks.mkdir()
    stage = f'  - {{name: stagger, type: "support.stages:StaggeredSetup", folder: "{marks}", delay: 3.0}}'
    path = write_config(tmp_path, {"a": clips["small"], "b": clips["wide"]}, realtime=True)
    path.write_text(path.read_text().replace("  - {name: out, type: jsonl", stage + "\n  - {name: out, type: jsonl"))
    cli = Cli(str(path), "--workers", "2")
    assert cli.wait(timeout=180) == 0, cli.text[-2000:]
    set_up = [float((marks / f"set-up-{n}").read_text()) for n in range(2)]
    first_frames = [float((marks / f"first-frame-{n}").read_text()) for n in range(2)]
    assert set_up[1] - set_up[0] >= 2.5, "the second worker's set-up really was later"
    assert min(first_frames) >= max(set_up), f"a frame before every worker was set up: {set_up} {first_frames}"
    written = indices_by_source(tmp_path / "out")
    assert written == {"a": list(range(30)), "b": list(range(20))}


def test_the_control_api_adds_and_removes_sources_on_workers(clips: dict[str, Path], tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"first": clips["small"]}, realtime=True))
    cluster = ClusterConfig(backend="processes", actors=2, poll_interval_s=0.2)
    runner = ClusterRunner(config, cluster=cluster, stay_open=True)
    with served_run(runner) as served:
        base = served.base
        served.start()
        assert http("GET", f"{base}/readyz") == (200, {"ready": True, "actors_alive": 2})
        status, body = http("POST", f"{base}/sources", {"id": "second", "uri": str(clips["wide"]), "loop": True})
        assert status == 201 and body["actor"] == "worker-1", "the new source goes to the idle worker"
        wait_for(lambda: runner.sources["second"].current.progress.delivered >= 5, 120, "the added source's frames")
        status, body = http("DELETE", f"{base}/sources/second?wait=60")
        assert status == 200 and body["state"] == "removed", body
        assert runner.wait_ended("first", 120)
        status, metrics = http("GET", f"{base}/metrics")
        assert status == 200
        assert re.search(r'streamflow_source_frames_done_total\{.*actor="worker-0".*\} 30\.0', metrics), metrics[:2000]
    assert served.result.sources["second"].state == "removed"
    written = indices_by_source(tmp_path / "out")
    assert written["first"] == list(range(30))
    assert len(written["second"]) >= 5 and written["second"] == list(range(len(written["second"])))


@pytest.mark.parametrize(
    ("stop_with", "exit_code"),
    [(signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)],
    ids=["driver-stopped", "driver-killed"],
)
def test_outputs_are_finalized_when_the_driver_is_stopped_or_killed(
    clips: dict[str, Path], tmp_path: Path, stop_with: signal.Signals, exit_code: int
) -> None:
    """SIGTERM: the driver stops its workers (outputs finalized) and exits 143. SIGKILL: the worker
    finds its driver gone, finalizes its outputs itself and exits."""
    out = tmp_path / "out"
    encode = f'  - {{name: video, type: encode, path: "{out}/{{source}}.mp4", crf: 30}}'
    path = write_config(tmp_path, {"cam": clips["small"]}, realtime=True)
    text = path.read_text().replace("  - {name: out, type: jsonl", encode + "\n  - {name: out, type: jsonl")
    path.write_text(text.replace("realtime: true}", "realtime: true, loop: true}"))
    cli = Cli(str(path), "--workers", "1")
    try:
        wait_for(lambda: "worker-0 up: pid" in cli.text, timeout=120, what="the worker")
        worker = int(re.search(r"worker-0 up: pid (\d+)", cli.text).group(1))  # type: ignore[union-attr]
        wait_for(
            lambda: (out / "cam.jsonl").exists() and len((out / "cam.jsonl").read_text().splitlines()) >= 12,
            120,
            "frames",
        )
        os.kill(cli.process.pid, stop_with)
    finally:
        code = cli.wait(timeout=90)
    assert code == exit_code, cli.text[-2000:]

    def gone() -> bool:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout=90, what="the orphaned worker to finish and exit")
    lines = (out / "cam.jsonl").read_text().splitlines()
    assert all(json.loads(line)["source_id"] == "cam" for line in lines), "every line complete"
    with av.open(str(out / "cam.mp4")) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded >= 12, "the MP4 was finalized (its index written) and holds what was encoded"


def test_the_many_source_bench_measures_one_process_and_workers_alike(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", width=64, height=48, frames=10)
    config = tmp_path / "p.yaml"
    config.write_text(
        f"name: t\ndevice: cpu\nstages:\n"
        f"  - {{name: source, type: decode, uri: {clip}, emit_batch: 2}}\n"
        f"  - {{name: sink, type: jsonl, path: {tmp_path}/out/results.jsonl}}\n"
    )
    result = run_sources_bench(config, [3], frames_per_source=15, warmup=2, workers=[1, 2])
    assert [(run.sources, run.workers) for run in result.runs] == [(3, 1), (3, 2)]
    for run in result.runs:
        assert run.frames == 45 and run.failed == 0 and run.fps > 0
        assert sorted(s.id for s in run.stats.sources) == ["s0", "s1", "s2"]
        assert all(s.frames_done == 15 for s in run.stats.sources)
        assert run.stats.stages[-1].frames_in == 45 and run.latency_ms[0] is not None
    # Both variants wrote one file per source (workers must not share a file; both write alike).
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["results.s0.jsonl", "results.s1.jsonl", "results.s2.jsonl"]
    assert all(len((tmp_path / "out" / name).read_text().splitlines()) == 15 for name in written)


@pytest.mark.gpu
def test_two_workers_share_one_gpu_with_nvdec(tmp_path: Path) -> None:
    path, out = nvdec_config(tmp_path)
    cluster = ClusterConfig(backend="processes", actors=2, gpus_per_actor=0.5)
    result = ClusterRunner(load_config(path), cluster=cluster, host_options={"record_results": True}).run()
    assert {outcome.state for outcome in result.sources.values()} == {"finished"}
    for worker in result.actors.values():
        devices = {stage["device"] for stage in worker["run"]["stages"]}
        assert devices == {"cuda:0"}, devices
        assert worker["run"]["bench"]["peak_gpu_mib"] > 0, "decoded on the GPU, in the worker"
    written = indices_by_source(out)
    assert all(written[f"g{i}"] == list(range(NVDEC_FRAMES)) for i in range(NVDEC_SOURCES))


def _per_source_bench_config(tmp_path: Path, clip: Path, *, top: str = "") -> Path:
    """A bench config: `clip` decoded into one JSONL per source under tmp_path/out; `top`: more top-level keys."""
    config = tmp_path / "p.yaml"
    config.write_text(
        f"name: t\ndevice: cpu\n{top}stages:\n"
        f"  - {{name: source, type: decode, uri: {clip}}}\n"
        f'  - {{name: sink, type: jsonl, path: "{tmp_path}/out/{{source}}.jsonl"}}\n'
    )
    return config


def test_the_paced_bench_reports_the_capture_latency_after_its_warm_up(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", width=64, height=48, frames=10, fps=FPS)
    config = _per_source_bench_config(tmp_path, clip)
    result = run_sources_bench(config, [2], frames_per_source=10, warmup=6, realtime=True, workers=[1, 2])
    for run in result.runs:
        assert run.frames == 20 and run.drops == 0
        p50, p95, p99 = run.steady_capture_latency_ms
        assert p50 is not None and p95 is not None and p99 is not None
        assert 0 <= p50 <= p95 <= p99, run.steady_capture_latency_ms
    assert result.to_dict()["runs"][1]["steady_capture_latency_ms"][0] is not None


def _worker_pids() -> list[int]:
    """This process's worker children (`python -m streamflow.cluster.processes`), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == os.getpid() and b"streamflow.cluster.processes" in command:
            pids.append(int(entry.name))
    return pids


def test_the_bench_says_when_a_worker_was_lost_and_its_results_are_missing(tmp_path: Path) -> None:
    # A worker's result records come back when it finishes; a worker that dies takes them along. The
    # row must say so rather than report figures that silently lack a share of the sources.
    from streamflow.cli.report import sources_bench_table

    clip = write_clip(tmp_path / "c.mp4", width=64, height=48, frames=40, fps=FPS)
    config = _per_source_bench_config(tmp_path, clip, top="cluster: {backend: processes, poll_interval_s: 0.2}\n")
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_worker_once_results_flow() -> None:
        wait_for(lambda: len(_worker_pids()) == 2, timeout=120, what="two workers")
        wait_for(
            lambda: out.exists() and sum(len(p.read_text().splitlines()) for p in out.glob("*.jsonl")) >= 10,
            timeout=120,
            what="results from the workers",
        )
        pid = _worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_one_worker_once_results_flow)
    killer.start()
    result = run_sources_bench(config, [4], frames_per_source=40, warmup=4, realtime=True, workers=[2])
    killer.join(timeout=10)
    assert killed, "a worker was killed during the run"
    (run,) = result.runs
    assert run.workers_lost == 1 and run.failed == 0
    assert result.to_dict()["runs"][0]["workers_lost"] == 1
    caption = str(sources_bench_table(result).caption)
    assert "4 sources over 2 workers: 1 worker(s) lost during the run" in caption
