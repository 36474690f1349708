"""`/metrics`' text against `prometheus_client`'s own rendering of the same collector."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamflow import Pipeline
from streamflow.api import PipelineMetrics
from streamflow.testing import ListSink, ListSource, make_frames

# Label values that the text format must escape (quote, backslash, newline) and a `%`, which the
# histogram lines' format string must keep as it is.
ODD = 'cam "1"\\50%\nx'


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the process collector's (its CPU seconds move between two readings)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.startswith("process_")
    }


def test_the_served_text_holds_the_same_samples_as_generate_latest_of_the_collector() -> None:
    sources = [
        ListSource(make_frames(5, source_id=ODD), name=ODD),
        ListSource(make_frames(3, source_id="b"), name="b"),
    ]
    pipeline = Pipeline([ListSource(name="source"), ListSink(name=f"sink {ODD}")], sources=sources, device="cpu")
    metrics = PipelineMetrics(pipeline)
    pipeline.run_sync()

    # `streamflow_threads` is the live thread count: the run's worker threads can still be ending
    # while the two texts are rendered (seen under load), so render both while it stays the same.
    for _ in range(100):
        threads = threading.active_count()
        served = metrics.render().decode()
        reference = generate_latest(metrics.registry).decode()
        if threading.active_count() == threads:
            break
        time.sleep(0.05)
    assert samples(served) == samples(reference)
    families = {family.name: family for family in text_string_to_metric_families(served)}
    assert {family.type for family in families.values()} == {"counter", "gauge", "histogram"}
    done = {s.labels["source"]: s.value for s in families["streamflow_source_frames_done"].samples}
    assert done == {ODD: 5, "b": 3}
    latency = {
        (s.labels["source"], s.labels["le"]): s.value
        for s in families["streamflow_source_latency_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert latency[(ODD, "+Inf")] == 5 and latency[("b", "+Inf")] == 3
    calls = [s for s in families["streamflow_stage_call_seconds"].samples if s.labels["stage"] == f"sink {ODD}"]
    assert any(s.name.endswith("_count") and s.value >= 2 for s in calls)  # a call per source, then the flush
    assert families["process_open_fds"].samples[0].value > 0


def test_a_scrape_before_the_run_shows_the_sources_waiting_to_start() -> None:
    sources = [ListSource(make_frames(2, source_id="a"), name="a")]
    pipeline = Pipeline([ListSource(name="source"), ListSink(name="sink")], sources=sources, device="cpu")
    metrics = PipelineMetrics(pipeline)
    before = samples(metrics.render().decode())
    assert before[("streamflow_sources", (("state", "starting"),))] == 1
    assert not any(name == "streamflow_source_frames_total" for name, _ in before)
    pipeline.run_sync()
    after = samples(metrics.render().decode())
    assert after[("streamflow_sources", (("state", "ended"),))] == 1
    assert after[("streamflow_source_frames_total", (("source", "a"),))] == 2


@pytest.mark.gpu
def test_gpu_memory_appears_once_the_pipeline_uses_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    sources = [ListSource(make_frames(3, source_id="a"), name="a")]
    pipeline = Pipeline([ListSource(name="source"), ListSink(name="sink")], sources=sources, device="cuda")
    metrics = PipelineMetrics(pipeline)
    pipeline.run_sync()
    held = torch.ones(1 << 20, device="cuda")  # 4 MiB that the next scrape must see
    first = samples(metrics.render().decode())
    allocated = first[("streamflow_gpu_memory_allocated_bytes", (("device", "cuda:0"),))]
    assert allocated >= held.numel() * 4
    del held
    torch.cuda.empty_cache()
    again = samples(metrics.render().decode())  # the device list is kept; the figures are read anew
    assert again[("streamflow_gpu_memory_allocated_bytes", (("device", "cuda:0"),))] < allocated


def test_no_gpu_figures_while_the_process_has_not_touched_cuda() -> None:
    pipeline = Pipeline([ListSource(make_frames(2), name="source"), ListSink(name="sink")], device="cpu")
    metrics = PipelineMetrics(pipeline)
    pipeline.run_sync()
    if torch.cuda.is_initialized():
        pytest.skip("an earlier test in this process used CUDA")
    assert not any(name.startswith("streamflow_gpu_") for name, _ in samples(metrics.render().decode()))
