"""`redis`: each frame's result message as one entry of a Redis Stream (`XADD`), batched.

The entry's field `message` holds the JSON result message (`streamflow.results`: the same object the
`jsonl` sink writes as a line). The stream key is `stream` with `{source}` replaced by the frame's
`source_id`, so a consumer reads one camera's results in order with `XREAD`/`XRANGE`. `maxlen` caps
each stream approximately (`MAXLEN ~`); null keeps every entry.

Delivery (see `streamflow.sinks.publisher`): an I/O thread sends up to `write_batch` messages per round
trip (one MULTI/EXEC); a bounded buffer of `buffer_size` messages rides out a slow or restarting server
with `buffer_policy` `block` (nothing lost, the pipeline waits) or `drop_oldest` (counted in `dropped`);
lost connections are retried with backoff; at end of stream and on Ctrl-C the buffer is flushed within
`flush_timeout`. A server that cannot be reached, or refuses the password, at start fails the run with
one line naming the sink and the address (exit 1).

`tls` (`ca_file`, `cert_file`, `key_file`) connects over TLS, verifying the server by `ca_file` (or
the system's CAs) and its name, with a client certificate when given.

The password comes from `password` or, better, the environment variable named by `password_env`
(default `STREAMFLOW_REDIS_PASSWORD`); it is never shown in logs, errors or stats.

Example (YAML):
    - name: results
      type: redis
      host: 127.0.0.1
      port: 6379
      stream: "streamflow:{source}:detections"
      maxlen: 100000            # per stream, approximate; null: unbounded
      buffer_policy: block      # block | drop_oldest

Example (Python):
    >>> sink = RedisSink(port=6379, password="s3cret")
    >>> sink.destination("cam1"), sink.config.password
    ('streamflow:cam1:detections', SecretStr('**********'))
"""

from __future__ import annotations

from pydantic import Field, field_validator

from streamflow.sinks.publisher import Transport
from streamflow.sinks.redis_streams import RedisStreamTransport
from streamflow.sinks.stage import PublishConfig, PublishingSink, check_template

__all__ = ["RedisSink"]


class RedisSink(PublishingSink):
    """Result messages to Redis Streams; see the module docstring."""

    class Config(PublishConfig):
        port: int = Field(default=6379, ge=1, le=65535)
        db: int = Field(default=0, ge=0)
        password_env: str | None = "STREAMFLOW_REDIS_PASSWORD"
        #: Stream key; `{source}` is the frame's source id.
        stream: str = "streamflow:{source}:detections"
        #: Approximate cap on each stream's length (`XADD ... MAXLEN ~ n`); None: no trimming.
        maxlen: int | None = Field(default=100_000, ge=1)

        @field_validator("stream")
        @classmethod
        def _stream_template(cls, value: str) -> str:
            return check_template(value, "stream")

    def make_transport(self, password: str | None) -> Transport:
        config = self.config
        return RedisStreamTransport(
            host=config.host,
            port=config.port,
            db=config.db,
            username=config.username,
            password=password,
            maxlen=config.maxlen,
            timeout=config.timeout,
            tls=config.tls,
        )

    def destination(self, source_id: str) -> str:
        return str(self.config.stream.format(source=source_id))
