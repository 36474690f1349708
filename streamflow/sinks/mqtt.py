"""Publish messages to an MQTT broker (MQTT 3.1.1), a batch per write, from the publisher's I/O thread.

The sink only publishes, so it speaks the few packets a publisher needs (CONNECT/CONNACK,
PUBLISH/PUBACK, PINGREQ/PINGRESP, DISCONNECT; OASIS MQTT 3.1.1) itself, on a plain socket that only
the publisher's I/O thread uses. A batch is packed into one buffer and written with one `sendall`;
with QoS 1 the acknowledgements are read in bulk and checked against the packet ids sent (a broker
acknowledges in the order it received, MQTT-4.6.0-2). General clients (paho-mqtt, and those built on
it) make a message object, a lock and a callback per publish and parse each PUBACK with three reads,
which costs more than everything else the sink does for a message.

A batch is done when the broker has acknowledged every message (QoS 1), or when all of it was
written to the socket (QoS 0: a broker that dies then loses what it had not yet routed). Each
connection has a clean session: messages of a lost connection are resent by the publisher, never by
the broker, so nothing is sent twice by two mechanisms.

Example:
    >>> transport = MqttTransport(host="127.0.0.1", port=1883, qos=1, password="s3cret")
    >>> transport.address
    '127.0.0.1:1883'
    >>> transport.pack([("t/1", b"{}")])  # PUBLISH, QoS 1, 9 bytes: topic "t/1", packet id 1, payload
    b'2\\t\\x00\\x03t/1\\x00\\x01{}'
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import time
from collections.abc import Sequence

from streamflow.sinks.publisher import Message, SinkConnectionError, SinkRejectedError, Tls, Transport, log

__all__ = ["MqttTransport", "remaining_length"]

# Control packet types (first byte of the fixed header).
_CONNECT, _CONNACK, _PUBLISH, _PUBACK, _PINGREQ, _PINGRESP, _DISCONNECT = 0x10, 0x20, 0x30, 0x40, 0xC0, 0xD0, 0xE0
_PING = bytes((_PINGREQ, 0))
_GOODBYE = bytes((_DISCONNECT, 0))
_MAX_REMAINING = 268_435_455  # what four length bytes can say
# Messages awaiting acknowledgement at once: far below the 65,535 packet ids, and few enough that the
# acknowledgements (4 bytes each) fit the socket buffers while the batch is still being written.
_WINDOW = 4096
# Why the broker refused a connection (CONNACK return codes 1-5).
_REFUSALS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
# Linux: acknowledge the broker's packets at once. Brokers write each PUBACK on its own and Nagle's
# algorithm holds the next ones back until the first is acknowledged, which a delayed ACK puts off
# until the kernel's delayed-ACK timer fires: a stall per batch.
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def remaining_length(length: int) -> bytes:
    """A packet's remaining length as MQTT writes it: 7 bits a byte, low bits first.

    Example:
        >>> remaining_length(127), remaining_length(128), remaining_length(16_383)
        (b'\\x7f', b'\\x80\\x01', b'\\xff\\x7f')
    """
    if length < 128:
        return bytes((length,))
    if length > _MAX_REMAINING:
        raise SinkRejectedError(f"a message of {length} bytes is over MQTT's limit of {_MAX_REMAINING}")
    out = bytearray()
    while length:
        length, digit = divmod(length, 128)
        out.append(digit | (0x80 if length else 0))
    return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


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
        self.idle_interval = keepalive / 3
        self.tls = tls
        self._tls_context: ssl.SSLContext | None = None  # made at the first connect, where errors name the sink
        self._sock: socket.socket | None = None
        self._inbox = bytearray()
        self._next_id = 1
        self._last_write = 0.0
        # Per topic: PUBLISH's variable header up to the packet id.
        self._topics: dict[str, bytes] = {}

    # -- connection --------------------------------------------------------------------------------
    def connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as error:
            raise ConnectionError(f"{self.address}: {error.strerror or error}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:  # the handshake, bounded by the socket's timeout; a certificate that fails is an OSError
                if self._tls_context is None:
                    self._tls_context = self.tls.context()
                sock = self._tls_context.wrap_socket(sock, server_hostname=self.host)
            except OSError as error:
                sock.close()
                raise ConnectionError(f"TLS: {error}") from None
        self._sock, self._inbox = sock, bytearray()
        try:
            self._write(self._connect_packet())
            kind, body = self._read_packet()
        except BaseException:
            self.close()
            raise
        if kind != _CONNACK or len(body) != 2:
            self.close()
            raise ConnectionError(f"expected CONNACK, got packet type {kind >> 4}")
        code = body[1]
        if code:
            self.close()
            reason = _REFUSALS.get(code, f"return code {code}")
            if code == 3:  # the broker is up but not ready: worth retrying
                raise ConnectionError(f"the broker refused the connection: {reason}")
            raise SinkConnectionError(f"the broker refused the connection: {reason}")

    def _connect_packet(self) -> bytes:
        flags = 0x02  # clean session
        payload = _string(self.client_id)
        # MQTT 3.1.1 allows a password only with a user name (MQTT-3.1.2-22): an empty one then.
        if self.username is not None or self._password is not None:
            flags |= 0x80
            payload += _string(self.username or "")
        if self._password is not None:
            flags |= 0x40
            payload += _string(self._password)
        variable = _string("MQTT") + struct.pack("!BBH", 4, flags, self.keepalive)
        body = variable + payload
        return bytes((_CONNECT,)) + remaining_length(len(body)) + body

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.settimeout(0)
                sock.send(_GOODBYE)
            except OSError as error:  # the connection may be broken already; nothing to save
                log.debug("mqtt %s: disconnect: %s", self.address, type(error).__name__)
            finally:
                sock.close()

    # -- publishing --------------------------------------------------------------------------------
    def pack(self, batch: Sequence[Message]) -> bytes:
        """The batch as PUBLISH packets, as they go on the wire; with QoS 1 each takes the next packet id."""
        topics = self._topics
        qos1 = self.qos == 1
        command = bytes((_PUBLISH | self.qos << 1,))
        ids = 2 if qos1 else 0
        packet_id = self._next_id
        parts: list[bytes] = []
        for topic, payload in batch:
            head = topics.get(topic)
            if head is None:
                head = topics[topic] = _string(topic)
            length = len(head) + ids + len(payload)
            if length < 16_384:  # two length bytes at most: every result message; the general case below
                size = bytes((length,)) if length < 128 else bytes((length & 0x7F | 0x80, length >> 7))
            else:
                size = remaining_length(length)
            if qos1:
                parts += (command, size, head, packet_id.to_bytes(2, "big"), payload)
                packet_id = packet_id % 0xFFFF + 1  # 1...65535; 0 is not a packet id
            else:
                parts += (command, size, head, payload)
        self._next_id = packet_id
        return b"".join(parts)

    def send(self, batch: Sequence[Message]) -> None:
        if self._sock is None:
            raise ConnectionError("not connected")
        self._check_open()
        for start in range(0, len(batch), _WINDOW):
            chunk = batch[start : start + _WINDOW]
            first_id = self._next_id
            self._write(self.pack(chunk))
            if self.qos == 1:
                self._await_acks(first_id, len(chunk))

    def _await_acks(self, first_id: int, count: int) -> None:
        """Read PUBACKs until `count` arrived, for packet ids `first_id`, `first_id + 1`... in order."""
        expected = first_id
        while True:
            inbox = self._inbox
            # The common case in bulk: a run of whole PUBACKs (0x40, 2, packet id).
            pos, end = 0, len(inbox)
            while count and pos + 4 <= end and inbox[pos] == _PUBACK and inbox[pos + 1] == 2:
                packet_id = inbox[pos + 2] << 8 | inbox[pos + 3]
                if packet_id != expected:
                    raise ConnectionError(f"protocol error: PUBACK for packet id {packet_id}, expected {expected}")
                expected = expected % 0xFFFF + 1
                count -= 1
                pos += 4
            del inbox[:pos]
            if not count:
                return
            packet = self._parse_packet()
            if packet is None:
                self._receive()
            elif packet[0] == _PUBACK:
                raise ConnectionError(f"protocol error: PUBACK of {len(packet[1])} bytes")
            elif packet[0] != _PINGRESP:  # an answer to a keep-alive sent before: nothing to do
                raise ConnectionError(f"protocol error: unexpected packet type {packet[0] >> 4}")

    def idle(self) -> None:
        """Ping when nothing was written for half the keep-alive (the broker drops a silent client)."""
        if self._sock is None or time.monotonic() - self._last_write < self.keepalive / 2:
            return
        self._check_open()
        self._write(_PING)
        kind, _ = self._read_packet()
        if kind != _PINGRESP:
            raise ConnectionError(f"protocol error: expected PINGRESP, got packet type {kind >> 4}")

    # -- the socket --------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)  # the socket's timeout bounds it; OSError when the connection broke
        self._last_write = time.monotonic()

    def _check_open(self) -> None:
        """Raise if the broker closed the connection: better to know before writing a batch into it
        (at QoS 0 nothing else would tell that the batch was lost)."""
        assert self._sock is not None
        pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0  # decrypted, not yet read
        readable = pending or select.select([self._sock], [], [], 0)[0]
        # Readable with TLS may also be a TLS record with no MQTT data in it (a session ticket): don't wait.
        if readable and self._receive(wait=False):
            while (packet := self._parse_packet()) is not None:
                if packet[0] != _PINGRESP:
                    raise ConnectionError(f"protocol error: unexpected packet type {packet[0] >> 4}")

    def _receive(self, *, wait: bool = True) -> bool:
        """Append what the broker sent to the inbox, waiting at most `timeout` for it (not at all
        without `wait`); say whether anything came."""
        sock = self._sock
        assert sock is not None
        if _QUICKACK is not None:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # the kernel leaves quick-ACK mode by itself
        if not wait:
            sock.setblocking(False)
        try:
            data = sock.recv(65_536)
        except (BlockingIOError, ssl.SSLWantReadError):  # only without `wait`
            return False
        finally:
            if not wait:
                sock.settimeout(self.timeout)
        if not data:
            raise ConnectionError("the broker closed the connection")
        self._inbox += data
        return True

    def _read_packet(self) -> tuple[int, bytes]:
        """The next whole packet: (first byte with its flags cleared, body)."""
        while True:
            packet = self._parse_packet()
            if packet is not None:
                return packet
            self._receive()

    def _parse_packet(self) -> tuple[int, bytes] | None:
        """Take one whole packet off the inbox, or None while it is incomplete."""
        inbox = self._inbox
        length, multiplier, pos = 0, 1, 1
        while True:
            if pos >= len(inbox):
                return None
            digit = inbox[pos]
            length += (digit & 0x7F) * multiplier
            multiplier *= 128
            pos += 1
            if not digit & 0x80:
                break
            if pos > 4:
                raise ConnectionError("protocol error: malformed remaining length")
        if len(inbox) < pos + length:
            return None
        kind, body = inbox[0] & 0xF0, bytes(inbox[pos : pos + length])
        del inbox[: pos + length]
        return kind, body

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._sock is not None:
                self._sock.close()
