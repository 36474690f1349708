"""One pipeline inside a Ray actor: the config's stages, its share of the sources, the same runner.

`PipelineHost` is plain Python; the driver wraps it with `ray.remote` (so nothing here imports
Ray at module level). The pipeline is built from the whole config exactly as `streamflow run`
builds it, stays open (`stay_open`) and runs in a thread of the actor, so the actor's own calls
(`add_source`, `remove_source`, `report`) are answered while frames flow. A source that fails is
reported and ends alone, as in one process; a stage that fails ends the pipeline, and `report()`
says so.

The sources an actor is created with wait for `start_sources()`: `ready()` answers once the
pipeline's stages are set up, and the driver starts every actor's sources only when all of them
are. Several workers share a GPU, and one that set up first would otherwise run its cameras while
the others load models and capture CUDA graphs beside it: its paced sources would compete with those
loads from their first frame.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from streamflow.api.metrics import PipelineMetrics
from streamflow.cluster.progress import ProgressObserver
from streamflow.config import PipelineConfig, build_pipeline
from streamflow.observers import Observer, ResultTimes, RunStats
from streamflow.pipeline import Pipeline
from streamflow.sources import SourceSpec

__all__ = ["PipelineHost"]

log = logging.getLogger("streamflow.cluster")
# build_pipeline needs a spec to build the source template from; this one only validates the
# template and is removed before the run (its uri is never opened).
_TEMPLATE_CHECK = SourceSpec(id="template-check", uri="template-check")


class PipelineHost:
    """The pipeline an actor runs; its methods are the actor's remote calls."""

    def __init__(
        self,
        config: PipelineConfig,
        sources: Sequence[SourceSpec],
        *,
        name: str,
        workdir: str | None = None,
        log_level: int = logging.WARNING,
        record_results: bool = False,
    ) -> None:
        logging.basicConfig(level=log_level, format=f"%(levelname)s {name}: %(message)s")
        # Relative paths in the config mean what they meant to the driver where its directory is
        # shared (one machine, or the same mount on every node).
        if workdir is not None and os.path.isdir(workdir):
            os.chdir(workdir)
        self.name = name
        self.progress = ProgressObserver()
        # For benchmarks: every result's time, handed over with the run's figures by `finish`.
        self.results = ResultTimes() if record_results else None
        observers: list[Observer] = [self.progress] if self.results is None else [self.progress, self.results]
        # The template is validated against the first real spec where there is one (its options
        # apply to every source); the sources themselves start on `start_sources()`.
        self._waiting = list(sources)
        check = [self._waiting[0]] if self._waiting else [_TEMPLATE_CHECK]
        self.pipeline: Pipeline = build_pipeline(config, observers=observers, sources=check)
        self.pipeline.remove_source(check[0].id)
        # Sources come and go as the driver places them; the run ends on `finish()`.
        self.pipeline.stay_open = True
        self.metrics = PipelineMetrics(self.pipeline)  # before the run: its histograms observe every frame
        self.stats: RunStats | None = None
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"streamflow-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.stats = self.pipeline.run_sync()
        except Exception as error:
            stats = getattr(error, "run_stats", None)
            if stats is not None:  # a source failed: reported per source, the run itself went on
                self.stats = stats
                return
            self.failure = f"{type(error).__name__}: {error}".splitlines()[0]
            log.error("pipeline failed: %s", self.failure)

    def ready(self, timeout_s: float = 600.0) -> dict[str, Any]:
        """Where this actor runs: pid, host and Ray node, answered once every stage is set up.

        Raises `RuntimeError` with the pipeline's failure when a stage could not be set up, and
        `TimeoutError` when the set-up takes longer than `timeout_s`.
        """
        while not self.pipeline.started.wait(0.05):
            if not self._thread.is_alive():
                raise RuntimeError(f"{self.name}: {self.failure or 'the pipeline ended before it started'}")
            timeout_s -= 0.05
            if timeout_s <= 0:
                raise TimeoutError(f"{self.name}: the pipeline's stages are not set up yet")
        host = socket.gethostname()
        ray = sys.modules.get("ray")  # imported by Ray's worker; absent in a worker process of our own
        node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else host
        return {"pid": os.getpid(), "host": host, "node": node}

    def start_sources(self) -> list[str]:
        """Start the sources this actor was created with (the driver calls it once every actor is ready)."""
        waiting, self._waiting = self._waiting, []
        return [self.pipeline.add_source(spec) for spec in waiting]

    def add_source(self, spec: Mapping[str, Any]) -> str:
        return self.pipeline.add_source(SourceSpec(**spec))

    def remove_source(self, source_id: str) -> None:
        self.pipeline.remove_source(source_id)

    def report(self, with_metrics: bool = False) -> dict[str, Any]:
        """Per-source progress, whether the pipeline itself failed, and (when asked) its
        Prometheus families, read now."""
        report: dict[str, Any] = {
            "sources": {source_id: asdict(p) for source_id, p in self.progress.report().items()},
            "failure": self.failure,
            "running": self._thread.is_alive(),
        }
        if with_metrics:
            report["metrics"] = self.metric_families()
        return report

    def metric_families(self) -> list[Any]:
        """This pipeline's Prometheus families, read now (the driver labels and merges them)."""
        return list(self.metrics.registry.collect())

    def finish(self, timeout_s: float) -> dict[str, Any] | None:
        """End the run (sources left are stopped, outputs finalized); the run's figures."""
        self.pipeline.stop("finished")
        self._thread.join(timeout_s)
        if self.stats is None:
            return None
        figures = self.stats.to_dict()
        if self.results is not None:
            figures["bench"] = self._bench_figures(self.stats)
        return figures

    def _bench_figures(self, stats: RunStats) -> dict[str, Any]:
        """What a benchmark merges over workers: the whole stats (latency samples included), every
        result's time, and this process's peak memory."""
        assert self.results is not None
        torch = sys.modules.get("torch")
        peak_gpu = None
        if torch is not None and torch.cuda.is_initialized():
            peak_gpu = torch.cuda.max_memory_allocated() / 2**20
        return {
            "stats": stats,
            "result_times": list(self.results.times),
            "result_capture_latency_ms": list(self.results.capture_latency_ms),
            "drops": list(self.results.drops),
            "peak_gpu_mib": peak_gpu,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
