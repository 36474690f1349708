"""The mqtt transport's protocol edges against a real mosquitto, read back by an independent client (paho-mqtt)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from streamflow.sinks.mqtt import MqttTransport
from support.message_servers import MosquittoServer, MqttCollector, missing_binary


@pytest.fixture
def server() -> Iterator[MosquittoServer]:
    if missing_binary("mosquitto"):
        pytest.skip(str(missing_binary("mosquitto")))
    with MosquittoServer() as running:
        yield running


def connected(server: MosquittoServer, **options: Any) -> MqttTransport:
    transport = MqttTransport(host="127.0.0.1", port=server.port, client_id="test-transport", **options)
    transport.connect()
    return transport


def test_packet_ids_wrap_after_65535_and_big_batches_go_in_windows(server: MosquittoServer) -> None:
    collector = MqttCollector(server, topic="t/#")
    transport = connected(server, qos=1)
    try:
        transport._next_id = 65_533  # the next batch crosses the wrap: ...65535, 1, 2...
        transport.send([("t/a", b'{"source_id":"a","index":%d}' % i) for i in range(5000)])
        messages = collector.wait_for(5000)
    finally:
        transport.close()
        collector.close()
    assert [m["index"] for m in messages] == list(range(5000))


def test_a_payload_needing_three_length_bytes_arrives_whole(server: MosquittoServer) -> None:
    collector = MqttCollector(server, topic="t/#")
    transport = connected(server, qos=1)
    big = b'{"source_id":"a","index":0,"pad":"%s"}' % (b"x" * 40_000)
    try:
        transport.send([("t/a", big), ("t/a", b'{"source_id":"a","index":1}')])
        messages = collector.wait_for(2)
    finally:
        transport.close()
        collector.close()
    assert len(messages[0]["pad"]) == 40_000 and messages[1]["index"] == 1


def test_idle_pings_once_half_the_keepalive_passed_without_a_write(server: MosquittoServer) -> None:
    transport = connected(server, qos=0, keepalive=30)
    try:
        written = transport._last_write
        transport.idle()  # just connected: nothing to do
        assert transport._last_write == written
        transport._last_write -= 15
        transport.idle()  # PINGREQ, and its PINGRESP read back
        assert transport._last_write > written - 15
    finally:
        transport.close()


def test_a_qos0_batch_is_not_written_into_a_connection_the_broker_closed(server: MosquittoServer) -> None:
    transport = connected(server, qos=0)
    try:
        server.kill()  # SIGTERM: mosquitto closes its connections before it exits
        with pytest.raises(ConnectionError, match="the broker closed the connection"):
            transport.send([("t/a", b"{}")])
    finally:
        transport.close()
