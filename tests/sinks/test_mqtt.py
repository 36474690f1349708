"""How the mqtt transport drives paho-mqtt, against a real mosquitto, read back by an independent client."""

from __future__ import annotations

import time
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


@pytest.mark.parametrize("qos", [0, 1])
def test_a_batch_larger_than_the_socket_buffers_arrives_whole_and_in_order(server: MosquittoServer, qos: int) -> None:
    # About 8 MB in one batch: paho's socket stops taking writes midway, the rest goes out as it drains.
    pad = "x" * 1600
    batch = [("t/a", b'{"source_id":"a","index":%d,"pad":"%s"}' % (i, pad.encode())) for i in range(5000)]
    collector = MqttCollector(server, topic="t/#")
    transport = connected(server, qos=qos)
    try:
        transport.send(batch)
        messages = collector.wait_for(5000)
    finally:
        transport.close()
        collector.close()
    assert [m["index"] for m in messages] == list(range(5000))


def test_an_idle_connection_is_kept_alive_past_the_keepalive(server: MosquittoServer) -> None:
    # The broker drops a client silent for 1.5 keep-alives (3 s here); idle() lets paho ping in time.
    collector = MqttCollector(server, topic="t/#")
    transport = connected(server, qos=1, keepalive=2)
    try:
        transport.send([("t/a", b'{"source_id":"a","index":0}')])
        idle_until = time.monotonic() + 4.5
        while time.monotonic() < idle_until:
            transport.idle()
            time.sleep(0.2)
        transport.send([("t/a", b'{"source_id":"a","index":1}')])  # ConnectionError if the broker dropped us
        messages = collector.wait_for(2)
    finally:
        transport.close()
        collector.close()
    assert [m["index"] for m in messages] == [0, 1]


def test_a_qos0_batch_is_not_written_into_a_connection_the_broker_closed(server: MosquittoServer) -> None:
    transport = connected(server, qos=0)
    try:
        server.kill()  # SIGTERM: mosquitto closes its connections before it exits
        with pytest.raises(ConnectionError, match="connection lost"):
            transport.send([("t/a", b"{}")])
    finally:
        transport.close()
