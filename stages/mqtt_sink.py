"""`mqtt`: each frame's result message as JSON on an MQTT topic, batched, at QoS 0 or 1.

The payload is the JSON result message (`streamflow.results`: the same object the `jsonl` sink writes
as a line); the topic is `topic` with `{source}` replaced by the frame's `source_id`
(`streamflow/+/detections` subscribes to every source). QoS 1 (the default) resends what the broker
did not acknowledge, so `block` loses nothing across a broker restart; QoS 0 is cheaper and may lose
what was in flight when the connection broke.

Delivery (see `streamflow.sinks.publisher`): an I/O thread publishes up to `write_batch` messages and
then waits for their acknowledgements; a bounded buffer of `buffer_size` messages rides out a slow or
restarting broker with `buffer_policy` `block` (nothing lost, the pipeline waits) or `drop_oldest`
(counted in `dropped`); lost connections are retried with backoff; at end of stream and on Ctrl-C the
buffer is flushed within `flush_timeout`. A broker that cannot be reached, or refuses the credentials,
at start fails the run with one line naming the sink and the address (exit 1).

`tls` (`ca_file`, `cert_file`, `key_file`) connects over TLS, verifying the server by `ca_file` (or
the system's CAs) and its name, with a client certificate when given.

The password comes from `password` or, better, the environment variable named by `password_env`
(default `STREAMFLOW_MQTT_PASSWORD`); it is never shown in logs, errors or stats.

Example (YAML):
    - name: results
      type: mqtt
      host: 127.0.0.1
      port: 1883
      topic: "streamflow/{source}/detections"
      qos: 1                    # 0 | 1
      username: streamflow
      buffer_policy: block      # block | drop_oldest

Example (Python):
    >>> sink = MqttSink(qos=0)
    >>> sink.destination("cam1"), sink.config.port
    ('streamflow/cam1/detections', 1883)
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from streamflow.sinks.mqtt import MqttTransport
from streamflow.sinks.publisher import Transport
from streamflow.sinks.stage import PublishConfig, PublishingSink, check_template

__all__ = ["MqttSink"]


class MqttSink(PublishingSink):
    """Result messages to an MQTT broker; see the module docstring."""

    class Config(PublishConfig):
        port: int = Field(default=1883, ge=1, le=65535)
        password_env: str | None = "STREAMFLOW_MQTT_PASSWORD"
        #: Topic; `{source}` is the frame's source id.
        topic: str = "streamflow/{source}/detections"
        qos: Literal[0, 1] = 1
        #: MQTT client id; empty: `streamflow-<stage name>-<process id>`.
        client_id: str = ""
        #: Seconds between keep-alive pings while nothing is published.
        keepalive: int = Field(default=30, ge=5)

        @field_validator("topic")
        @classmethod
        def _topic_template(cls, value: str) -> str:
            check_template(value, "topic")
            if any(c in value for c in "+#"):
                raise ValueError(f"topic may not contain MQTT wildcards (+, #): {value!r}")
            return value

    def make_transport(self, password: str | None) -> Transport:
        config = self.config
        return MqttTransport(
            host=config.host,
            port=config.port,
            qos=config.qos,
            client_id=config.client_id or f"streamflow-{self.name}-{os.getpid()}",
            username=config.username,
            password=password,
            keepalive=config.keepalive,
            timeout=config.timeout,
            tls=config.tls,
        )

    def destination(self, source_id: str) -> str:
        return str(self.config.topic.format(source=source_id))
