"""The driver: spreads a config's sources over Ray actors, watches them, moves sources off dead ones.

`ClusterRunner(config, cluster=ClusterConfig(...)).run()` starts (or joins) a Ray cluster, starts
one `PipelineHost` actor per GPU (or as configured), places the sources by measured load
(`placement`), and polls every actor for per-source progress. It returns when every source has
ended and its results were delivered (or after `stop()`).

Failover, at least once: when an actor dies (its process or its node) or stops answering for
`dead_after_s`, each of its unfinished sources moves to the least loaded surviving actor (a new
actor is started when none survives). A file source resumes at the frame after the last one whose
results the driver knew were delivered (`start_frame`); the frames between that report and the
death are delivered twice. A live source reconnects. The resumed part writes to a new part:
its source id becomes `ID.partN`, so `{source}` paths name a new file (`out/cam1.part1.jsonl`)
and nothing already written is overwritten or appended to; frames keep their index in the
file, so readers merge the parts by index. The driver logs one line per move.

Example:
    >>> runner = ClusterRunner(load_config("pipeline.yaml"), cluster=ClusterConfig(actors=2))  # doctest: +SKIP
    >>> result = runner.run()  # doctest: +SKIP
    >>> [(m.source, m.from_actor, m.to_actor, m.resume_frame) for m in result.moves]  # doctest: +SKIP
    [('cam3', 'actor-1', 'actor-0', 42)]
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamflow.cluster.config import LOCAL, ClusterConfig
from streamflow.cluster.placement import pick_actor, spread
from streamflow.cluster.progress import SourceProgress
from streamflow.config import ConfigError, PipelineConfig
from streamflow.per_source import is_per_source
from streamflow.registry import resolve_stage_type
from streamflow.sources import SourceSpec, source_type_for

__all__ = ["ClusterError", "ClusterResult", "ClusterRunner", "Move", "SourceOutcome", "part_options"]

log = logging.getLogger("streamflow.cluster")


class ClusterError(RuntimeError):
    """The cluster run cannot go on: no actor could be started, or a pipeline stage failed."""


@dataclass(frozen=True, slots=True)
class Move:
    """A source moved off a dead actor."""

    source: str
    from_actor: str
    to_actor: str
    part: str  # the source id on the new actor
    resume_frame: int | None  # None: a live source, reconnected
    detected_at: float  # time.monotonic() when the death was noticed
    moved_at: float  # ... and when the new actor had taken the source


@dataclass(slots=True)
class _Part:
    part_id: str
    actor: str
    start_frame: int | None
    progress: SourceProgress = field(default_factory=SourceProgress)


@dataclass(slots=True)
class SourceOutcome:
    """One source over the whole run (all its parts)."""

    spec: SourceSpec
    parts: list[_Part] = field(default_factory=list)
    state: str = "running"  # running, removing, finished, removed, failed, stopped
    error: str | None = None

    @property
    def frames(self) -> int:
        """Frames delivered, over every part (a moved source counts its repeated frames twice)."""
        return sum(part.progress.frames for part in self.parts)

    @property
    def current(self) -> _Part:
        return self.parts[-1]

    def next_frame(self) -> int:
        """Where a resumed part starts: after the last frame known delivered in any part."""
        start = self.spec.options.get("start_frame") or 0
        for part in self.parts:
            start = max(start, part.progress.delivered + 1, part.start_frame or 0)
        return start


@dataclass(slots=True)
class ClusterResult:
    sources: dict[str, SourceOutcome]
    moves: list[Move]
    actors: dict[str, dict[str, Any]]  # actor name -> where it ran and its run figures (None if it died)

    @property
    def failed(self) -> list[str]:
        return [source_id for source_id, outcome in self.sources.items() if outcome.state == "failed"]


@dataclass(slots=True)
class _Actor:
    name: str
    handle: Any
    info: dict[str, Any] = field(default_factory=dict)
    alive: bool = True
    # Its Prometheus families as of its latest progress report (when metrics are wanted).
    metric_families: list[Any] | None = None


def part_options(
    spec: SourceSpec,
    part_id: str,
    start_frame: int | None,
    *,
    max_frames: int | None = None,
    template_max_frames: int | None = None,
) -> dict[str, Any]:
    """The spec of one part of a source: its own id, its first frame, and the same last frame.

    A resumed part stops where the whole source would have: the pipeline's `max_frames` counts the
    frames a source produces (from its first), so it becomes the decoder's own frame cap, which
    counts frame indices in the file.
    """
    options = spec.model_dump(exclude_none=True)
    options["id"] = part_id
    if start_frame is None:
        return options
    first = spec.options.get("start_frame") or 0
    if start_frame > first:
        options["start_frame"] = start_frame
        if max_frames is not None:
            cap = first + max_frames
            options["max_frames"] = min(options.get("max_frames") or template_max_frames or cap, cap)
    return options


def _as_spec(entry: SourceSpec | Mapping[str, Any]) -> SourceSpec:
    return entry if isinstance(entry, SourceSpec) else SourceSpec(**entry)


def _resumes_by_frame(spec: SourceSpec) -> bool:
    cls = resolve_stage_type(spec.type or source_type_for(spec.uri))
    return "start_frame" in cls.Config.model_fields


class ClusterRunner:
    """Run a pipeline config with its sources spread over Ray actors; see the module docstring."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        cluster: ClusterConfig | None = None,
        sources: Sequence[SourceSpec | Mapping[str, Any]] | None = None,
        stay_open: bool = False,
        workdir: str | None = None,
        host_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.cluster = cluster or config.cluster or ClusterConfig()
        # What each pipeline host is asked to keep besides progress (the bench: result times).
        self.host_options = dict(host_options or {})
        # Set by the control API: every progress report then carries the actor's metric families,
        # so that a scrape reads the latest reports here instead of waiting on busy actors, whose
        # answer waits for their interpreter lock (README, Measured: the control API at the driver).
        self.metrics_with_reports = False
        self._kind = "worker" if self.cluster.backend == "processes" else "actor"
        specs = [_as_spec(entry) for entry in sources] if sources is not None else list(config.sources or [])
        if len(config.stages) < 2:
            raise ConfigError("a cluster run needs a sink after the source: results are delivered there")
        _check_per_source_paths(config)
        self.stay_open = stay_open
        self.workdir = workdir or os.getcwd()
        self.sources: dict[str, SourceOutcome] = {spec.id: SourceOutcome(spec) for spec in specs}
        if len(self.sources) != len(specs):
            raise ConfigError("source ids must be unique", file=config.source_file, field="sources")
        self.moves: list[Move] = []
        self._actors: dict[str, _Actor] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified after every round of reports
        self._stop = threading.Event()
        self._started_ray = False
        self._released = False
        self._target_actors = 0
        # Actors started to replace dead ones, not up yet: name -> the ref of their `ready()` call.
        self._pending: dict[str, Any] = {}
        self._remote_host: Any = None
        self._ray: Any = None

    # -- public control -----------------------------------------------------------------------
    def add_source(self, spec: SourceSpec | Mapping[str, Any]) -> str:
        """Place a new source on the least loaded actor (safe from any thread while `run()` runs)."""
        spec = _as_spec(spec)
        with self._lock:
            if spec.id in self.sources and self.sources[spec.id].state in ("running", "removing"):
                raise ValueError(f"source id {spec.id!r} is already in use")
            outcome = SourceOutcome(spec)
            if self._remote_host is not None:  # running: place it now; before start() it is placed with the rest
                self._place(outcome, spec.id, self._pick(), start_frame=self._initial_start(spec))
            self.sources[spec.id] = outcome
        return spec.id

    def remove_source(self, source_id: str) -> None:
        """Stop one source wherever it runs; its outputs are finalized there."""
        with self._lock:
            outcome = self.sources.get(source_id)
            if outcome is None or outcome.state not in ("running", "removing"):
                raise KeyError(f"no running source {source_id!r}")
            outcome.state = "removing"
            part = outcome.current
            actor = self._actors[part.actor]
            if actor.alive:
                try:
                    self._ray.get(actor.handle.remove_source.remote(part.part_id))
                except KeyError:
                    pass  # it ended on its own meanwhile
                except self._ray.exceptions.RayActorError:
                    outcome.state = "removed"  # its actor died: nothing left to stop
            else:
                outcome.state = "removed"

    def stop(self) -> None:
        """End the run: sources are stopped where they run, outputs finalized."""
        self._stop.set()

    def actor_pids(self) -> dict[str, int]:
        """Process id of each live actor (for operators, and for tests that kill one)."""
        with self._lock:
            return {name: actor.info["pid"] for name, actor in self._actors.items() if actor.alive}

    @property
    def running(self) -> bool:
        """True once the actors are up and until the run stops."""
        return self._remote_host is not None and not self._stop.is_set() and not self._released

    def actor_names(self) -> list[str]:
        """Every actor started in this run, dead ones included."""
        with self._lock:
            return list(self._actors)

    def running_source_ids(self) -> list[str]:
        with self._lock:
            return [source_id for source_id, o in self.sources.items() if o.state in ("running", "removing")]

    def describe_source(self, source_id: str) -> dict[str, Any]:
        """One source as operators see it (KeyError for an unknown id)."""
        with self._lock:
            outcome = self.sources[source_id]
            current = outcome.parts[-1] if outcome.parts else None
            return {
                "id": source_id,
                "uri": outcome.spec.display_uri,
                "state": outcome.state,
                "error": outcome.error,
                "actor": current.actor if current is not None else None,
                "parts": [{"id": p.part_id, "actor": p.actor, "start_frame": p.start_frame} for p in outcome.parts],
                "frames": outcome.frames,
                "fps": round(current.progress.fps, 2) if current is not None else 0.0,
            }

    def wait_ended(self, source_id: str, timeout_s: float) -> bool:
        """Block until the source has ended and its outputs are final; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self.sources[source_id].state not in ("running", "removing"), timeout_s
            )

    def describe_sources(self) -> list[dict[str, Any]]:
        with self._lock:
            ids = list(self.sources)
        return [self.describe_source(source_id) for source_id in ids]

    def actor_metric_families(self) -> list[Any]:
        """Every live actor's Prometheus families, merged by name, each sample labelled with its
        actor and node. With `metrics_with_reports` they are those of each actor's latest progress
        report (at most `poll_interval_s` old); an actor that has not reported them yet is asked
        now (one that does not answer within `dead_after_s` is left out)."""
        from prometheus_client.core import Metric
        from prometheus_client.samples import Sample

        with self._lock:
            live = [actor for actor in self._actors.values() if actor.alive]
        refs = {
            actor.name: actor.handle.metric_families.remote()
            for actor in live
            if not self.metrics_with_reports or actor.metric_families is None
        }
        merged: dict[str, Any] = {}
        for actor in live:
            ref = refs.get(actor.name)
            if ref is None:
                families = actor.metric_families or []
            else:
                try:
                    families = self._ray.get(ref, timeout=self.cluster.dead_after_s)
                except (self._ray.exceptions.RayActorError, self._ray.exceptions.GetTimeoutError):
                    continue
            extra = {"actor": actor.name, "node": str(actor.info.get("node", ""))}
            for family in families:
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                target.samples.extend(
                    Sample(sample.name, {**sample.labels, **extra}, sample.value, sample.timestamp, sample.exemplar)
                    for sample in family.samples
                )
        return list(merged.values())

    def placement(self) -> dict[str, list[str]]:
        """Running sources by actor."""
        with self._lock:
            placed: dict[str, list[str]] = {name: [] for name, actor in self._actors.items() if actor.alive}
            for source_id, outcome in self.sources.items():
                if outcome.state in ("running", "removing") and outcome.current.actor in placed:
                    placed[outcome.current.actor].append(source_id)
            return placed

    # -- the run ------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to (or start) Ray, start the actors, place the configured sources.

        On failure whatever was started is released (actors killed, a local Ray shut down).
        """
        try:
            self._start()
        except BaseException:
            self._release()
            raise

    def _start(self) -> None:
        if self.cluster.backend == "processes":
            from streamflow.cluster.processes import LocalProcesses

            self._ray = LocalProcesses()
            self._started_ray = True  # shutdown() ends the worker processes
        else:
            self._start_ray()
        self._remote_host = self._ray.remote(max_restarts=0, max_concurrency=4)(_host_class())
        names = [f"{self._kind}-{i}" for i in range(self._actor_count())]
        placed = spread(list(self.sources), names)
        for name in names:
            specs = [self.sources[source_id].spec for source_id in placed[name]]
            self._start_actor(name, specs)
        self._wait_ready(list(self._actors.values()))
        # Only now, with every actor's models loaded: see `PipelineHost` (why sources wait).
        self._ray.get(
            [actor.handle.start_sources.remote() for actor in self._actors.values()],
            timeout=self.cluster.start_timeout_s,
        )
        self._target_actors = len(names)
        for name in names:
            for source_id in placed[name]:
                outcome = self.sources[source_id]
                outcome.parts.append(_Part(source_id, name, self._initial_start(outcome.spec)))
        log.info("sources placed: %s", {name: ids for name, ids in placed.items()})

    def _start_ray(self) -> None:
        try:
            import ray
        except ImportError:
            raise ClusterError("running on Ray needs the ray package: pip install 'streamflow[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            address = self.cluster.address
            if address == LOCAL:
                ray.init(num_cpus=self.cluster.local_cpus, include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(address=address, logging_level=logging.WARNING)
            self._started_ray = True

    def run(self) -> ClusterResult:
        """Start if needed, then watch until every source is done (or `stop()`); actors are released."""
        try:
            if self._remote_host is None:
                self.start()
            while not self._stop.is_set():
                try:
                    self._poll()
                except ClusterError:
                    self._finish()  # the other actors finalize what they wrote before the run fails
                    raise
                if not self.stay_open and not self._running():
                    break
                self._stop.wait(self.cluster.poll_interval_s)
            return self._finish()
        finally:
            self._release()

    # -- internals ----------------------------------------------------------------------------
    def _actor_count(self) -> int:
        if self.cluster.actors is not None:
            return self.cluster.actors
        resources = self._ray.cluster_resources()
        if resources.get("GPU", 0) and self.cluster.gpus_per_actor > 0:
            count = int(resources["GPU"] // self.cluster.gpus_per_actor)
        else:
            count = int(resources.get("CPU", 1) // self.cluster.cpus_per_actor)
        return max(1, min(count, len(self.sources) or 1))

    def _start_actor(self, name: str, specs: Sequence[SourceSpec]) -> _Actor:
        gpus = self.cluster.gpus_per_actor if self._ray.cluster_resources().get("GPU", 0) else 0
        handle = self._remote_host.options(name=None, num_gpus=gpus, num_cpus=self.cluster.cpus_per_actor).remote(
            self.config,
            list(specs),
            name=name,
            workdir=self.workdir,
            log_level=logging.WARNING,
            **self.host_options,
        )
        actor = self._actors[name] = _Actor(name, handle)
        return actor

    def _wait_ready(self, actors: Sequence[_Actor]) -> None:
        refs = [actor.handle.ready.remote(self.cluster.start_timeout_s) for actor in actors]
        try:
            infos = self._ray.get(refs, timeout=self.cluster.start_timeout_s)
        except self._ray.exceptions.GetTimeoutError:
            raise ClusterError(
                f"actors not up within {self.cluster.start_timeout_s:g} s: does the cluster have the "
                f"resources ({self.cluster.gpus_per_actor:g} GPU, {self.cluster.cpus_per_actor:g} CPU each)?"
            ) from None
        except Exception as error:  # the actor died (RayActorError), or its stages failed to set up
            raise ClusterError(f"an actor failed to start: {error}".splitlines()[0]) from None
        for actor, info in zip(actors, infos, strict=True):
            actor.info = info
            log.info("%s up: pid %s on %s", actor.name, info["pid"], info["host"])

    def _initial_start(self, spec: SourceSpec) -> int | None:
        return spec.options.get("start_frame") if _resumes_by_frame(spec) else None

    def _running(self) -> bool:
        return any(outcome.state in ("running", "removing") for outcome in self.sources.values())

    def _pick(self) -> str:
        loads: dict[str, list[float | None]] = {name: [] for name, actor in self._actors.items() if actor.alive}
        for outcome in self.sources.values():
            part = outcome.parts[-1] if outcome.parts else None
            if part is not None and outcome.state in ("running", "removing") and part.actor in loads:
                loads[part.actor].append(part.progress.fps or None)
        if not loads:  # nobody to move to: wait for a replacement (or start one)
            name = next(iter(self._pending), None) or self._start_actor(f"{self._kind}-{len(self._actors)}", []).name
            self._pending.pop(name, None)
            self._wait_ready([self._actors[name]])
            self._actors[name].alive = True
            log.warning("no actor left: %s is up", name)
            return name
        return pick_actor(loads)

    def _replace(self, dead: _Actor) -> None:
        """Start an actor in place of a dead one (without waiting): the cluster may have room again,
        e.g. Kubernetes replacing a pod. It takes new and moved sources once it is up."""
        live = sum(actor.alive for actor in self._actors.values())
        if live + len(self._pending) >= self._target_actors:
            return
        actor = self._start_actor(f"{self._kind}-{len(self._actors)}", [])
        actor.alive = False  # not placeable until it answers
        self._pending[actor.name] = actor.handle.ready.remote(self.cluster.start_timeout_s)
        log.info("starting %s in place of %s", actor.name, dead.name)

    def _adopt_replacements(self) -> None:
        if not self._pending:
            return
        ready, _ = self._ray.wait(list(self._pending.values()), num_returns=len(self._pending), timeout=0)
        for name, ref in list(self._pending.items()):
            if ref not in ready:
                continue
            del self._pending[name]
            try:
                self._actors[name].info = self._ray.get(ref)
            except Exception as error:  # died, or its stages failed to set up
                log.error("%s did not start: %s", name, str(error).splitlines()[0])
                continue
            self._actors[name].alive = True
            log.info("%s up: pid %s on %s", name, self._actors[name].info["pid"], self._actors[name].info["host"])

    def _place(self, outcome: SourceOutcome, part_id: str, actor_name: str, *, start_frame: int | None) -> str:
        """Add `outcome`'s source to an actor as `part_id` (moving on if that actor is dead too)."""
        options = part_options(
            outcome.spec,
            part_id,
            start_frame,
            max_frames=self.config.max_frames,
            template_max_frames=self.config.stages[0].options.get("max_frames"),
        )
        while True:
            actor = self._actors[actor_name]
            try:
                self._ray.get(actor.handle.add_source.remote(options), timeout=self.cluster.dead_after_s)
            except (self._ray.exceptions.RayActorError, self._ray.exceptions.GetTimeoutError):
                self._mark_dead(actor)
                actor_name = self._pick()
                continue
            outcome.parts.append(_Part(part_id, actor_name, start_frame))
            return actor_name

    def _mark_dead(self, actor: _Actor) -> None:
        if actor.alive:
            actor.alive = False
            self._ray.kill(actor.handle, no_restart=True)

    def _poll(self) -> None:
        with self._lock:
            self._adopt_replacements()
            live = [actor for actor in self._actors.values() if actor.alive]
            with_metrics = self.metrics_with_reports
            refs = {actor.name: actor.handle.report.remote(with_metrics=with_metrics) for actor in live}
        ready, _ = self._ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.cluster.dead_after_s)
        dead: list[_Actor] = []
        with self._lock:
            for actor in live:
                ref = refs[actor.name]
                if ref not in ready:
                    log.warning("%s did not answer for %g s: treated as dead", actor.name, self.cluster.dead_after_s)
                    dead.append(actor)
                    continue
                try:
                    report = self._ray.get(ref)
                except self._ray.exceptions.RayActorError as error:
                    # Why it is gone (its exit code or signal, where the back end knows it), before the
                    # lines that move its sources: without it a crash and a stall look alike in the log.
                    log.warning("%s is gone: %s", actor.name, str(error).strip().splitlines()[0])
                    dead.append(actor)
                    continue
                if report["failure"]:
                    raise ClusterError(f"{actor.name}: pipeline failed: {report['failure']}")
                if "metrics" in report:
                    actor.metric_families = report["metrics"]
                self._update(actor.name, report["sources"])
            for actor in dead:
                self._fail_over(actor)
            self._changed.notify_all()

    def _update(self, actor_name: str, reports: Mapping[str, Mapping[str, Any]]) -> None:
        for outcome in self.sources.values():
            if not outcome.parts:
                continue
            part = outcome.current
            report = reports.get(part.part_id)
            if part.actor != actor_name or report is None:
                continue
            part.progress = SourceProgress(**report)
            if not part.progress.drained or outcome.state not in ("running", "removing"):
                continue
            ended = part.progress.ended or "finished"
            if outcome.state == "removing" or ended == "removed":
                outcome.state = "removed"
            elif ended.startswith("failed"):
                outcome.state, outcome.error = "failed", part.progress.error
            else:
                outcome.state = "finished" if ended == "finished" else "stopped"

    def _fail_over(self, actor: _Actor) -> None:
        detected = time.monotonic()
        self._mark_dead(actor)
        self._replace(actor)
        for source_id, outcome in self.sources.items():
            if outcome.state not in ("running", "removing") or outcome.current.actor != actor.name:
                continue
            if outcome.state == "removing":
                outcome.state = "removed"
                continue
            by_frame = _resumes_by_frame(outcome.spec)
            start_frame = outcome.next_frame() if by_frame else None
            part_id = f"{source_id}.part{len(outcome.parts)}"
            target = self._place(outcome, part_id, self._pick(), start_frame=start_frame)
            move = Move(source_id, actor.name, target, part_id, start_frame, detected, time.monotonic())
            self.moves.append(move)
            where = f"resuming at frame {start_frame}" if by_frame else "reconnecting"
            log.warning("source %s moved from %s to %s as %s, %s", source_id, actor.name, target, part_id, where)

    def _finish(self) -> ClusterResult:
        with self._lock:
            live = [actor for actor in self._actors.values() if actor.alive]
        refs = [actor.handle.finish.remote(self.cluster.start_timeout_s) for actor in live]
        figures: dict[str, dict[str, Any]] = {name: {**actor.info, "run": None} for name, actor in self._actors.items()}
        for actor, ref in zip(live, refs, strict=True):
            try:
                figures[actor.name]["run"] = self._ray.get(ref, timeout=self.cluster.start_timeout_s)
            except (self._ray.exceptions.RayActorError, self._ray.exceptions.GetTimeoutError) as error:
                log.error("%s did not finish cleanly: %s", actor.name, str(error).splitlines()[0])
        for outcome in self.sources.values():
            if outcome.state in ("running", "removing"):
                outcome.state = "stopped"
        return ClusterResult(dict(self.sources), list(self.moves), figures)

    def _release(self) -> None:
        self._released = True
        if self._ray is None:
            return
        for actor in self._actors.values():
            if actor.alive or actor.name in self._pending:
                actor.alive = False
                self._ray.kill(actor.handle, no_restart=True)
        self._pending.clear()
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False


def _check_per_source_paths(config: PipelineConfig) -> None:
    """Every file a sink writes must be per source: actors on other machines, and the parts of a moved
    source, would otherwise write one file from several places and truncate each other's results."""
    for spec in config.stages[1:]:
        path = spec.options.get("path")
        if isinstance(path, str) and not is_per_source(path):
            raise ConfigError(
                f"a cluster run writes one file per source: put {{source}} in the path ({path!r})",
                file=config.source_file,
                stage=spec.name,
                field="path",
            )


def _host_class() -> type:
    from streamflow.cluster.actor import PipelineHost

    return PipelineHost
