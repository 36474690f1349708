"""Publish messages to an MQTT broker with paho-mqtt 2.x, driven from the publisher's I/O thread.

paho-mqtt (the maintained Eclipse client) speaks the protocol: CONNECT, PUBLISH, PUBACK, keep-alive
pings, TLS (`tls_set_context`). The transport drives its `Client` by hand, through what paho offers
an outside event loop (the socket hooks, and `loop_read`, `loop_write`, `loop_misc` around our own
`select`), so the whole connection lives in the publisher's one I/O thread: no second network
thread, and none of the wake-up writes that `loop()` makes paho do for every publish.

`publish()` queues a message in paho; the transport has paho write what is queued, and read what the
broker sent, after every `_STEP_EVERY` messages and at the end of the batch. Reading during the batch
lets paho drop acknowledged messages early: it keeps several objects per unacknowledged message, and
the fewer of them live through a garbage collection, the less often Python runs a full one (a pass
over every object the process holds). A batch is done when the broker has acknowledged every message
(QoS 1), or when all of it was written to the socket (QoS 0: a broker that dies then loses what it
had not yet routed); before a batch, whatever the broker sent is read, so a connection the broker
closed is noticed before a QoS 0 batch is written into it. Each connection is a fresh client
with a clean session: messages of a lost connection are resent by the publisher, not by paho, so
nothing is sent twice by two mechanisms.

What the socket needs, on Linux: the batch's writes are corked (`TCP_CORK`), so the kernel packs the
batch into full segments instead of one segment, and one broker wake-up, per message; and the
broker's packets are acknowledged at once (`TCP_QUICKACK`). A broker writes each PUBACK on its own and
its Nagle algorithm holds the next ones back until the first is acknowledged, which the delayed ACK
puts off until the kernel's delayed-ACK timer fires: a stall per batch.

Example:
    >>> transport = MqttTransport(host="127.0.0.1", port=1883, qos=1, password="s3cret")
    >>> transport.address
    '127.0.0.1:1883'
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from streamflow.sinks.publisher import Message, SinkConnectionError, Tls, Transport, log

__all__ = ["MqttTransport"]

# The longest wait for the broker in one step; the timeout is checked between steps.
_POLL_S = 0.05
# Messages published between two rounds of paho's network work within a batch.
_STEP_EVERY = 64
# Linux only (elsewhere the options are skipped: batches then go out a message a segment).
_CORK = getattr(socket, "TCP_CORK", None)
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _nothing(*_args: Any) -> None:
    """A socket hook with nothing to do: `_step` looks at paho's socket itself."""


