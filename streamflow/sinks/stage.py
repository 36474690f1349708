"""What the `redis` and `mqtt` stages share: options, and the hooks over a `Publisher`.

The stage stays thin: `setup()` builds the transport and starts the publisher (which connects, so an
unreachable server fails the run before the first frame); `process()` turns frames into result
messages (`streamflow.results`) and buffers them; `flush()` waits for delivery within
`flush_timeout`; `teardown()` closes. Frames pass on unchanged, so other sinks may follow. The
publisher's counters become the stage's counters (`published`, `dropped`, `connection_losses`,
`reconnects`, `buffered`).
"""

from __future__ import annotations

import abc
import os
from typing import Any

from pydantic import Field, SecretStr, field_validator

from streamflow.frame import Batch, Frame
from streamflow.results import encode_message, frame_messages
from streamflow.sinks.publisher import Backoff, Publisher, SinkDeliveryError, Tls, Transport
from streamflow.stage import Overflow, Stage, StageConfig

__all__ = ["PublishConfig", "PublishingSink"]


class PublishConfig(StageConfig):
    """Connection, buffer and delivery options of a network result sink."""

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    username: str | None = None
    #: The password; prefer leaving it out of the file and setting the environment variable
    #: named by `password_env`. Shown as `**********` in reprs; never logged.
    password: SecretStr | None = None
    password_env: str | None = None
    #: Messages held in memory while the server is slow or away.
    buffer_size: int = Field(default=10_000, ge=1)
    #: When the buffer is full: `block` keeps every message and slows the pipeline; `drop_oldest`
    #: discards the oldest buffered message (counted in `dropped`).
    buffer_policy: Overflow = Overflow.BLOCK
    #: Messages sent per round trip at most (the I/O thread sends what is buffered, up to this).
    write_batch: int = Field(default=500, ge=1)
    #: Seconds allowed to connect and for each network operation.
    timeout: float = Field(default=5.0, gt=0)
    #: Seconds that end of stream (or Ctrl-C) waits for buffered messages to be delivered.
    flush_timeout: float = Field(default=10.0, gt=0)
    reconnect: Backoff = Field(default_factory=Backoff)
    #: TLS to the server (`{}`: verified by the system's trusted CAs); None: plain TCP.
    tls: Tls | None = None

    @field_validator("password", mode="before")
    @classmethod
    def _password_as_text(cls, value: Any) -> Any:
        # YAML reads `password: 1234` as a number; pydantic's type error would echo it.
        return str(value) if isinstance(value, int | float) else value


def check_template(template: str, what: str) -> str:
    """`template` with `{source}` as its only field; the error names the field that is not."""
    try:
        template.format(source="0")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"{what} may only use {{source}}: {template!r} ({type(error).__name__}: {error})") from None
    return template


class PublishingSink(Stage):
    """A stage that sends each frame's result message through a `Publisher`; see the module docstring."""

    Config = PublishConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._publisher: Publisher | None = None
        self._destinations: dict[str, str] = {}
        self._flushed = False

    @property
    def publisher(self) -> Publisher | None:
        """The running publisher (between setup and teardown): its `counters()` are live."""
        return self._publisher

    @abc.abstractmethod
    def make_transport(self, password: str | None) -> Transport:
        """The transport for this sink's config (not yet connected)."""

    @abc.abstractmethod
    def destination(self, source_id: str) -> str:
        """Stream key or topic of a source's messages."""

    def password(self) -> str | None:
        config = self.config
        if config.password is not None:
            return str(config.password.get_secret_value())
        if config.password_env:
            return os.environ.get(config.password_env) or None
        return None

    def setup(self) -> None:
        config = self.config
        self._publisher = Publisher(
            self.make_transport(self.password()),
            name=self.name,
            capacity=config.buffer_size,
            overflow=config.buffer_policy,
            batch=config.write_batch,
            backoff=config.reconnect,
        )
        self._publisher.start()

    def process(self, item: Frame | Batch) -> Frame | Batch:
        assert self._publisher is not None, "setup() runs before process()"
        messages = []
        for message in frame_messages(item.frames):
            source = message["source_id"]
            key = self._destinations.get(source)
            if key is None:
                key = self._destinations[source] = self.destination(source)
            messages.append((key, encode_message(message)))
        self._publisher.put(messages)
        self._update_counters()
        # Passed on, so that several sinks can follow each other (redis, then mqtt, then jsonl).
        return item

    def flush(self) -> None:
        assert self._publisher is not None, "setup() runs before flush()"
        self._flushed = True
        left = self._publisher.flush(self.config.flush_timeout)
        self._update_counters()
        if left:
            message = (
                f"{self._publisher.label}: {left} message(s) not delivered within "
                f"flush_timeout ({self.config.flush_timeout:g} s)"
            )
            if not self.stopping.is_set():
                raise SinkDeliveryError(message)
            # Stopping (Ctrl-C): finish the shutdown with the right exit code and say what was lost.
            self.log.error("%s", message)
            self.count("undelivered", left)

    def teardown(self) -> None:
        if self._publisher is not None:
            # After flush() (end of stream) the wait is over; after an error it is not yet.
            self._publisher.close(0.0 if self._flushed else self.config.flush_timeout)
            self._update_counters()
            self._publisher = None

    def _update_counters(self) -> None:
        if self._publisher is not None:
            self.counters.update(self._publisher.counters())
