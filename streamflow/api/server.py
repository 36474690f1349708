"""The control API: an aiohttp server on the pipeline's own event loop.

Endpoints (JSON unless said otherwise; every error is `{"error": "...", "field": ...}`):

- `GET /sources`: every source with its state, uri (credentials masked) and figures;
  `GET /sources/{id}`: one of them.
- `POST /sources` (token): body `{"id": ..., "uri": ..., "type"?: ..., <options of that type>}`,
  validated by the same models as the YAML `sources:` list. Waits up to `?wait=` seconds (default
  5) for the input to open: 201 running; 202 still opening; 422 when it could not be opened (the
  reason in `error`; the other sources are untouched). 400 bad JSON, 409 id in use,
  422 invalid field, 429 `max_sources` reached, 503 pipeline not running.
- `DELETE /sources/{id}` (token): the source stops, what it queued drains and its outputs are
  finalized; waits up to `?wait=` seconds (default 30): 200 ended, 202 still draining, 404 unknown.
- `GET /healthz`: 200 while the event loop answers (with its lag).
- `GET /readyz`: 200 when every stage is set up (models loaded), the pipeline runs, and no
  configured source (from the config or CLI, or added before the run) is still opening its input;
  else 503 with the `reason` and the ids still `starting`. The body also lists the `failed` ones and
  counts sources by state. Sources added while running don't make it unready (their POST answers
  whether they opened). Sources that ended, normally or by failing, don't either: a failed source
  won't recover by waiting, it shows in `failed` and in the metrics (`streamflow_sources{state=
  "failed"}`, `streamflow_source_up`) for alerts, and a pod that is not ready leaves its Service,
  which would cut off the very API that replaces the source. A `stay_open` pipeline with no source
  left is ready: it accepts sources.
- `GET /metrics`: Prometheus text (`streamflow.api.metrics`).

Mutating endpoints need `Authorization: Bearer <token>` when a token is set (compared in constant
time; never logged or echoed). Bodies are limited to `max_body_bytes` (413 beyond).

Example:
    >>> from streamflow import Pipeline
    >>> from streamflow.testing import ListSink, ListSource
    >>> server = ControlServer(Pipeline([ListSource(), ListSink()], device="cpu"), port=0)
    >>> server.host
    '127.0.0.1'
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from streamflow.api.metrics import PipelineMetrics
from streamflow.observers import SourceStats
from streamflow.pipeline import Pipeline, PipelineError, SourceState, SourceStatus
from streamflow.sources import SourceSpec

__all__ = ["DEFAULT_HOST", "ControlServer", "parse_bind"]

log = logging.getLogger("streamflow.api")

DEFAULT_HOST = "127.0.0.1"
# A source spec is a few hundred bytes; anything near a megabyte is a mistake or an attack.
_MAX_BODY_BYTES = 64 * 1024
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `PORT` (on 127.0.0.1) as (host, port); ValueError names the problem."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--api {text!r}: the port must be a number (HOST:PORT or PORT)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--api {text!r}: port {port} is out of range 0-65535")
    return host, port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _error(status: int, message: str, **extra: Any) -> web.Response:
    response = web.json_response({"error": message, **extra}, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


class ControlServer:
    """Serves the control API for `pipeline` on the loop it runs on; see the module docstring.

    Use `async with server.serving():` around `await pipeline.run()` (or give `server.serving` to
    `Pipeline.run_sync(alongside=...)`). Build it before the run: it attaches the metrics observer.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        host: str = DEFAULT_HOST,
        port: int = 8080,
        token: str | None = None,
        max_body_bytes: int = _MAX_BODY_BYTES,
    ) -> None:
        self.pipeline = pipeline
        self.metrics = PipelineMetrics(pipeline)
        self._set_up_http(host=host, port=port, token=token, max_body_bytes=max_body_bytes)

    def _set_up_http(self, *, host: str, port: int, token: str | None, max_body_bytes: int) -> None:
        """The address, token, body limit and routes: the same for every server of this API."""
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self._token = token.encode() if token else None
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._errors_as_json])
        self.app.router.add_get("/sources", self.list_sources)
        self.app.router.add_get("/sources/{id}", self.get_source)
        self.app.router.add_post("/sources", self._protected(self.add_source))
        self.app.router.add_delete("/sources/{id}", self._protected(self.remove_source))
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics_text)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and serve (on the running loop). OSError when the address is taken."""
        if not _is_loopback(self.host) and self._token is None:
            log.warning(
                "control API on %s without a token: anyone who reaches it can add and remove sources", self.host
            )
        # No access log: a scrape every few seconds would bury the pipeline's own messages.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(
                error.errno, f"control API cannot listen on {self.host}:{self.port}: {error.strerror}"
            ) from None
        sockets = self._runner.addresses
        if sockets:
            self.port = int(sockets[0][1])
        log.info("control API on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[ControlServer]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    # -- middleware -----------------------------------------------------------------------------
    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            message = error.reason
            if error.status == 413:
                message = f"request body too large: at most {self.max_body_bytes} bytes"
            return _error(error.status, message)

    def _protected(self, handler: _Handler) -> _Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self._token is not None:
                scheme, _, given = request.headers.get("Authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not given:
                    return _error(401, "missing bearer token (Authorization: Bearer <token>)")
                if not hmac.compare_digest(given.strip().encode(), self._token):
                    return _error(401, "invalid bearer token")
            return await handler(request)

        return guarded

    # -- sources --------------------------------------------------------------------------------
    def _describe(self, status: SourceStatus, stats: Mapping[str, SourceStats] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {k: v.value if isinstance(v, SourceState) else v for k, v in asdict(status).items()}
        if stats is None:
            stats = self._source_stats()
        figures = stats.get(status.id)
        if figures is None:  # not started yet
            return data
        data.update(
            frames=figures.frames,
            frames_done=figures.frames_done,
            fps=round(figures.fps, 2),
            dropped=figures.dropped,
            reconnects=figures.reconnects,
        )
        return data

    def _source_stats(self) -> dict[str, SourceStats]:
        return {figures.id: figures for figures in self.pipeline.snapshot().sources}

    def _status(self, source_id: str) -> SourceStatus:
        return next(status for status in self.pipeline.source_status() if status.id == source_id)

    async def list_sources(self, request: web.Request) -> web.Response:
        stats = self._source_stats()  # one snapshot for all: a listing of 64 sources stays one read
        sources = [self._describe(status, stats) for status in self.pipeline.source_status()]
        return web.json_response({"sources": sources, "max_sources": self.pipeline.max_sources})

    async def get_source(self, request: web.Request) -> web.Response:
        source_id = request.match_info["id"]
        for status in self.pipeline.source_status():
            if status.id == source_id:
                return web.json_response(self._describe(status))
        return _error(404, f"no source {source_id!r}")

    async def add_source(self, request: web.Request) -> web.Response:
        wait_s = _wait_param(request, default=5.0)
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
        pipeline = self.pipeline
        if not pipeline.running:
            return _error(503, "the pipeline is not running (starting up or stopping)")
        if spec.id in pipeline.source_ids:
            return _error(409, f"source id {spec.id!r} is already in use", field="id")
        if pipeline.max_sources is not None and len(pipeline.source_ids) >= pipeline.max_sources:
            return _error(429, f"max_sources ({pipeline.max_sources}) reached: remove a source first")
        try:
            pipeline.add_source(spec)
        except PipelineError as error:
            return _error(422, str(error), field=error.field)
        try:
            status = await asyncio.wait_for(pipeline.source_opened(spec.id), wait_s)
        except TimeoutError:
            return web.json_response(self._describe(self._status(spec.id)), status=202)
        if status.state is SourceState.FAILED:
            return _error(422, f"source {spec.id!r} could not be opened: {status.error}", source=self._describe(status))
        return web.json_response(self._describe(status), status=201)

    async def remove_source(self, request: web.Request) -> web.Response:
        source_id = request.match_info["id"]
        wait_s = _wait_param(request, default=30.0)
        try:
            self.pipeline.remove_source(source_id)
        except KeyError:
            return _error(404, f"no running source {source_id!r}")
        try:
            status = await asyncio.wait_for(self.pipeline.source_drained(source_id), wait_s)
        except TimeoutError:
            return web.json_response(self._describe(self._status(source_id)), status=202)
        return web.json_response(self._describe(status))

    # -- health and metrics ---------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        # Answering at all shows the loop is responsive; the lag of one turn shows how busy it is.
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0)
        return web.json_response({"status": "ok", "loop_lag_ms": round(1000 * (loop.time() - started), 3)})

    async def readyz(self, request: web.Request) -> web.Response:
        statuses = self.pipeline.source_status()
        counts = {state.value: 0 for state in SourceState}
        for status in statuses:
            counts[status.state.value] += 1
        starting = sorted(s.id for s in statuses if s.configured and s.state is SourceState.STARTING)
        failed = sorted(s.id for s in statuses if s.state is SourceState.FAILED)
        reason = None
        if not self.pipeline.running:
            reason = "the pipeline is not running (setting up its stages, or stopping)"
        elif starting:
            reason = f"configured sources still opening their input: {', '.join(starting)}"
        body = {"ready": reason is None, "reason": reason, "starting": starting, "failed": failed, "sources": counts}
        return web.json_response(body, status=503 if reason else 200)

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _wait_param(request: web.Request, *, default: float) -> float:
    text = request.query.get("wait")
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"query parameter 'wait' must be seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise web.HTTPBadRequest(reason=f"query parameter 'wait' must be >= 0 seconds, got {text!r}")
    return value


def _first_error(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(body)"
    return field, str(first["msg"]).removeprefix("Value error, ")
