"""`streamflow run` under faults, with real processes and real signals (issue 17 items 3, 5, 7):
a stuck stage never hangs the run, and every failure is one line with a meaningful exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_cli import TESTS, cli

WAIT_S = 60  # generous: a loaded machine may take long to start torch; nothing here waits on luck


def start(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "streamflow.cli", "run", str(config), "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def stuck_config(tmp_path: Path, *, extra_top: str = "", stage_extra: str = "") -> Path:
    path = tmp_path / "stuck.yaml"
    path.write_text(f"""
name: stuck
device: cpu
{extra_top}
stages:
  - {{name: source, type: "support.stages:CountingSource", count: 0, interval: 0.005}}
  - {{name: stuck, type: "support.fault_stages:BlockOn", index: 5, marker: '{tmp_path / "blocked"}'{stage_extra}}}
  - {{name: writer, type: "support.stages:LinesSink", path: '{tmp_path / "out.jsonl"}'}}
""")
    return path


def assert_finalized_around_the_stuck_stage(tmp_path: Path, stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "stage 'stuck' (BlockOn) did not return from process()" in stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines == [*({"index": i} for i in range(5)), {"end": True}]  # the writer's teardown ran


def test_second_ctrl_c_ends_a_run_whose_stage_never_returns(tmp_path: Path) -> None:
    stats = tmp_path / "new" / "stats.json"
    process = start(stuck_config(tmp_path), "--stats-json", str(stats))
    wait_for(tmp_path / "blocked", process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=WAIT_S)
    assert process.returncode == 130, stderr
    assert_finalized_around_the_stuck_stage(tmp_path, stderr)
    written = json.loads(stats.read_text())
    assert written["stopped_by"] == "SIGINT" and written["unfinished"] == ["stuck"]


def test_stop_timeout_ends_a_spinning_stage_after_one_sigterm(tmp_path: Path) -> None:
    process = start(stuck_config(tmp_path, extra_top="stop_timeout_s: 1", stage_extra=", spin: true"))
    wait_for(tmp_path / "blocked", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=WAIT_S)
    assert process.returncode == 143, stderr
    assert "stop timeout (1 s): abandoning 'stuck'" in stderr
    assert_finalized_around_the_stuck_stage(tmp_path, stderr)


def test_watchdog_warns_once_about_a_long_call(tmp_path: Path) -> None:
    path = stuck_config(tmp_path, stage_extra=", seconds: 2.0, watchdog_s: 0.5")
    path.write_text(path.read_text().replace("count: 0", "count: 8"))
    result = cli("run", str(path), "-q")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "watchdog" in line]
    assert len(warnings) == 1
    assert "stage 'stuck' (BlockOn) has been busy in one process() call for more than 0.5 s" in warnings[0]


def test_ctrl_c_while_starting_is_one_line_and_130(tmp_path: Path) -> None:
    marker = tmp_path / "importing"
    path = tmp_path / "p.yaml"
    path.write_text("""
name: t
device: cpu
stages:
  - {name: source, type: "support.stages:CountingSource", count: 3}
  - {name: slow, type: "support.slow_import_stages:Slow"}
""")
    process = start(path, env={"STREAMFLOW_TEST_MARKER": str(marker)})
    wait_for(marker, process)  # the stage module is being imported: the pipeline is being built
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=WAIT_S)
    # The stage module sleeps 30 s: a run that ends only then never saw the signal.
    waited = time.monotonic() - sent
    assert process.returncode == 130, f"exit {process.returncode} after {waited:.1f} s: {stderr!r} {stdout!r}"
    assert "Traceback" not in stderr and stderr.strip().splitlines() == [
        "error: interrupted while starting; nothing was written"
    ]


def test_a_failing_run_writes_stats_into_a_new_folder_and_says_one_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("""
name: t
device: cpu
stages:
  - {name: source, type: "support.stages:CountingSource", count: 3}
  - {name: bad, type: "support.fault_stages:Returns", value: dict}
""")
    stats = tmp_path / "missing" / "folder" / "stats.json"
    result = cli("run", str(path), "-q", "--stats-json", str(stats))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stage 'bad' (Returns): process() returned dict" in lines[0]
    assert "allowed: a Frame, a Batch" in lines[0]
    assert "stage 'bad' (Returns)" in json.loads(stats.read_text())["error"]


def test_sys_exit_in_a_stage_is_an_error_of_that_stage(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("""
name: t
device: cpu
stages:
  - {name: source, type: "support.stages:CountingSource", count: 3}
  - {name: quitter, type: "support.fault_stages:Exits", code: 3}
""")
    result = cli("run", str(path), "-q")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "stage 'quitter' (Exits) called sys.exit(3); a stage must raise an exception instead" in result.stderr
