"""Append messages to Redis Streams (`XADD`) through redis-py's asyncio client, a batch per round trip.

The transport owns a private asyncio event loop that only the publisher's I/O thread runs, so the
pipeline's event loop never waits on Redis. A batch goes out as one `MULTI`/`EXEC` pipeline: the
server applies all of its `XADD`s or none, and a batch resent after a lost connection can at worst
arrive twice, never half.

Each entry has one field, `message`, holding the JSON result message. `maxlen` caps every stream
approximately (`MAXLEN ~`): Redis trims whole internal nodes, which is far cheaper than exact trimming.

Example:
    >>> transport = RedisStreamTransport(host="127.0.0.1", port=6379, password="s3cret", maxlen=1000)
    >>> transport.address  # what messages show: no credentials
    '127.0.0.1:6379/0'
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from streamflow.sinks.publisher import Message, SinkConnectionError, Transport

__all__ = ["RedisStreamTransport"]

#: The stream entry's field that holds the message.
FIELD = "message"


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
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username = username
        self._password = password
        self.maxlen = maxlen
        self.timeout = timeout
        self.address = f"{host}:{port}/{db}"
        self.secrets = (password,) if password else ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None

    def connect(self) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import AuthenticationError, RedisError, ResponseError

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        client = redis.asyncio.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self._password,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # The publisher owns retries (with backoff and buffering); the client must fail fast.
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
        )
        try:
            self._loop.run_until_complete(client.ping())
        except AuthenticationError as error:
            self._loop.run_until_complete(client.aclose())
            raise SinkConnectionError(f"authentication failed: {error}") from None
        except ResponseError as error:  # NOAUTH (a password is required) and similar refusals
            self._loop.run_until_complete(client.aclose())
            raise SinkConnectionError(f"refused: {error}") from None
        except (RedisError, OSError) as error:  # redis' ConnectionError is a RedisError, not an OSError
            self._loop.run_until_complete(client.aclose())
            raise ConnectionError(str(error) or type(error).__name__) from None
        self._client = client

    def send(self, batch: Sequence[Message]) -> None:
        from redis.exceptions import RedisError

        if self._client is None or self._loop is None:
            raise ConnectionError("not connected")
        try:
            self._loop.run_until_complete(self._send(batch))
        except (RedisError, OSError) as error:
            raise ConnectionError(str(error) or type(error).__name__) from None

    async def _send(self, batch: Sequence[Message]) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            for key, payload in batch:
                pipe.xadd(key, {FIELD: payload}, maxlen=self.maxlen, approximate=True)
            await pipe.execute()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close; nothing to save
                self._loop.run_until_complete(client.aclose())

    def __del__(self) -> None:
        if self._loop is not None and not self._loop.is_running():
            self._loop.close()
