"""Network result sinks: a buffered publisher and its transports (Redis Streams, MQTT)."""

from streamflow.sinks.publisher import (
    Backoff,
    Message,
    Publisher,
    SinkConnectionError,
    SinkDeliveryError,
    SinkRejectedError,
    Tls,
    Transport,
    scrub,
)

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
