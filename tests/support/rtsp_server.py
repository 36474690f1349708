"""A small real RTSP server for tests and benchmarks, plus a handle to run it as a child process.

The server side is GStreamer's gst-rtsp-server, reached through PyGObject. PyGObject is not a PyPI
wheel we can rely on, so the server runs under Debian's `/usr/bin/python3` (Debian packages
`python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
gstreamer1.0-plugins-ugly`) as a separate process; the project's venv only imports the `RtspServer`
handle below, which never imports `gi`.

It serves one live mount, encoded on the fly:
`videotestsrc is-live=true ! video/x-raw,width=W,height=H,framerate=FPS/1 ! x264enc tune=zerolatency
key-int-max=FPS ! rtph264pay name=pay0 pt=96`, listening on 127.0.0.1 only (RTSP and RTP/UDP). The media
is shared: every client gets the same encoded stream, so N clients cost the server one encoder.
When ready it prints one line `READY rtsp://127.0.0.1:PORT/PATH` on stdout.

Command line (port 0 picks a free port; the ready line tells which):

    /usr/bin/python3 tests/support/rtsp_server.py --port 0 --path /live --width 320 --height 240 --fps 30

From Python:

    >>> with RtspServer(width=320, height=240) as server:  # doctest: +SKIP
    ...     print(server.uri)
    rtsp://127.0.0.1:39117/live
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["SYSTEM_PYTHON", "RtspServer", "server_unavailable_reason"]

#: The interpreter that has PyGObject and the GStreamer typelibs (Debian's, not the venv's).
SYSTEM_PYTHON = os.environ.get("STREAMFLOW_RTSP_PYTHON", "/usr/bin/python3")
_SCRIPT = Path(__file__).resolve()
_GST_ELEMENTS = ("videotestsrc", "x264enc", "rtph264pay", "rtpbin", "udpsink")


def server_unavailable_reason() -> str | None:
    """Why the test server cannot run here (missing interpreter, PyGObject or plugins), or None if it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (the RTSP test server needs Debian's python3 with python3-gi)"
    try:
        probe = subprocess.run(
            [SYSTEM_PYTHON, str(_SCRIPT), "--check"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if probe.returncode != 0:
        detail = (probe.stdout + probe.stderr).strip().splitlines()
        return f"RTSP test server unavailable: {detail[-1] if detail else 'probe failed'}"
    return None


class RtspServer:
    """Handle on a test RTSP server child process: start, kill (crash), stop, restart on the same port.

    `port=0` lets the server pick a free port on the first start; later restarts reuse the port it
    got, so a client's uri stays valid across a restart (as a camera's would).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        path: str = "/live",
        width: int = 320,
        height: int = 240,
        fps: int = 30,
        user: str | None = None,
        password: str | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        self.port = port
        self.path = path if path.startswith("/") else "/" + path
        self.width = width
        self.height = height
        self.fps = fps
        self.user = user
        self.password = password
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[str] | None = None

    @property
    def uri(self) -> str:
        """The uri clients use, with credentials when the server requires them."""
        auth = f"{self.user}:{self.password}@" if self.user is not None else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, width: int | None = None, height: int | None = None) -> RtspServer:
        """Start the server (optionally at a new size) and wait for its ready line."""
        if self.running:
            raise RuntimeError("RTSP test server already running")
        self.width = width or self.width
        self.height = height or self.height
        cmd = [
            SYSTEM_PYTHON, str(_SCRIPT),
            "--port", str(self.port), "--path", self.path,
            "--width", str(self.width), "--height", str(self.height), "--fps", str(self.fps),
        ]  # fmt: skip
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password or ""]
        # stderr is inherited so that a failing server explains itself in the test output.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None  # for type checkers: PIPE was requested
        deadline = time.monotonic() + self.ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise TimeoutError(f"RTSP test server not ready after {self.ready_timeout} s")
            readable, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not readable:
                continue
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"RTSP test server exited with code {code} before it was ready")
            if line.startswith("READY "):
                self.port = int(line.split()[1].rsplit(":", 1)[1].split("/", 1)[0])
                return self

    def kill(self) -> None:
        """Crash the server (SIGKILL): clients see the connection drop without a TEARDOWN."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM)."""
        self._end(signal.SIGTERM)

    def restart(self, *, delay: float = 0.0, width: int | None = None, height: int | None = None) -> None:
        """Crash the server, wait `delay` seconds, start it again on the same port."""
        self.kill()
        time.sleep(delay)
        self.start(width=width, height=height)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the server itself: runs under /usr/bin/python3 only ------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    import gi  # type: ignore[import-not-found]  # Debian's PyGObject, absent from the venv

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found]

    Gst.init(None)
    missing = [name for name in _GST_ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"missing GStreamer elements: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.check:
        print("ok")
        return 0

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={args.width},height={args.height},"
        f"framerate={args.fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    factory.set_shared(True)
    # Without a unicast range in the pool, RTP/RTCP UDP sockets would bind every interface.
    pool = GstRtspServer.RTSPAddressPool()
    pool.add_range("127.0.0.1", "127.0.0.1", 40000, 60000, 0)
    factory.set_address_pool(pool)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", args.user)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        permission = Gst.Structure.new_from_string(
            f"{args.user}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
        factory.add_role_from_structure(permission)

    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    # A pruned session would otherwise linger until its timeout after a client vanished.
    GLib.timeout_add_seconds(2, lambda: (server.get_session_pool().cleanup(), True)[1])
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{args.path}", flush=True)
    loop.run()
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="serve a live test stream over RTSP on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8554, help="0 = pick a free port")
    parser.add_argument("--path", default="/live", help="mount path")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--user", default=None, help="require HTTP basic auth with this user")
    parser.add_argument("--password", default="")
    parser.add_argument("--check", action="store_true", help="only check that GStreamer and plugins are there")
    args: Any = parser.parse_args(argv)
    if not args.path.startswith("/"):
        args.path = "/" + args.path
    return args


if __name__ == "__main__":
    sys.exit(_serve(_parse(None)))
