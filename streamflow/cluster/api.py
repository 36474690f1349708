"""The control API at the driver, for the whole cluster: the routes of `streamflow.api`, cluster-wide.

- `GET /sources`, `GET /sources/{id}`: every source with its state, the actor it runs on, its parts
  (one more per move) and delivered frames and fps.
- `POST /sources` (token): body as for one process (`{"id": ..., "uri": ..., <options>}`); the
  source goes to the least loaded actor. 201 placed; 400 bad JSON; 409 duplicate id; 422 invalid
  field or refused by the actor's pipeline; 503 the cluster is not running.
- `DELETE /sources/{id}` (token): the source stops on its actor, its outputs are finalized there;
  waits up to `?wait=` seconds (default 30): 200 removed, 202 still draining, 404 unknown.
- `GET /healthz`: 200 while the driver answers (live actors listed); `GET /readyz`: 200 while the
  cluster runs with at least one live actor, else 503.
- `GET /metrics`: every actor's own metrics (`streamflow.api.metrics`: sources, stages, process) with
  `actor` and `node` labels added, plus the driver's `streamflow_cluster_*` families.

Authentication, error bodies, body limits and the server's lifecycle are `ControlServer`'s: this
class only swaps what the handlers read (the driver instead of one pipeline). The server runs on its
own event loop in a thread (`serve_in_thread`), since the driver's watch loop is not asyncio; the
handlers hand the driver's blocking calls (which wait on Ray) to threads.

Example:
    >>> server = ClusterControlServer(runner, port=8080)  # doctest: +SKIP
    >>> server.serve_in_thread()  # doctest: +SKIP
    >>> runner.run()  # doctest: +SKIP
    >>> server.close()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from streamflow.api.server import _MAX_BODY_BYTES, DEFAULT_HOST, ControlServer, _error, _first_error, _wait_param
from streamflow.cluster.driver import ClusterRunner
from streamflow.sources import SourceSpec

__all__ = ["ClusterControlServer", "ClusterMetrics"]


class ClusterMetrics(Collector):
    """Prometheus families of the whole cluster, read from the actors at scrape time."""

    def __init__(self, runner: ClusterRunner) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        yield from self.runner.actor_metric_families()
        actors = GaugeMetricFamily("streamflow_cluster_actors", "Actors by liveness", labels=["alive"])
        alive = len(self.runner.actor_pids())
        actors.add_metric(["true"], alive)
        actors.add_metric(["false"], len(self.runner.actor_names()) - alive)
        yield actors
        moves = CounterMetricFamily("streamflow_cluster_moves", "Sources moved off dead actors")
        moves.add_metric([], len(self.runner.moves))
        yield moves
        states = GaugeMetricFamily("streamflow_cluster_sources", "Sources by state", labels=["state"])
        counts: dict[str, int] = {}
        for described in self.runner.describe_sources():
            counts[described["state"]] = counts.get(described["state"], 0) + 1
        for state, count in sorted(counts.items()):
            states.add_metric([state], count)
        yield states


class ClusterControlServer(ControlServer):
    """The control API for a `ClusterRunner`; see the module docstring."""

    def __init__(
        self,
        runner: ClusterRunner,
        *,
        host: str = DEFAULT_HOST,
        port: int = 8080,
        token: str | None = None,
        max_body_bytes: int = _MAX_BODY_BYTES,
    ) -> None:
        # Not ControlServer.__init__: that one attaches to a Pipeline. Its HTTP set-up (address,
        # token, body limit, routes to the handlers overridden here) is shared.
        self.runner = runner
        runner.metrics_with_reports = True  # scrapes read the actors' latest reports
        self.collector = ClusterMetrics(runner)
        self._set_up_http(host=host, port=port, token=token, max_body_bytes=max_body_bytes)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None

    # -- a loop of its own ----------------------------------------------------------------------
    def serve_in_thread(self, timeout_s: float = 30.0) -> None:
        """Start serving on a thread with its own event loop; returns once bound (OSError if not)."""
        bound = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._closing = asyncio.Event()
            try:
                await self.start()
            except BaseException as error:
                failure.append(error)
                bound.set()
                return
            bound.set()
            try:
                await self._closing.wait()
            finally:
                await self.stop()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), name="streamflow-cluster-api", daemon=True)
        self._thread.start()
        bound.wait(timeout_s)
        if failure:
            raise failure[0]

    def close(self) -> None:
        if self._loop is not None and self._closing is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._closing.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- handlers -------------------------------------------------------------------------------
    async def list_sources(self, request: web.Request) -> web.Response:
        sources = await asyncio.to_thread(self.runner.describe_sources)
        return web.json_response({"sources": sources, "actors": self.runner.actor_names()})

    async def get_source(self, request: web.Request) -> web.Response:
        source_id = request.match_info["id"]
        for described in await asyncio.to_thread(self.runner.describe_sources):
            if described["id"] == source_id:
                return web.json_response(described)
        return _error(404, f"no source {source_id!r}")

    async def add_source(self, request: web.Request) -> web.Response:
        raw = await request.read()  # 413 past the body limit
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return _error(400, f"malformed JSON: {error}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object with id, uri and source options")
        try:
            spec = SourceSpec(**body)
        except ValidationError as error:
            field, message = _first_error(error)
            return _error(422, f"field {field!r}: {message}", field=field)
        if not self.runner.running:
            return _error(503, "the cluster is not running (starting up or stopping)")
        if spec.id in self.runner.running_source_ids():
            return _error(409, f"source id {spec.id!r} is already in use", field="id")
        try:
            await asyncio.to_thread(self.runner.add_source, spec)
        except ValueError as error:  # refused by the actor's pipeline (bad option, max_sources)
            return _error(422, str(error).splitlines()[0])
        return web.json_response(self.runner.describe_source(spec.id), status=201)

    async def remove_source(self, request: web.Request) -> web.Response:
        source_id = request.match_info["id"]
        wait_s = _wait_param(request, default=30.0)
        try:
            await asyncio.to_thread(self.runner.remove_source, source_id)
        except KeyError:
            return _error(404, f"no running source {source_id!r}")
        # The driver learns that the source drained from the actor's next progress report.
        ended = await asyncio.to_thread(self.runner.wait_ended, source_id, wait_s)
        return web.json_response(self.runner.describe_source(source_id), status=200 if ended else 202)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "actors_alive": sorted(self.runner.actor_pids())})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.runner.running and bool(self.runner.actor_pids())
        return web.json_response(
            {"ready": ready, "actors_alive": len(self.runner.actor_pids())}, status=200 if ready else 503
        )

    async def metrics_text(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.collector)  # type: ignore[arg-type]
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
