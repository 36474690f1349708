"""`streamflow run` with the redis and mqtt sinks: one-line errors with exit 1 when the server is
unreachable or refuses the password (which appears nowhere), and Ctrl-C flushes what is buffered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.message_servers import MosquittoServer, RedisServer, free_port, missing_binary, redis_messages

TESTS = Path(__file__).parents[1]
SINKS = [("redis", RedisServer, "redis-server"), ("mqtt", MosquittoServer, "mosquitto")]


def write_config(
    tmp_path: Path, sink: str, port: int, *, count: int = 5, interval: float = 0.0, extra: str = ""
) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"""
name: publish
device: cpu
stages:
  - name: source
    type: support.stages:CountingSource
    count: {count}
    interval: {interval}
  - name: results
    type: {sink}
    port: {port}
{extra}  - name: lines
    type: support.stages:LinesSink
    path: {tmp_path / "lines.jsonl"}
""")
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(("sink", "server_class", "binary"), SINKS, ids=[s[0] for s in SINKS])
def test_unreachable_server_exits_1_with_one_line(tmp_path: Path, sink: str, server_class: type, binary: str) -> None:
    port = free_port()
    result = cli("run", str(write_config(tmp_path, sink, port)), "-q")
    assert result.returncode == 1, result.stderr
    (line,) = error_lines(result)
    assert f"{sink} sink 'results' (127.0.0.1:{port}" in line and "cannot connect" in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("sink", "server_class", "binary"), SINKS, ids=[s[0] for s in SINKS])
def test_wrong_password_exits_1_and_the_password_appears_nowhere(
    tmp_path: Path, sink: str, server_class: type, binary: str
) -> None:
    if missing_binary(binary):
        pytest.skip(str(missing_binary(binary)))
    with server_class(password="right-horse-battery") as server:
        extra = "    username: streamflow\n" if sink == "mqtt" else ""
        config = write_config(tmp_path, sink, server.port, extra=extra)
        stats = tmp_path / "stats.json"
        env = {f"STREAMFLOW_{sink.upper()}_PASSWORD": "wrong-staple-9"}
        result = cli("run", str(config), "--stats-json", str(stats), "-v", env=env)
    assert result.returncode == 1
    failure = [line for line in error_lines(result) if line.startswith("error:")]
    assert len(failure) == 1 and f"{sink} sink 'results' (127.0.0.1:{server.port}" in failure[0], result.stderr
    everything = result.stdout + result.stderr + stats.read_text()
    assert "wrong-staple-9" not in everything and "right-horse-battery" not in everything


def test_ctrl_c_flushes_what_is_buffered(tmp_path: Path) -> None:
    if missing_binary("redis-server"):
        pytest.skip(str(missing_binary("redis-server")))
    with RedisServer() as server:
        config = write_config(tmp_path, "redis", server.port, count=0, interval=0.01)
        process = subprocess.Popen(
            [sys.executable, "-m", "streamflow.cli", "run", str(config), "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(TESTS)},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.client().xlen("streamflow:source:detections") < 5:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        published = [m["index"] for m in redis_messages(server, "streamflow:source:detections")]
    lines = (tmp_path / "lines.jsonl").read_text().splitlines()
    assert lines[-1] == '{"end": true}'
    passed_on = [json.loads(line)["index"] for line in lines[:-1]]
    assert published == passed_on == list(range(len(published))), "every frame taken in was published, in order"
