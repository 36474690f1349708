"""Every YAML and Python snippet the README shows runs as shown (from the repository root, on the CPU)."""

from __future__ import annotations

import json
import re
import runpy
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.publish as publish
import pytest
import yaml

from streamflow.config import build_pipeline, load_config
from support.message_servers import MosquittoServer, MqttCollector, RedisServer, missing_binary, redis_messages

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def snippets(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_the_readme_shows_the_snippets_tested_here() -> None:
    assert len(snippets("yaml")) == 6 and len(snippets("python")) == 3, "update this test with the README"


def test_pipeline_in_yaml_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "A pipeline in YAML" snippet, saved as a file in the repository root and run, writes detections."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FACES_JSONL", str(tmp_path / "faces.jsonl"))
    config = tmp_path / "my_faces.yaml"
    config.write_text(snippets("yaml")[0])
    load_config(config)  # what `streamflow validate` checks
    stats = build_pipeline(config, max_frames=8).run_sync()  # device: auto (the CPU here)
    lines = (tmp_path / "faces.jsonl").read_text().splitlines()
    assert len(lines) == 8 == stats.stage("detections").frames_in
    # Three people in every frame of the sample (samples/faces_boxes.json); CenterFace finds them all.
    assert [len(json.loads(line)["results"]["boxes"]) for line in lines] == [3] * 8


def test_custom_stage_in_python_and_from_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python brighten.py` prints the frame count; the YAML beside it finds `brighten:Brighten` by itself."""
    script = tmp_path / "brighten.py"
    script.write_text(snippets("python")[0])
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(script), run_name="__main__")
    frames, _, fps, _ = capsys.readouterr().out.split()
    assert int(frames) == 120  # every frame of samples/faces.mp4
    assert float(fps) >= 0
    config = tmp_path / "brighter.yaml"
    config.write_text(snippets("yaml")[1])
    pipeline = build_pipeline(config, max_frames=5)  # brighten.py sits beside the config, not on the path
    assert type(pipeline.stages[1]).__name__ == "Brighten"
    stats = pipeline.run_sync()
    assert stats.stage("sink").frames_in == 5


def test_the_scrape_config_targets_the_api_default_bind() -> None:
    from streamflow.api import parse_bind

    scrape = yaml.safe_load(snippets("yaml")[4])["scrape_configs"][0]
    (target,) = scrape["static_configs"][0]["targets"]
    host, port = parse_bind(target)
    assert host == "127.0.0.1" and f"--api {host}:{port}" in README


def test_many_sources_snippet_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "many.yaml"
    config.write_text(snippets("yaml")[3])
    monkeypatch.setenv("CAM_PASSWORD", "pw")
    loaded = load_config(config)  # what `streamflow validate` checks
    assert [s.id for s in loaded.sources or []] == ["lobby", "door", "replay"]
    pipeline = build_pipeline(loaded)  # every source built from the template (nothing opened)
    assert pipeline.source_ids == ["lobby", "door", "replay"]
    assert type(pipeline.source_stage("lobby")).__name__ == "RtspSource"  # from the rtsp:// scheme
    assert type(pipeline.source_stage("replay")).__name__ == "Decode"


class Consumer:
    """A README consumer snippet run as its own program; a thread collects the lines it prints."""

    def __init__(self, code: str, tmp_path: Path, name: str) -> None:
        script = tmp_path / f"{name}.py"
        script.write_text(code)
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())

    def read_until(
        self, done: Callable[[list[str]], bool], timeout: float = 60.0, poll: Callable[[], object] = bool
    ) -> list[str]:
        """The lines once `done(lines)` holds, calling `poll()` while waiting; fails with what was printed."""
        deadline = time.monotonic() + timeout
        while not done(list(self.lines)):
            assert self.process.poll() is None, f"the consumer ended: {self.lines}"
            assert time.monotonic() < deadline, f"the consumer printed only: {self.lines}"
            poll()
            time.sleep(0.1)
        return list(self.lines)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join()


@pytest.mark.skipif(
    bool(missing_binary("redis-server", "mosquitto")), reason=str(missing_binary("redis-server", "mosquitto"))
)
def test_result_sinks_and_consumer_snippets_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The redis and mqtt stages of "Result messages", placed before the first snippet's JSONL sink, and
    both consumer snippets, against real servers. Only the ports change: the tests' servers listen on
    free ports, not the default ones the README uses."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FACES_JSONL", str(tmp_path / "faces.jsonl"))
    pipeline_text, sinks_text = snippets("yaml")[0], snippets("yaml")[2]
    redis_code, mqtt_code = snippets("python")[1], snippets("python")[2]
    with RedisServer() as redis, MosquittoServer() as mosquitto:
        sinks = sinks_text.replace("port: 6379", f"port: {redis.port}").replace("port: 1883", f"port: {mosquitto.port}")
        assert sinks.count(f"port: {redis.port}") == 1 and sinks.count(f"port: {mosquitto.port}") == 1
        head, sep, tail = pipeline_text.partition("  - name: detections\n")
        assert sep, "the first snippet ends with its JSONL sink"
        config = tmp_path / "published.yaml"
        config.write_text(head + sinks + sep + tail)
        assert 'connect("127.0.0.1", 1883)' in mqtt_code
        mqtt_consumer = Consumer(
            mqtt_code.replace('connect("127.0.0.1", 1883)', f'connect("127.0.0.1", {mosquitto.port})'), tmp_path, "mqtt"
        )
        collector: MqttCollector | None = None
        try:
            # The consumer gets only what is published after it subscribed: wait for it to print a probe.
            probe = json.dumps({"index": -1, "results": {"boxes": []}})
            mqtt_consumer.read_until(
                lambda lines: any(line.startswith("streamflow/probe/detections") for line in lines),
                poll=lambda: publish.single("streamflow/probe/detections", probe, port=mosquitto.port),
            )
            collector = MqttCollector(mosquitto)
            build_pipeline(config, max_frames=4).run_sync()
            from_mqtt = collector.wait_for(4)
            printed = mqtt_consumer.read_until(lambda lines: sum("streamflow/source/" in x for x in lines) == 4)
            redis_consumer = Consumer(
                redis_code.replace("redis.Redis()", f"redis.Redis(port={redis.port})"), tmp_path, "r"
            )
            try:
                history = redis_consumer.read_until(lambda lines: len(lines) == 4)
            finally:
                redis_consumer.close()
        finally:
            if collector is not None:
                collector.close()
            mqtt_consumer.close()
        from_redis = redis_messages(redis, "streamflow:source:detections")
    assert [m["index"] for m in from_redis] == [0, 1, 2, 3] and history == ["0", "1", "2", "3"]
    assert sorted(m["index"] for m in from_mqtt) == [0, 1, 2, 3]
    assert sorted(x for x in printed if "streamflow/source/" in x) == [
        f"streamflow/source/detections {i} 3 faces" for i in range(4)
    ]
    assert all(len(m["results"]["boxes"]) == 3 for m in from_redis)


def test_cluster_section_validates() -> None:
    """The `cluster:` section of "Many GPUs and machines (Ray)" is a valid ClusterConfig."""
    from streamflow.cluster.config import ClusterConfig

    section = yaml.safe_load(snippets("yaml")[5])["cluster"]
    cluster = ClusterConfig(**section)
    assert (cluster.address, cluster.actors, cluster.gpus_per_actor) == ("auto", 8, 1)
