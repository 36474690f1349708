"""`streamflow run CONFIG --ray [ADDRESS]` or `--workers N`: the command-line route to a cluster run.

Exit codes as for one process: 0 when every source ended and its results were delivered (moves
included), 1 when a source failed or the cluster could not go on, 130/143 when stopped by a signal
(outputs finalized on the actors).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from streamflow.api.server import parse_bind
from streamflow.cli.app import API_TOKEN_ENV
from streamflow.cluster.api import ClusterControlServer
from streamflow.cluster.config import LOCAL, ClusterConfig
from streamflow.cluster.driver import ClusterError, ClusterResult, ClusterRunner
from streamflow.config import ConfigError, PipelineConfig
from streamflow.sources import SourceSpec

__all__ = ["result_table", "run_on_cluster"]

log = logging.getLogger("streamflow.cluster")
err = Console(stderr=True)
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def result_table(result: ClusterResult) -> Table:
    """One row per source: how it ended, frames delivered, and the actors it ran on."""
    table = Table(title=f"{len(result.sources)} sources on {len(result.actors)} actors", title_justify="left")
    for column in ("source", "ended", "frames", "parts", "actors"):
        table.add_column(column, justify="right" if column in ("frames", "parts") else "left")
    for source_id, outcome in result.sources.items():
        actors = " → ".join(part.actor for part in outcome.parts)
        ended = outcome.state if outcome.error is None else f"{outcome.state}: {outcome.error}"
        table.add_row(source_id, ended, str(outcome.frames), str(len(outcome.parts)), actors)
    return table


def _summary(result: ClusterResult) -> dict[str, Any]:
    return {
        "sources": {
            source_id: {
                "ended": outcome.state,
                "error": outcome.error,
                "frames": outcome.frames,
                "parts": [{"id": p.part_id, "actor": p.actor, "start_frame": p.start_frame} for p in outcome.parts],
            }
            for source_id, outcome in result.sources.items()
        },
        "moves": [
            {"source": m.source, "from": m.from_actor, "to": m.to_actor, "part": m.part, "resume_frame": m.resume_frame}
            for m in result.moves
        ],
        "actors": result.actors,
    }


def _control_server(runner: ClusterRunner, bind: str) -> ClusterControlServer:
    try:
        host, port = parse_bind(bind)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return ClusterControlServer(runner, host=host, port=port, token=os.environ.get(API_TOKEN_ENV) or None)


def run_on_cluster(
    config: PipelineConfig,
    *,
    address: str | None,
    sources: Sequence[SourceSpec] | None,
    workers: int | None = None,
    max_frames: int | None = None,
    stats_json: Path | None = None,
    quiet: bool = False,
    api: str | None = None,
) -> int:
    """Run `config` on Ray actors or worker processes (`address` from `--ray` overrides the config's
    `cluster.address`; `workers` from `--workers` runs that many processes of this machine instead).

    With `api` (`--api HOST:PORT`) the driver serves the cluster's control API and the run stays
    open for sources added over HTTP until SIGINT/SIGTERM.
    """
    cluster = config.cluster or ClusterConfig()
    if address is not None:
        cluster = cluster.model_copy(update={"address": address or LOCAL})
    if workers is not None:  # --workers N: this machine's processes, whatever the config's section says
        cluster = cluster.model_copy(update={"backend": "processes", "address": LOCAL, "actors": workers})
    if max_frames is not None:
        config = config.model_copy(update={"max_frames": max_frames})
    if not (sources or config.sources):
        err.print("[bold red]error:[/] a cluster run spreads sources: give the config a sources: list or --source")
        return 2
    try:
        runner = ClusterRunner(config, cluster=cluster, sources=sources, stay_open=api is not None)
        server = _control_server(runner, api) if api is not None else None
    except ConfigError as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        return 2
    if server is not None:
        try:
            server.serve_in_thread()
        except OSError as error:
            err.print(f"[bold red]error:[/] --api {api}: {error}", highlight=False, soft_wrap=True)
            return 2
    stopped_by: list[int] = []

    def on_signal(number: int, _frame: object) -> None:
        stopped_by.append(number)
        log.warning("%s: stopping the sources everywhere", signal.Signals(number).name)
        runner.stop()

    previous: dict[signal.Signals, Any] = {}
    try:
        runner.start()
        # After start: the Ray core installs its own SIGTERM handler (abort with a stack dump) when
        # it starts in this process; ours finalizes the outputs instead.
        previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNAL_EXIT}
        result = runner.run()
    except ClusterError as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.close()
    if stats_json is not None:
        stats_json.parent.mkdir(parents=True, exist_ok=True)
        stats_json.write_text(json.dumps(_summary(result), indent=2, default=str))
    if not quiet:
        err.print(result_table(result))
    if stopped_by:
        return _SIGNAL_EXIT[signal.Signals(stopped_by[0])]
    if result.failed:
        err.print(f"[bold red]error:[/] sources failed: {', '.join(result.failed)}")
        return 1
    return 0
