"""Face detection on the sample clip (CPU) into the jsonl, redis and mqtt sinks of
configs/face_detect_publish.yaml: real consumers get one message per frame, in order, with the same
content as the JSON lines (all but `wall_time`, the moment each sink made its message)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamflow.config import build_pipeline
from support.message_servers import MosquittoServer, MqttCollector, RedisServer, missing_binary, redis_messages

CONFIG = Path(__file__).parents[2] / "configs" / "face_detect_publish.yaml"
FRAMES = 16


def without_wall_time(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "wall_time"} for m in messages]


@pytest.mark.skipif(
    bool(missing_binary("redis-server", "mosquitto")), reason=str(missing_binary("redis-server", "mosquitto"))
)
def test_face_detection_results_reach_redis_and_mqtt_consumers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACES_OUT", str(tmp_path))
    monkeypatch.chdir(CONFIG.parents[1])  # the config's model and sample paths are relative to the repository
    with RedisServer() as redis, MosquittoServer() as mosquitto:
        collector = MqttCollector(mosquitto)
        try:
            overrides = [f"redis.port={redis.port}", f"mqtt.port={mosquitto.port}"]
            build_pipeline(CONFIG, overrides=overrides, max_frames=FRAMES).run_sync()
            from_mqtt = collector.wait_for(FRAMES)
        finally:
            collector.close()
        from_redis = redis_messages(redis, "streamflow:source:detections")  # decode names frames after its stage
    lines = [json.loads(line) for line in (tmp_path / "face_detect.jsonl").read_text().splitlines()]
    assert [m["index"] for m in lines] == list(range(FRAMES))
    assert sum(len(m["results"]["boxes"]) for m in lines) > 0, "the sample has faces"
    assert set(lines[0]["results"]) == {"boxes", "scores", "landmarks"}
    assert without_wall_time(from_redis) == without_wall_time(lines)
    assert without_wall_time(from_mqtt) == without_wall_time(lines)
    # The README's example message has the keys these messages have.
    readme = (CONFIG.parents[1] / "README.md").read_text()
    example = json.loads(readme.split("## Result messages", 1)[1].split("```json\n", 1)[1].split("```", 1)[0])
    assert list(example) == list(lines[0]) and list(example["results"]) == list(lines[0]["results"])
