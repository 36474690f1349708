"""The `redis` and `mqtt` sinks over TLS, against redis-server and mosquitto that require a client certificate.

The certificates are made for the test (a throw-away CA, `openssl`). The sink verifies the server by the
CA and presents its own certificate; messages are read back over TLS by a real client. Without its
certificate, or trusting another CA, the sink fails at start with one line naming itself and the address.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stages.mqtt_sink import MqttSink
from stages.redis_sink import RedisSink
from streamflow.sinks import SinkConnectionError
from streamflow.sinks.stage import PublishingSink
from streamflow.testing import make_frames, run_stage
from support.message_servers import (
    Certificates,
    MosquittoServer,
    MqttCollector,
    RedisServer,
    make_certificates,
    missing_binary,
    redis_messages,
)

CASES = [("redis", "redis-server", RedisServer, RedisSink), ("mqtt", "mosquitto", MosquittoServer, MqttSink)]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if missing_binary("openssl"):
        pytest.skip(str(missing_binary("openssl")))
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=CASES, ids=[case[0] for case in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, Callable[..., Any], Callable[..., PublishingSink]]:
    name, binary, server, sink = request.param
    if missing_binary(binary):
        pytest.skip(str(missing_binary(binary)))
    return name, server, sink


def test_messages_arrive_over_tls_with_a_client_certificate(case: Any, certificates: Certificates) -> None:
    name, server_type, sink_type = case
    tls = {"ca_file": certificates.ca, "cert_file": certificates.client_cert, "key_file": certificates.client_key}
    with server_type(tls=certificates) as server:
        sink = sink_type(port=server.port, tls=tls, write_batch=4)
        if name == "redis":
            run_stage(sink, make_frames(10, source_id="cam"))
            messages = redis_messages(server, "streamflow:cam:detections")
        else:
            collector = MqttCollector(server)
            try:
                run_stage(sink, make_frames(10, source_id="cam"))
                messages = collector.wait_for(10)
            finally:
                collector.close()
    assert [m["index"] for m in messages] == list(range(10))


@pytest.mark.parametrize("mistake", ["no client certificate", "another CA"])
def test_a_refused_tls_connection_fails_at_start(
    case: Any, certificates: Certificates, mistake: str, tmp_path: Path
) -> None:
    name, server_type, sink_type = case
    if mistake == "no client certificate":
        tls = {"ca_file": certificates.ca}
    else:
        other = make_certificates(tmp_path)
        tls = {"ca_file": other.ca, "cert_file": other.client_cert, "key_file": other.client_key}
    with server_type(tls=certificates) as server:
        sink = sink_type(name="out", port=server.port, tls=tls)
        with pytest.raises(SinkConnectionError, match=rf"^{name} sink 'out' \(127.0.0.1:{server.port}[/0]*\): cannot"):
            run_stage(sink, make_frames(1))


def test_a_key_without_its_certificate_is_a_config_error(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("not used")
    with pytest.raises(ValueError, match=r"tls\.key_file needs tls\.cert_file"):
        RedisSink(tls={"key_file": key})
