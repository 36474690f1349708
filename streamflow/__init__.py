"""streamflow: asyncio video pipelines that keep NVIDIA GPUs busy, and run on CPUs too.

Example:
    >>> from streamflow import Pipeline, Stage, StageConfig
    >>> Pipeline.__name__, Stage.__name__, StageConfig.__name__
    ('Pipeline', 'Stage', 'StageConfig')
"""

from streamflow.edge import Edge
from streamflow.frame import Batch, EndOfStream, Frame, Item, PixelFormat, StreamInfo
from streamflow.observers import Observer, RunStats, SourceStats, StageStats
from streamflow.pipeline import Pipeline, PipelineError
from streamflow.sources import SourceSpec
from streamflow.stage import Overflow, Source, Stage, StageConfig

__all__ = [
    "Batch",
    "Edge",
    "EndOfStream",
    "Frame",
    "Item",
    "Observer",
    "Overflow",
    "Pipeline",
    "PipelineError",
    "PixelFormat",
    "RunStats",
    "Source",
    "SourceSpec",
    "SourceStats",
    "Stage",
    "StageConfig",
    "StageStats",
    "StreamInfo",
]

__version__ = "0.1.0"
