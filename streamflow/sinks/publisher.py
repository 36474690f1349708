"""Deliver result messages to a message server from one I/O thread, behind a bounded buffer.

`Publisher` owns the pieces every network result sink needs; a `Transport` (redis, mqtt) only knows
how to connect, send a batch and close:

- `put()` (the stage's thread) appends messages to a bounded buffer. When it is full, the policy
  decides: `block` waits for room (nothing is lost, the pipeline slows down to the server's pace);
  `drop_oldest` discards the oldest buffered message and counts it in `dropped`.
- One I/O thread takes up to `batch` messages at a time and sends them in one round trip. A batch
  leaves the buffer when the server has accepted it; if the connection breaks first, the thread
  reconnects with exponential backoff and sends the same batch again. Delivery is therefore at least
  once: a batch the server applied just before the connection broke arrives twice (consumers that
  must not count twice key on `source_id` and `index`).
- A server unreachable at start is an error at once (`SinkConnectionError`: one line naming the sink
  and the address); one that stays unreachable for `give_up_after` seconds mid-run fails the run.
- `flush(timeout)` waits until the buffer is delivered; `close(timeout)` flushes, then stops the thread.

Invariant (what the counters add up to): every message given to `put()` is, at any time, exactly one of
published, dropped, buffered or in flight; after a successful flush the last two are zero, so
`published + dropped == put`.

Credentials never appear in the address, the errors or the logs: transports take the password apart
from the address and error texts pass through `scrub()`.

Example, with a transport that keeps messages in a list:
    >>> class ListTransport(Transport):
    ...     kind, address = "list", "memory"
    ...     def __init__(self): self.sent = []
    ...     def connect(self): pass
    ...     def send(self, batch): self.sent.extend(batch)
    ...     def close(self): pass
    >>> transport = ListTransport()
    >>> publisher = Publisher(transport, name="demo", capacity=4, batch=2)
    >>> publisher.start()
    >>> publisher.put([("topic", b"1"), ("topic", b"2"), ("topic", b"3")])
    >>> publisher.close(timeout=5)
    0
    >>> [payload for _, payload in transport.sent], publisher.counters()["published"]
    ([b'1', b'2', b'3'], 3)
"""

from __future__ import annotations

import abc
import collections
import logging
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TypeAlias

from pydantic import BaseModel, ConfigDict, Field, FilePath, model_validator

from streamflow.stage import Overflow

__all__ = [
    "Backoff",
    "Message",
    "Publisher",
    "SinkConnectionError",
    "SinkDeliveryError",
    "SinkRejectedError",
    "Tls",
    "Transport",
    "scrub",
]

log = logging.getLogger("streamflow.sinks")

#: (destination, payload): the stream key or topic a message goes to, and its encoded body.
Message: TypeAlias = tuple[str, bytes]


class SinkConnectionError(ConnectionError):
    """The server could not be reached or refused the credentials (at start, or for too long mid-run)."""


class SinkDeliveryError(RuntimeError):
    """Buffered messages could not be delivered within the flush timeout."""


class SinkRejectedError(SinkDeliveryError):
    """The server refused messages it received (a key of the wrong type, out of memory): sending them
    again would fail again, so the run fails instead of retrying."""


