"""Append messages to Redis Streams (`XADD`) through redis-py's asyncio API, a batch per round trip.

The transport owns a private asyncio event loop, made for each connection and run only by the
publisher's I/O thread, so the pipeline's event loop never waits on Redis. redis-py's asyncio
connection (`redis.asyncio.Connection`, or `SSLConnection` with `tls`; hiredis parsing the replies)
owns the socket: connecting, TLS, `AUTH`, `SELECT`, writing and reading replies. What the sink adds is
the packing of a batch: every entry of a stream starts with the same command words, packed once per
stream (`XADD key [MAXLEN ~ n] * message`), so packing an entry is one length prefix and its payload,
and the whole batch goes out with one `send_packed_command`. A pipeline object would pack every
command word again for every entry. One timeout bounds a batch's whole round trip rather than one
timer for each of its replies.

A batch goes out as one `MULTI`/`EXEC` transaction: the server applies all of its `XADD`s or none, so
a batch resent after a lost connection arrives whole once or twice, never half, and a consumer reads
every stream in order once it skips repeats (same `source_id` and `index`). An error the server
returns for a command (a key that is not a stream, out of memory, no permission) fails the run with
the server's words: sending the same batch again would fail again.

Each entry has one field, `message`, holding the JSON result message. `maxlen` caps every stream
approximately (`MAXLEN ~`): Redis trims whole internal nodes, which is far cheaper than exact trimming.

Example:
    >>> transport = RedisStreamTransport(host="127.0.0.1", port=6379, password="s3cret", maxlen=1000)
    >>> transport.address  # what messages show: no credentials
    '127.0.0.1:6379/0'
    >>> transport.pack([("s", b'{"index":0}')])
    b'*1\\r\\n$5\\r\\nMULTI\\r\\n*8\\r\\n$4\\r\\nXADD\\r\\n$1\\r\\ns\\r\\n$6\\r\\nMAXLEN\\r\\n$1\\r\\n~\\r\\n$4\\r\\n1000\\r\\n$1\\r\\n*\\r\\n$7\\r\\nmessage\\r\\n$11\\r\\n{"index":0}\\r\\n*1\\r\\n$4\\r\\nEXEC\\r\\n'
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from streamflow.sinks.publisher import Message, SinkConnectionError, SinkRejectedError, Tls, Transport

__all__ = ["RedisStreamTransport", "resp_command"]

#: The stream entry's field that holds the message.
FIELD = "message"


def resp_command(*args: str | bytes) -> bytes:
    """`args` as one command in the Redis protocol (RESP): an array of bulk strings.

    Example:
        >>> resp_command("PING")
        b'*1\\r\\n$4\\r\\nPING\\r\\n'
    """
    return _array_head(len(args)) + b"".join(_bulk(arg) for arg in args)


def _array_head(count: int) -> bytes:
    return b"*%d\r\n" % count


def _bulk(arg: str | bytes) -> bytes:
    data = arg.encode() if isinstance(arg, str) else arg
    return b"$%d\r\n%b\r\n" % (len(data), data)


_MULTI = resp_command("MULTI")
_EXEC = resp_command("EXEC")


class RedisStreamTransport(Transport):
    """`XADD key MAXLEN ~ maxlen * message <json>` for each message, batched in one transaction."""

    kind = "redis"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        maxlen: int | None = None,
        timeout: float = 5.0,
        tls: Tls | None = None,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.tls = tls
        self.username = username
        self._password = password
        self.maxlen = maxlen
        self.timeout = timeout
        self.address = f"{host}:{port}/{db}"
        self.secrets = (password,) if password else ()
        self._connection: Any = None  # redis.asyncio's Connection, used only on `_loop`
        self._loop: asyncio.AbstractEventLoop | None = None
        # Per stream key: the packed command up to (not including) the payload.
        self._heads: dict[str, bytes] = {}

    def connect(self) -> None:
        from redis.asyncio.connection import Connection, SSLConnection
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options: dict[str, Any] = {}
        connection_class: type[Connection] = Connection
        if self.tls is not None:
            connection_class = SSLConnection
            tls = self.tls
            options = {
                "ssl_ca_certs": tls.ca_file and str(tls.ca_file),
                "ssl_certfile": tls.cert_file and str(tls.cert_file),
                "ssl_keyfile": tls.key_file and str(tls.key_file),
                "ssl_cert_reqs": "required",
                "ssl_check_hostname": True,
            }
        connection = connection_class(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self._password,
            socket_connect_timeout=self.timeout,
            # No timer per reply: `_exchange` bounds a whole batch's round trip with one timeout.
            socket_timeout=None,
            # The publisher owns retries (with backoff and buffering); the connection must fail fast.
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._open(connection))
        except BaseException:
            loop.close()
            raise
        self._loop, self._connection = loop, connection

    async def _open(self, connection: Any) -> None:
        from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError

        try:
            async with asyncio.timeout(self.timeout):
                await connection.connect()
                # Without a password redis-py sends no AUTH: a server that wants one says so here.
                await connection.send_command("PING", check_health=False)
                await connection.read_response()
        except (AuthenticationError, AuthorizationError) as error:  # WRONGPASS, NOAUTH: the server answered
            await connection.disconnect(nowait=True)
            raise SinkConnectionError(f"authentication failed: {error}") from None
        except ResponseError as error:  # another refusal (an ACL user without PING...)
            await connection.disconnect(nowait=True)
            raise SinkConnectionError(f"refused: {error}") from None
        except (RedisError, OSError) as error:  # redis' ConnectionError is a RedisError, not an OSError
            await connection.disconnect(nowait=True)
            raise ConnectionError(str(error) or type(error).__name__) from None

    def pack(self, batch: Sequence[Message]) -> bytes:
        """The batch's commands as they go on the wire: `MULTI`, one `XADD` per message, `EXEC`."""
        heads = self._heads
        parts = [_MULTI]
        for key, payload in batch:
            head = heads.get(key)
            if head is None:
                head = heads[key] = self._head(key)
            parts += (head, b"$%d\r\n" % len(payload), payload, b"\r\n")
        parts.append(_EXEC)
        return b"".join(parts)

    def _head(self, key: str) -> bytes:
        words: list[str | bytes] = ["XADD", key]
        if self.maxlen is not None:
            words += ["MAXLEN", "~", str(self.maxlen)]
        words += ["*", FIELD]
        # The payload, packed per message, is the command's last argument.
        return _array_head(len(words) + 1) + b"".join(_bulk(word) for word in words)

    def send(self, batch: Sequence[Message]) -> None:
        connection, loop = self._connection, self._loop
        if connection is None or loop is None:
            raise ConnectionError("not connected")
        replies = loop.run_until_complete(self._exchange(connection, self.pack(batch), len(batch)))
        # A transaction runs every command; one that failed (WRONGTYPE...) is an error in EXEC's reply.
        for reply in replies:
            if isinstance(reply, Exception):
                raise SinkRejectedError(f"the server refused a message: {reply}")

    async def _exchange(self, connection: Any, packed: bytes, count: int) -> list[Any]:
        """Write a packed transaction of `count` commands; return EXEC's replies."""
        from redis.exceptions import RedisError, ResponseError

        try:
            async with asyncio.timeout(self.timeout):
                await connection.send_packed_command(packed, check_health=False)
                # MULTI's +OK and one +QUEUED per command; a command refused here makes EXEC fail (EXECABORT).
                for _ in range(count + 1):
                    await connection.read_response()
                replies: list[Any] = await connection.read_response()
                return replies
        except ResponseError as error:
            raise SinkRejectedError(f"the server refused the batch: {error}") from None
        except (RedisError, OSError) as error:  # a timeout is an OSError
            raise ConnectionError(str(error) or type(error).__name__) from None

    def close(self) -> None:
        connection, self._connection = self._connection, None
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            if connection is not None:
                with contextlib.suppress(Exception):  # a broken connection may fail to close; nothing to save
                    loop.run_until_complete(connection.disconnect())
        finally:
            loop.close()
