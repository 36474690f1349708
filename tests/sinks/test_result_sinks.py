"""The `redis` and `mqtt` sinks against real servers (redis-server, mosquitto on 127.0.0.1).

Each case runs for both sinks: every frame arrives as one message, in order per source, with the
shared result schema; a server killed mid-run and restarted on the same port loses nothing with
`block` and drops only what it counts with `drop_oldest`; an unreachable server or a wrong password
fails at start with one line naming the sink and address, and the password appears nowhere.
Restarts wait for what the sink reports (its counters), never for a fixed time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from stages.mqtt_sink import MqttSink
from stages.redis_sink import RedisSink
from streamflow import Frame, Pipeline
from streamflow.sinks import SinkConnectionError, SinkDeliveryError
from streamflow.sinks.stage import PublishingSink
from streamflow.testing import ListSource, make_frames, run_stage
from support.message_servers import (
    AtFrame,
    MosquittoServer,
    MqttCollector,
    RedisServer,
    distinct,
    free_port,
    missing_binary,
    redis_messages,
    run_through_outage,
)

FAST_RECONNECT = {"initial": 0.05, "max": 0.5}


@dataclass(frozen=True)
class Backend:
    name: str
    binary: str
    server: Callable[..., Any]
    sink: Callable[..., PublishingSink]

    def options(self, server: Any, **options: Any) -> dict[str, Any]:
        if self.name == "mqtt" and server.password:
            options.setdefault("username", server.user)
        return {"port": server.port, **options}

    @contextlib.contextmanager
    def consumer(self, server: Any) -> Iterator[Callable[[str, int], list[dict[str, Any]]]]:
        """`read(source, count)`: the messages of one source a real client got, once `count` arrived."""
        if self.name == "redis":
            yield lambda source, _count: redis_messages(server, f"streamflow:{source}:detections")
            return
        collector = MqttCollector(server)
        try:
            yield lambda source, count: [m for m in collector.wait_for(count) if m["source_id"] == source]
        finally:
            collector.close()


BACKENDS = [
    Backend("redis", "redis-server", RedisServer, RedisSink),
    Backend("mqtt", "mosquitto", MosquittoServer, MqttSink),
]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    reason = missing_binary(request.param.binary)
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture
def server(backend: Backend) -> Iterator[Any]:
    with backend.server() as running:
        yield running


def frames_with_results(count: int, source_id: str = "0") -> list[Frame]:
    frames = make_frames(count, source_id=source_id)
    for frame in frames:
        frame.results["boxes"] = torch.tensor([[1.0, 2.0, 3.0, 4.0 + frame.index]])
        frame.results["scores"] = torch.tensor([0.5])
    return frames


def test_every_frame_is_one_message_in_order_per_source(backend: Backend, server: Any) -> None:
    frames = [f for pair in zip(frames_with_results(30, "a"), frames_with_results(30, "b"), strict=True) for f in pair]
    sink = backend.sink(**backend.options(server, write_batch=7))
    with backend.consumer(server) as read:
        run_stage(sink, frames)
        for source in ("a", "b"):
            messages = read(source, 60)
            assert [m["index"] for m in messages] == list(range(30))
            assert messages[3]["results"] == {"boxes": [[1.0, 2.0, 3.0, 7.0]], "scores": [0.5]}
            assert {m["schema"] for m in messages} == {1}
    assert sink.counters["published"] == 60 and sink.counters["dropped"] == 0
    assert sink.counters["batches"] >= 60 // 7


def test_block_loses_nothing_when_the_server_restarts_mid_run(backend: Backend, server: Any) -> None:
    sink = backend.sink(
        **backend.options(server, buffer_size=4, buffer_policy="block", write_batch=3, reconnect=FAST_RECONNECT)
    )
    with backend.consumer(server) as read:
        run_through_outage(
            sink, server, frames_with_results(60), kill_at=10, restart_when=lambda c: c["connection_losses"] > 0
        )
        messages = read("0", 60)
    assert [m["index"] for m in distinct(messages)] == list(range(60))
    assert sink.counters["published"] == 60 and sink.counters["dropped"] == 0
    assert sink.counters["connection_losses"] >= 1 and sink.counters["reconnects"] >= 1


def test_drop_oldest_counts_what_it_dropped_and_totals_add_up(backend: Backend, server: Any) -> None:
    sink = backend.sink(
        **backend.options(server, buffer_size=4, buffer_policy="drop_oldest", write_batch=2, reconnect=FAST_RECONNECT)
    )
    with backend.consumer(server) as read:
        run_through_outage(
            sink, server, frames_with_results(80), kill_at=10,
            restart_when=lambda c: c["connection_losses"] > 0 and c["dropped"] > 0,
        )  # fmt: skip
        counters = sink.counters
        received = [m["index"] for m in distinct(read("0", counters["published"]))]
    assert counters["dropped"] > 0
    assert counters["published"] + counters["dropped"] == 80
    assert len(received) == counters["published"]
    assert received == sorted(received), "what arrives keeps its order"


def test_server_gone_for_good_fails_after_give_up_after(backend: Backend, server: Any) -> None:
    sink = backend.sink(
        **backend.options(server, buffer_size=2, write_batch=1, reconnect={**FAST_RECONNECT, "give_up_after": 0.5})
    )
    label = rf"{backend.name} sink '{sink.name}' \(127.0.0.1:{server.port}[/0]*\): unreachable for"
    with pytest.raises(SinkConnectionError, match=label):
        Pipeline([ListSource(make_frames(30)), AtFrame(5, server.kill, name="killer"), sink], device="cpu").run_sync()


def test_undelivered_at_end_of_stream_is_an_error_after_flush_timeout(backend: Backend, server: Any) -> None:
    sink = backend.sink(
        **backend.options(
            server, buffer_policy="drop_oldest", flush_timeout=0.3, reconnect={**FAST_RECONNECT, "give_up_after": None}
        )
    )
    with pytest.raises(SinkDeliveryError, match=r"message\(s\) not delivered within flush_timeout \(0.3 s\)"):
        Pipeline([ListSource(make_frames(20)), AtFrame(5, server.kill, name="killer"), sink], device="cpu").run_sync()


def test_unreachable_at_start_names_sink_and_address(backend: Backend) -> None:
    port = free_port()
    with pytest.raises(
        SinkConnectionError, match=rf"^{backend.name} sink 'out' \(127.0.0.1:{port}[/0]*\): cannot connect"
    ):
        run_stage(backend.sink(name="out", port=port), make_frames(1))


def test_wrong_password_is_refused_and_never_shown(backend: Backend) -> None:
    with backend.server(password="right-horse-battery") as server:
        sink = backend.sink(**backend.options(server, password="wrong-staple-9"))
        with pytest.raises(SinkConnectionError) as caught:
            run_stage(sink, make_frames(1))
        text = f"{caught.value} {sink!r} {sink.config!r} {sink.config.model_dump()} {sink.counters}"
        assert "wrong-staple-9" not in text and "right-horse-battery" not in text
        assert str(caught.value).startswith(f"{backend.name} sink '{sink.name}' (127.0.0.1:{server.port}")
        with backend.consumer(server) as read:
            run_stage(backend.sink(**backend.options(server, password="right-horse-battery")), make_frames(2))
            assert len(read("0", 2)) == 2


def test_password_from_the_environment(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    with backend.server(password="from-env") as server:
        monkeypatch.setenv(f"STREAMFLOW_{backend.name.upper()}_PASSWORD", "from-env")
        with backend.consumer(server) as read:
            run_stage(backend.sink(**backend.options(server)), make_frames(3))
            assert len(read("0", 3)) == 3


def test_redis_maxlen_caps_each_stream_approximately() -> None:
    if missing_binary("redis-server"):
        pytest.skip(str(missing_binary("redis-server")))
    with RedisServer() as server:
        run_stage(RedisSink(port=server.port, maxlen=100, stream="capped:{source}"), make_frames(2000))
        length = server.client().xlen("capped:0")
    # `MAXLEN ~` trims whole radix-tree nodes (100 entries each by default): at least 100 stay, far fewer than 2000.
    assert 100 <= length < 2000


def test_mqtt_qos0_delivers_to_a_live_subscriber() -> None:
    if missing_binary("mosquitto"):
        pytest.skip(str(missing_binary("mosquitto")))
    with MosquittoServer() as server:
        collector = MqttCollector(server, topic="results/#")
        try:
            run_stage(MqttSink(port=server.port, qos=0, topic="results/{source}"), make_frames(50, source_id="cam"))
            assert [m["index"] for m in collector.wait_for(50)] == list(range(50))
        finally:
            collector.close()


@pytest.mark.parametrize(
    ("sink", "options", "error"),
    [
        (RedisSink, {"stream": "x:{camera}"}, r"stream may only use \{source\}"),
        (MqttSink, {"topic": "a/{source}/#"}, "wildcards"),
        (MqttSink, {"qos": 2}, "qos"),
    ],
)
def test_bad_options(sink: Callable[..., PublishingSink], options: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        sink(**options)