def _no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Small packets outside batches (CONNECT, PINGREQ, DISCONNECT) go out at once, not after an ACK."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextlib.contextmanager
def _corked(sock: Any) -> Iterator[None]:
    """Hold back partial TCP segments while inside (TCP_CORK), send them on exit."""
    if _CORK is None or not isinstance(sock, socket.socket):
        yield
        return
    sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # a socket that broke meanwhile: the next step reports it
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)


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
        tls: Tls | None = None,
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
        # paho pings once `keepalive` seconds passed without a write, when its keep-alive check runs (idle()):
        # run it every second, well inside the 1.5 keep-alives a broker waits before it drops a client.
        self.idle_interval = 1.0
        self.tls = tls
        self._tls_context: ssl.SSLContext | None = None  # made at the first connect, where errors name the sink
        self._client: Any = None

    def connect(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
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
        client.on_socket_open = _no_delay
        # With these hooks set, paho leaves writing to the event loop (`_step`) instead of writing each
        # packet as it is queued.
        client.on_socket_register_write = _nothing
        client.on_socket_unregister_write = _nothing
        try:
            if self.tls is not None:
                if self._tls_context is None:
                    self._tls_context = self.tls.context()
                client.tls_set_context(self._tls_context)
            # The TCP connection and the TLS handshake, bounded by `connect_timeout`; then CONNECT is written.
            rc = client.connect(self.host, self.port, keepalive=self.keepalive)
        except ssl.SSLError as error:  # a certificate that fails to load or to verify
            raise ConnectionError(f"TLS: {error}") from None
        except OSError as error:
            raise ConnectionError(f"{self.address}: {error.strerror or error}") from None
        self._client = client
        try:
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"connection lost: {mqtt.error_string(rc)}")
            self._wait(lambda: "reason" in answer, "no CONNACK")
        except BaseException:
            self.close()
            raise
        reason = answer["reason"]
        if reason.is_failure:
            self.close()
            if reason == "Server unavailable":  # the broker is up but not ready: worth retrying
                raise ConnectionError(f"the broker refused the connection: {reason}")
            raise SinkConnectionError(f"the broker refused the connection: {reason}")

    def send(self, batch: Sequence[Message]) -> None:
        import paho.mqtt.client as mqtt

        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        self._step(0)  # what the broker sent meanwhile: a closed connection shows here, before the batch
        qos = self.qos
        publish = client.publish
        # QoS 1: the messages not yet acknowledged, oldest first; acknowledged ones are let go of as the
        # batch goes out (see the module docstring).
        unacknowledged: collections.deque[Any] = collections.deque()
        with _corked(client.socket()):
            for count, (topic, payload) in enumerate(batch, 1):
                info = publish(topic, payload, qos=qos)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
                if qos:
                    unacknowledged.append(info)
                if not count % _STEP_EVERY:
                    self._step(0)
                    while unacknowledged and unacknowledged[0].is_published():
                        unacknowledged.popleft()
            if client.loop_write() != mqtt.MQTT_ERR_SUCCESS:  # the rest of the batch, as far as the socket takes it
                raise ConnectionError("connection lost while writing the batch")
        if qos:
            for info in unacknowledged:  # acknowledgements come in the order of publishing
                if not info.is_published():
                    self._wait(info.is_published, "the broker did not acknowledge")
        else:
            # Written when paho has nothing left to write (a message waits only when the socket is full).
            self._wait(lambda: not client.want_write(), "the socket did not take the batch")

    def idle(self) -> None:
        """paho's keep-alive: a PINGREQ when due, its PINGRESP read, a broker gone silent noticed."""
        if self._client is not None:
            self._step(0)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
            client.loop_write()  # DISCONNECT, if the socket takes it now
        except Exception as error:  # the connection may be broken already; nothing to save
            log.debug("mqtt %s: disconnect: %s", self.address, type(error).__name__)
        finally:
            sock = client.socket()
            if sock is not None:
                sock.close()

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        """Run paho's network steps until `done()`; raise `TimeoutError` after `timeout` seconds
        without it (a stall: the timeout restarts for every message waited on)."""
        deadline = time.monotonic() + self.timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {self.timeout:g} s")
            self._step(_POLL_S)

    def _step(self, timeout: float) -> None:
        """One round of paho's network work: keep the connection alive, wait up to `timeout` for the
        socket, read what came and write what is queued. Raise `ConnectionError` if the connection is lost."""
        import paho.mqtt.client as mqtt

        client = self._client
        rc = client.loop_misc()  # a PINGREQ queued when due; a broker silent for too long closes the connection
        sock = client.socket()
        if rc != mqtt.MQTT_ERR_SUCCESS or sock is None:
            raise ConnectionError(f"connection lost: {mqtt.error_string(rc)}")
        if _QUICKACK is not None:  # the kernel leaves quick-ACK mode by itself: set it before each wait
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        # TLS may hold decrypted bytes that select() does not see.
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        writers = [sock] if client.want_write() else []
        readable, writable, _ = select.select([sock], writers, [], 0 if pending else timeout)
        if readable or pending:
            rc = client.loop_read()
        if rc == mqtt.MQTT_ERR_SUCCESS and writable:
            rc = client.loop_write()
        if rc == mqtt.MQTT_ERR_CONN_REFUSED:  # a CONNACK with a failure code: on_connect has the reason
            return
        if rc != mqtt.MQTT_ERR_SUCCESS or client.socket() is None:
            raise ConnectionError(f"connection lost: {mqtt.error_string(rc)}")
