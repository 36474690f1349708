from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", *args], capture_output=True, text=True, env=env, timeout=120, **kwargs
    )


def config(tmp_path: Path, *, count: int = 5, interval: float = 0.0, extra: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
name: cli
device: cpu
stages:
  - name: source
    type: support.stages:CountingSource
    count: {count}
    interval: {interval}
{extra}  - name: writer
    type: support.stages:LinesSink
    path: {tmp_path / "out.jsonl"}
""")
    return path


def test_run_succeeds_and_writes_stats_json(tmp_path: Path) -> None:
    result = cli("run", str(config(tmp_path)), "--stats-json", str(tmp_path / "stats.json"))
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    writer = next(s for s in stats["stages"] if s["name"] == "writer")
    assert writer["frames_in"] == 5 and "p95" in writer["latency_ms"]
    assert "writer" in result.stderr  # the summary table


def test_run_says_where_its_start_up_time_went(tmp_path: Path) -> None:
    launched = time.perf_counter()
    result = cli("run", str(config(tmp_path)), "--stats-json", str(tmp_path / "stats.json"))
    exited = time.perf_counter() - launched
    assert result.returncode == 0, result.stderr
    startup = json.loads((tmp_path / "stats.json").read_text())["startup"]
    names = [step["step"] for step in startup["steps"]]
    assert names[:4] == [
        "python and imports",
        "config read and checked",
        "pipeline built",
        "inputs and outputs checked",
    ]
    assert names.index("writer: setup") < names.index("first source open") < names.index("first result")
    assert names.index("first frame out of a source") < names.index("writer: first call") == len(names) - 2
    times = [step["at_s"] for step in startup["steps"]]
    assert times == sorted(times) and all(step["took_s"] >= 0 for step in startup["steps"])
    # The clock starts at the process's start: the interpreter's own start-up counts, and nothing
    # can take longer than the parent saw the whole process take.
    assert startup["steps"][0]["at_s"] > 0 and startup["first_result_s"] == times[-1] < exited
    assert f"start-up: first result {startup['first_result_s']:.2f} s after launch" in result.stderr


def test_invalid_config_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = config(tmp_path)
    path.write_text(path.read_text().replace("count: 5", "cuont: 5"))
    result = cli("run", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "field 'cuont'" in lines[0] and "did you mean 'count'" in lines[0]
    assert cli("validate", str(path)).returncode == 2
    assert cli("run", str(tmp_path / "missing.yaml")).returncode == 2


def test_failure_while_running_exits_1_naming_the_stage(tmp_path: Path) -> None:
    extra = "  - name: checker\n    type: support.stages:FailOn\n    index: 2\n"
    result = cli("run", str(config(tmp_path, extra=extra)))
    assert result.returncode == 1
    assert "stage 'checker': KeyError" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out.jsonl").read_text().splitlines()[-1] == '{"end": true}'


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_input_drains_and_finalizes(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    path = config(tmp_path, count=0, interval=0.01)
    process = subprocess.Popen(
        [sys.executable, "-m", "streamflow.cli", "run", str(path), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out = tmp_path / "out.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 5):
        time.sleep(0.05)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    lines = out.read_text().splitlines()
    assert lines[-1] == '{"end": true}', "the output was finalized"
    indices = [json.loads(line)["index"] for line in lines[:-1]]
    assert indices == list(range(len(indices))), "every frame taken in was written, in order"


def test_stages_lists_registered_types_with_options() -> None:
    result = cli("stages")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # rich wraps long cells: compare words, not lines
    assert "discard" in text and "same as discard" in text  # `null`, the old name
    assert "boxes | blur | pixelate" in text and "<AnnotateMode" not in text  # allowed values, plain defaults
    for setting in ("queue_size", "overflow", "batch_size", "device", "block | drop_oldest"):
        assert setting in text
    assert "stages.sr_output:SuperResolutionOutput" in result.stdout  # class names whole, on one line


def test_missing_input_video_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
name: missing
device: cpu
stages:
  - name: source
    type: decode
    uri: {tmp_path / "absent.mp4"}
  - name: sink
    type: "null"
""")
    result = cli("run", str(path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "stage 'source' (decode): field 'uri': file not found" in lines[0]


def test_help_does_not_import_the_heavy_libraries() -> None:
    """`streamflow --help` (and every command's --help) loads no torch, PyAV or ONNX: it answers at once."""
    script = (
        "import sys\n"
        "from streamflow.cli import app\n"
        "for args in (['--help'], ['run', '--help'], ['build-engine', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, (args, done.code)\n"
        "heavy = {'torch', 'torchvision', 'av', 'onnx', 'onnxruntime', 'numpy'} & set(sys.modules)\n"
        "print('heavy:', sorted(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("heavy: []")
