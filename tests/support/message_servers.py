"""Real message servers for tests and benchmarks: Debian's `redis-server` and `mosquitto`, on 127.0.0.1.

Each server runs as a child process on a free port, with its data in a temporary folder, and can be
killed and restarted on the same port (what the reconnect tests do). Both keep what they accepted
across a restart, so a test can tell "the sink lost it" from "the server lost it":

- redis-server runs with `appendonly yes` and `appendfsync always`: an `XADD` the server acknowledged
  is on disk before the reply, so even SIGKILL keeps it.
- mosquitto runs with `persistence true`; `kill()` stops it with SIGTERM, on which it writes its
  database (sessions and messages queued for subscribers that are away) before exiting.

Example:
    >>> with RedisServer() as server:  # doctest: +SKIP
    ...     server.port
    41327
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamflow import Batch, Frame, Pipeline, Stage
from streamflow.sinks.stage import PublishingSink
from streamflow.testing import ListSource

__all__ = [
    "AtFrame",
    "Certificates",
    "MosquittoServer",
    "MqttCollector",
    "RedisServer",
    "distinct",
    "free_port",
    "make_certificates",
    "missing_binary",
    "published_count",
    "redis_messages",
    "run_through_outage",
]

_READY_S = 30.0


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing_binary(*names: str) -> str | None:
    """A skip reason naming the first program not on PATH, or None when all are there."""
    for name in names:
        if shutil.which(name) is None:
            return f"{name} not installed (tools/setup.sh installs Debian's redis-server and mosquitto)"
    return None


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate it signed for 127.0.0.1, and a client certificate it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(folder: Path) -> Certificates:
    """A throw-away CA and the server and client certificates it signs (the `openssl` command, 2048-bit
    RSA, valid for two days)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=streamflow test CA")  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=streamflow test {name}")  # fmt: skip
        extensions = ["-extfile", "server.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", *extensions)  # fmt: skip
    return Certificates(
        folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "client.crt", folder / "client.key"
    )


class _Server:
    """A child process listening on `port`, restartable on the same port; with `tls`, only TLS clients
    that present a certificate signed by its CA may connect."""

    name = "server"

    def __init__(self, *, password: str | None = None, tls: Certificates | None = None) -> None:
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"streamflow-{self.name}-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + _READY_S
        while not _accepting(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not listening on port {self.port} after {_READY_S:g} s")
            time.sleep(0.05)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop the server abruptly (the sink sees its connection break)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(_Server):
    """`redis-server` with an append-only file synced on every write; `password` sets `requirepass`."""

    name = "redis"

    def command(self) -> list[str]:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
        ]  # fmt: skip
        if self.tls:
            tls = self.tls
            command[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            command += ["--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key),
                        "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "yes"]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        return command

    def client(self) -> Any:
        import redis

        if self.tls:
            tls = self.tls
            return redis.Redis(
                host="127.0.0.1", port=self.port, password=self.password, socket_timeout=30, ssl=True,
                ssl_ca_certs=str(tls.ca), ssl_certfile=str(tls.client_cert), ssl_keyfile=str(tls.client_key),
            )  # fmt: skip
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=30)


class MosquittoServer(_Server):
    """`mosquitto` with persistence; with `password`, only user `streamflow` with that password may connect."""

    name = "mosquitto"
    user = "streamflow"

    def command(self) -> list[str]:
        config = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.dir}/",
            "user root",  # tests may run as root; keep its rights on the temporary folder
            "max_queued_messages 0",  # queue everything for a subscriber that is away (no silent loss)
            "sys_interval 1",  # $SYS counters every second: what the broker received (published_count)
        ]
        if self.tls:
            tls = self.tls
            lines += [f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                      "require_certificate true"]  # fmt: skip
        if self.password:
            passwords = self.dir / "passwords"
            subprocess.run(
                ["mosquitto_passwd", "-b", "-c", str(passwords), self.user, self.password],
                check=True,
                capture_output=True,
            )
            passwords.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        config.write_text("\n".join(lines) + "\n")
        return ["mosquitto", "-c", str(config)]

    def kill(self, sig: signal.Signals = signal.SIGTERM) -> None:
        # SIGTERM: mosquitto saves its database first, as a broker restarted by its supervisor does.
        super().kill(sig)


