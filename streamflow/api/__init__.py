"""Operate a running pipeline: an HTTP control API and Prometheus metrics on the pipeline's loop.

`ControlServer` serves `/sources`, `/healthz`, `/readyz` and `/metrics` (see `streamflow.api.server`);
`PipelineMetrics` is the Prometheus registry behind `/metrics`, usable without HTTP.

Example:
    >>> from streamflow import Pipeline
    >>> from streamflow.testing import ListSink, ListSource, make_frames
    >>> pipeline = Pipeline([ListSource(make_frames(2)), ListSink()], device="cpu")
    >>> server = ControlServer(pipeline, port=0)
    >>> stats = pipeline.run_sync(alongside=server.serving)
    >>> stats.sources[0].frames
    2
"""

from streamflow.api.metrics import PipelineCollector, PipelineMetrics
from streamflow.api.server import DEFAULT_HOST, ControlServer, parse_bind

__all__ = ["DEFAULT_HOST", "ControlServer", "PipelineCollector", "PipelineMetrics", "parse_bind"]
