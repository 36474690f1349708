"""Publish messages to an MQTT broker with paho-mqtt 2.x, driven from the publisher's I/O thread.

paho-mqtt is the maintained reference client (Eclipse); its `Client` can be driven by hand (`loop()`),
so the whole connection lives in the publisher's one I/O thread: no second network thread, no
asyncio wrapper that would add a future per message. `publish()` writes at once; with QoS 1 the
batch is done when the broker has acknowledged every message (PUBACK), with QoS 0 when all of it
was written to the socket (a broker that dies then may lose what it had not yet routed).

Each connection is a fresh client with a clean session: messages of a lost connection are resent by
the publisher, not by paho, so nothing is sent twice by two mechanisms.

Example:
    >>> transport = MqttTransport(host="127.0.0.1", port=1883, qos=1, password="s3cret")
    >>> transport.address
    '127.0.0.1:1883'
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

from streamflow.sinks.publisher import Message, SinkConnectionError, Transport, log

__all__ = ["MqttTransport"]

_POLL_S = 0.05  # longest wait inside paho's select(); a broken connection shows within this


@contextlib.contextmanager
def _corked(sock: socket.socket | None) -> Iterator[None]:
    """Hold back partial TCP segments while inside (TCP_CORK), flush them on exit."""
    cork = getattr(socket, "TCP_CORK", None)
    if cork is None or not isinstance(sock, socket.socket):
        yield
        return
    sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # a socket that broke meanwhile: send() reports it
            sock.setsockopt(socket.IPPROTO_TCP, cork, 0)


class MqttTransport(Transport):
    """`PUBLISH topic <json>` for each message, at QoS 0 or 1."""

    kind = "mqtt"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        qos: int = 1,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        timeout: float = 5.0,
    ) -> None:
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos}")
        self.host, self.port, self.qos = host, port, qos
        self.client_id = client_id
        self.username = username
        self._password = password
        self.keepalive = keepalive
        self.timeout = timeout
        self.address = f"{host}:{port}"
        self.secrets = (password,) if password else ()
        self.idle_interval = keepalive / 3
        self._client: Any = None

    def connect(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            reconnect_on_failure=False,
        )
        if self.username is not None or self._password is not None:
            client.username_pw_set(self.username or "", self._password)
        client.connect_timeout = self.timeout
        # 0 = no limit. The publisher bounds what is in flight (one batch); paho's own limit rescans all
        # unacknowledged messages on every PUBACK, which is quadratic in the batch.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)  # no limit inside paho: the publisher's buffer is the bound
        answer: dict[str, Any] = {}
        client.on_connect = lambda _c, _u, _f, reason, _p: answer.setdefault("reason", reason)
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive)
        except OSError as error:
            raise ConnectionError(f"{self.address}: {error.strerror or error}") from None
        deadline = time.monotonic() + self.timeout
        while "reason" not in answer:
            rc = client.loop(timeout=_POLL_S)
            if rc == mqtt.MQTT_ERR_CONN_REFUSED:
                # A CONNACK with a failure code; paho reports it here, the callback may carry the reason.
                reason = answer.get("reason", "bad username or password, or not authorized")
                raise SinkConnectionError(f"the broker refused the connection: {reason}")
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"connection closed before CONNACK ({mqtt.error_string(rc)})")
            if time.monotonic() > deadline:
                client.disconnect()
                raise TimeoutError(f"no CONNACK within {self.timeout:g} s")
        reason = answer["reason"]
        if reason.is_failure:
            client.disconnect()
            raise SinkConnectionError(f"the broker refused the connection: {reason}")
        self._client = client

    def send(self, batch: Sequence[Message]) -> None:
        import paho.mqtt.client as mqtt

        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        infos = []
        # paho writes each PUBLISH with its own send() on a TCP_NODELAY socket: one TCP segment, and one
        # broker wake-up, per message. Corking the socket for the batch lets the kernel pack the batch
        # into full segments, sent when it is uncorked (Linux; elsewhere messages go out one by one).
        sock = client.socket()
        with _corked(sock):
            for topic, payload in batch:
                info = client.publish(topic, payload, qos=self.qos)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
                infos.append(info)
        # Acknowledgements (QoS 1) and socket writes (QoS 0) complete in order of publishing. The
        # timeout bounds a stall (no progress), not the whole batch.
        deadline = time.monotonic() + self.timeout
        for info in infos:
            while not info.is_published():
                rc = client.loop(timeout=_POLL_S)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    raise ConnectionError(f"connection lost: {mqtt.error_string(rc)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"broker did not acknowledge within {self.timeout:g} s")
            deadline = time.monotonic() + self.timeout

    def idle(self) -> None:
        import paho.mqtt.client as mqtt

        if self._client is not None:
            rc = self._client.loop(timeout=0)  # sends PINGREQ when keepalive is due, reads PINGRESP
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"connection lost: {mqtt.error_string(rc)}")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
                client.loop(timeout=0)
            except Exception as error:  # the connection may be broken already; nothing to save
                log.debug("mqtt %s: disconnect: %s", self.address, type(error).__name__)
            finally:
                sock = client.socket()
                if sock is not None:
                    sock.close()