def redis_messages(server: RedisServer, stream: str) -> list[dict[str, Any]]:
    """Every message of a Redis Stream, oldest first, as a real consumer reads it (XRANGE pages)."""
    client = server.client()
    messages: list[dict[str, Any]] = []
    start = "-"
    while True:
        entries = client.xrange(stream, min=start, count=1000)
        for _, fields in entries:
            messages.append(json.loads(fields[b"message"]))
        if len(entries) < 1000:
            return messages
        start = "(" + entries[-1][0].decode()


def published_count(server: MosquittoServer, at_least: int, timeout: float = 30.0) -> int:
    """PUBLISH packets the broker has received since it started (its `$SYS` counter, updated every
    second), once it reaches `at_least` or `timeout` passed."""
    import paho.mqtt.client as mqtt

    counts: list[int] = []
    changed = threading.Condition()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        with changed:
            counts.append(int(message.payload))
            changed.notify_all()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"counter-{free_port()}")
    if server.password:
        client.username_pw_set(server.user, server.password)
    client.on_connect = lambda c, *_: c.subscribe("$SYS/broker/publish/messages/received")
    client.on_message = on_message
    client.connect("127.0.0.1", server.port)
    client.loop_start()
    try:
        with changed:
            changed.wait_for(lambda: bool(counts) and counts[-1] >= at_least, timeout)
            return counts[-1] if counts else 0
    finally:
        client.disconnect()
        client.loop_stop()


class MqttCollector:
    """A subscriber that keeps every payload it receives, in order.

    Its session is persistent (clean session off, QoS 1), so messages published while it is away (a
    broker restart) are queued for it by the broker and arrive after it reconnects.
    """

    def __init__(self, server: MosquittoServer, topic: str = "streamflow/+/detections") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"collector-{free_port()}", clean_session=False
        )
        if server.password:
            client.username_pw_set(server.user, server.password)
        if server.tls:
            client.tls_set(str(server.tls.ca), str(server.tls.client_cert), str(server.tls.client_key))
        client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", server.port)
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(_READY_S):
            raise RuntimeError("mqtt collector: no SUBACK")

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self._changed:
            self.messages.append(json.loads(message.payload))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The messages once `count` distinct frames arrived (or what came within `timeout`)."""
        with self._changed:
            self._changed.wait_for(lambda: len(distinct(self.messages)) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def distinct(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages without the repeats that at-least-once delivery may add (same source and index)."""
    seen: set[tuple[str, int]] = set()
    kept = []
    for message in messages:
        key = (message["source_id"], message["index"])
        if key not in seen:
            seen.add(key)
            kept.append(message)
    return kept


class AtFrame(Stage):
    """Passes frames on and calls `action()` once, when frame `index` goes by (kills a server mid-run)."""

    def __init__(self, index: int, action: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index, self.action = index, action

    def process(self, item: Frame | Batch) -> Frame | Batch:
        if any(frame.index == self.index for frame in item.frames):
            self.action()
        return item


def run_through_outage(
    sink: PublishingSink,
    server: _Server,
    frames: list[Frame],
    *,
    kill_at: int,
    restart_when: Callable[[dict[str, int]], bool],
) -> None:
    """Run `frames` into `sink`, kill `server` when frame `kill_at` passes, restart it (same port) as soon as
    the sink's counters satisfy `restart_when` (for example: it saw the connection break). Event driven,
    not timed: the restart waits for what the sink reports, however slow the machine is."""
    killed = threading.Event()
    finished = threading.Event()

    def kill() -> None:
        server.kill()
        killed.set()

    def restart() -> None:
        killed.wait()
        deadline = time.monotonic() + 120
        while not finished.is_set() and time.monotonic() < deadline:
            publisher = sink.publisher
            if publisher is not None and restart_when(publisher.counters()):
                break
            time.sleep(0.01)
        server.start()

    restarter = threading.Thread(target=restart, daemon=True)
    restarter.start()
    try:
        Pipeline([ListSource(frames), AtFrame(kill_at, kill, name="killer"), sink], device="cpu").run_sync()
    finally:
        finished.set()
        killed.set()
        restarter.join(150)