class Backoff(BaseModel):
    """Delays between reconnect attempts: `initial` seconds, doubling up to `max`.

    `give_up_after`: seconds the server may stay unreachable mid-run before the run fails (None: wait
    forever; with the `block` policy the pipeline then waits with it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial: float = Field(default=0.2, gt=0)
    max: float = Field(default=5.0, gt=0)
    give_up_after: float | None = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Backoff:
        if self.max < self.initial:
            raise ValueError(f"reconnect.max ({self.max}) must be >= reconnect.initial ({self.initial})")
        return self


class Tls(BaseModel):
    """TLS to the server. `ca_file`: the PEM certificate(s) the server's certificate must chain to (None:
    the system's trusted CAs); `cert_file` and `key_file` (PEM, unencrypted key): the client's own
    certificate, for servers that ask for one. The server's name (or IP address) must match its
    certificate.

    Example:
        >>> Tls().context().verify_mode == ssl.CERT_REQUIRED
        True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @model_validator(mode="after")
    def _key_with_certificate(self) -> Tls:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file needs tls.cert_file (the client certificate it belongs to)")
        return self

    def context(self) -> ssl.SSLContext:
        """A client context: the server verified by `ca_file` and its name, the client certificate loaded."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every non-empty secret replaced by `***` (server errors may echo what they got).

    Example:
        >>> scrub("AUTH hunter2 failed", ["hunter2", None])
        'AUTH *** failed'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Transport(abc.ABC):
    """One connection to a message server. Every method runs in the publisher's I/O thread only.

    `connect()` and `send()` block, bounded by the transport's own timeouts, and raise `OSError`
    (`ConnectionError`, `TimeoutError`) when the connection is lost; `send()` delivers the whole
    batch or raises. `SinkConnectionError` from `connect()` means the server refused the client
    (bad credentials): retried mid-run, fatal at start. `SinkRejectedError` from `send()` means the
    server refused messages: fatal.
    """

    #: What the sink is ("redis", "mqtt"), for messages.
    kind: str = "server"
    #: Where it connects, without credentials ("127.0.0.1:6379").
    address: str = ""

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def send(self, batch: Sequence[Message]) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def idle(self) -> None:  # noqa: B027  (optional hook: most transports have nothing to do when idle)
        """Called about every `idle_interval` seconds while nothing is to be sent (keep-alives)."""

    #: Seconds between `idle()` calls.
    idle_interval: float = 1.0
    #: Strings that must never appear in errors or logs (the password).
    secrets: tuple[str, ...] = ()
    #: Seconds one connect or send may block at most.
    timeout: float = 5.0


class _Stopped(Exception):
    """close() gave up waiting: the I/O thread leaves without delivering the rest."""


class Publisher:
    """Bounded buffer plus I/O thread in front of a `Transport`; see the module docstring."""

    def __init__(
        self,
        transport: Transport,
        *,
        name: str,
        capacity: int = 10_000,
        overflow: Overflow = Overflow.BLOCK,
        batch: int = 500,
        backoff: Backoff | None = None,
    ) -> None:
        if capacity < 1 or batch < 1:
            raise ValueError(f"capacity and batch must be >= 1, got {capacity} and {batch}")
        self.transport = transport
        self.name = name
        self.capacity = capacity
        self.overflow = overflow
        self.batch = batch
        self.backoff = backoff or Backoff()
        self._buffer: collections.deque[Message] = collections.deque()
        self._inflight = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = False
        self._abort = threading.Event()
        self._failure: BaseException | None = None
        self._done = False
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts = {"published": 0, "dropped": 0, "batches": 0, "connection_losses": 0, "reconnects": 0}

    @property
    def label(self) -> str:
        """`redis sink 'results' (127.0.0.1:6379)`: how messages name this sink."""
        return f"{self.transport.kind} sink {self.name!r} ({self.transport.address})"

    # -- the stage's side ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the I/O thread and connect; raise `SinkConnectionError` if the first connection fails."""
        self._thread = threading.Thread(target=self._run, name=f"streamflow-sink-{self.name}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure

    def put(self, messages: Iterable[Message]) -> None:
        """Buffer messages in order; with `block`, wait while the buffer is full."""
        with self._changed:
            for message in messages:
                while len(self._buffer) >= self.capacity:
                    self._raise_if_failed()
                    if self.overflow is Overflow.DROP_OLDEST:
                        self._buffer.popleft()
                        self._counts["dropped"] += 1
                        break
                    self._changed.wait()
                self._raise_if_failed()
                self._buffer.append(message)
            self._changed.notify_all()

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for everything buffered to be delivered; return what is left."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (self._buffer or self._inflight) and not self._done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            self._raise_if_failed()
            return len(self._buffer) + self._inflight

    def close(self, timeout: float) -> int:
        """Flush within `timeout`, stop the I/O thread and close the connection; return what was not delivered."""
        if self._thread is None:
            return 0
        deadline = time.monotonic() + timeout
        try:
            left = self.flush(timeout)
        except Exception:  # the failure was raised to the stage already (put/flush); closing goes on
            left = len(self._buffer) + self._inflight
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if left:
            self._abort.set()
        # The transport's own timeout bounds a send or connect in progress; after it the thread sees `_abort`.
        self._thread.join(max(0.0, deadline - time.monotonic()) + self.transport.timeout + 1.0)
        if self._thread.is_alive():
            log.warning("%s: I/O thread still busy after %.1f s; left behind", self.label, timeout)
        self._thread = None
        return left

    def counters(self) -> dict[str, int]:
        """published, dropped, batches, connection_losses, reconnects, and buffered (now)."""
        with self._lock:
            return {**self._counts, "buffered": len(self._buffer) + self._inflight}

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    # -- the I/O thread --------------------------------------------------------------------------
    def _run(self) -> None:
        transport = self.transport
        try:
            try:
                transport.connect()
            except SinkConnectionError as error:  # the server answered and refused (credentials)
                self._failure = SinkConnectionError(f"{self.label}: {scrub(str(error), transport.secrets)}")
                return
            except OSError as error:
                self._failure = SinkConnectionError(f"{self.label}: cannot connect: {self._explain(error)}")
                return
            finally:
                self._started.set()
            while True:
                with self._changed:
                    while not self._buffer and not self._closing:
                        if not self._changed.wait(transport.idle_interval):
                            break
                    if not self._buffer:
                        if self._closing:
                            return
                        batch: list[Message] = []
                    else:
                        batch = [self._buffer.popleft() for _ in range(min(self.batch, len(self._buffer)))]
                        self._inflight = len(batch)
                        self._changed.notify_all()  # room in the buffer for a blocked put()
                if not batch:
                    self._idle()
                    continue
                self._deliver(batch)
                with self._changed:
                    self._inflight = 0
                    self._counts["published"] += len(batch)
                    self._counts["batches"] += 1
                    self._changed.notify_all()
        except _Stopped:
            pass
        except BaseException as error:  # crosses to the stage's thread, raised by put()/flush()
            self._failure = error
        finally:
            try:
                transport.close()
            except Exception as error:  # closing a broken connection may fail; nothing to save
                log.debug("%s: close: %s", self.label, self._explain(error))
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def _idle(self) -> None:
        try:
            self.transport.idle()
        except OSError as error:
            self._reconnect(error)

    def _deliver(self, batch: list[Message]) -> None:
        """Send `batch`, reconnecting as often as needed (the same batch again after each loss)."""
        while True:
            try:
                self.transport.send(batch)
                return
            except OSError as error:
                self._reconnect(error)
            except SinkRejectedError as error:
                raise SinkRejectedError(f"{self.label}: {scrub(str(error), self.transport.secrets)}") from None

    def _reconnect(self, error: BaseException) -> None:
        """The connection is lost: reconnect with backoff, or raise after `give_up_after` seconds."""
        with self._lock:
            self._counts["connection_losses"] += 1
            buffered = len(self._buffer) + self._inflight
        log.warning("%s: connection lost (%s); reconnecting, %d message(s) buffered", self.label,
                    self._explain(error), buffered)  # fmt: skip
        backoff = self.backoff
        lost_at = time.monotonic()
        delay = backoff.initial
        while True:
            try:
                self.transport.close()
            except Exception as close_error:  # the old connection is broken anyway
                log.debug("%s: close: %s", self.label, self._explain(close_error))
            if self._abort.wait(delay):
                raise _Stopped
            try:
                self.transport.connect()
            except (OSError, SinkConnectionError) as retry_error:
                down = time.monotonic() - lost_at
                if backoff.give_up_after is not None and down >= backoff.give_up_after:
                    raise SinkConnectionError(
                        f"{self.label}: unreachable for {down:.0f} s: {self._explain(retry_error)}"
                    ) from None
                delay = min(delay * 2, backoff.max)
                continue
            with self._lock:
                self._counts["reconnects"] += 1
            log.info("%s: reconnected after %.1f s", self.label, time.monotonic() - lost_at)
            return

    def _explain(self, error: BaseException) -> str:
        text = str(error).splitlines()[0] if str(error) else ""
        return scrub(f"{type(error).__name__}: {text}" if text else type(error).__name__, self.transport.secrets)
