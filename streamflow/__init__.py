"""streamflow: asyncio video pipelines that keep NVIDIA GPUs busy, and run on CPUs too.

The names below are imported on first use, not with the package: `streamflow --help` and other
commands that never touch a frame then start without importing torch.

Example:
    >>> from streamflow import Pipeline, Stage, StageConfig
    >>> Pipeline.__name__, Stage.__name__, StageConfig.__name__
    ('Pipeline', 'Stage', 'StageConfig')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "Edge": "streamflow.edge",
    **dict.fromkeys(("Batch", "EndOfStream", "Frame", "Item", "PixelFormat", "StreamInfo"), "streamflow.frame"),
    **dict.fromkeys(("Observer", "RunStats", "SourceStats", "StageStats"), "streamflow.observers"),
    **dict.fromkeys(("Pipeline", "PipelineError"), "streamflow.pipeline"),
    "SourceSpec": "streamflow.sources",
    **dict.fromkeys(("Overflow", "Source", "Stage", "StageConfig"), "streamflow.stage"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'streamflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
