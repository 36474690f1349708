"""The redis transport's own packing and its refusal path, against redis-py's packer and a real redis-server."""

from __future__ import annotations

import pytest
import redis.asyncio

from stages.redis_sink import RedisSink
from streamflow import Pipeline
from streamflow.sinks import SinkRejectedError
from streamflow.sinks.redis_streams import RedisStreamTransport
from streamflow.testing import ListSource, make_frames
from support.message_servers import RedisServer, missing_binary


@pytest.mark.parametrize("maxlen", [1000, None])
def test_a_packed_batch_is_what_redis_py_packs(maxlen: int | None) -> None:
    transport = RedisStreamTransport(host="127.0.0.1", port=6379, maxlen=maxlen)
    batch = [("streamflow:a:detections", b'{"index":0}'), ("s:\xe9", b"x" * 300), ("streamflow:a:detections", b"")]
    trim = ["MAXLEN", "~", str(maxlen)] if maxlen is not None else []
    commands = [("MULTI",)]
    commands += [("XADD", key, *trim, "*", "message", payload) for key, payload in batch]
    commands.append(("EXEC",))
    assert transport.pack(batch) == b"".join(redis.asyncio.Connection().pack_commands(commands))


def test_a_message_the_server_refuses_fails_the_run_naming_the_sink() -> None:
    if missing_binary("redis-server"):
        pytest.skip(str(missing_binary("redis-server")))
    with RedisServer() as server:
        server.client().set("taken:0", "a string, not a stream")  # XADD on it: WRONGTYPE
        sink = RedisSink(name="out", port=server.port, stream="taken:{source}")
        with pytest.raises(SinkRejectedError, match=rf"^redis sink 'out' \(127.0.0.1:{server.port}/0\): .*WRONGTYPE"):
            Pipeline([ListSource(make_frames(20)), sink], device="cpu").run_sync()
        assert sink.counters["published"] == 0
        assert server.client().get("taken:0") == b"a string, not a stream"
