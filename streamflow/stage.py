"""The stage contract.

A stage implements only what it needs of four hooks; the runner owns everything else (queues,
threads, CUDA streams, end of stream, metrics):

- `setup()`: once, before the first item (open files, load models, allocate GPU memory).
- `process(item)`: per `Frame` or `Batch`; return nothing, one item, or an iterable of items.
- `flush()`: once, when end of stream arrives; may return final items.
  (`end_source(source_id)` is the per-source form, for stages that buffer per source.)
- `teardown()`: always, also after an error or cancellation (close files, free resources).

A source stage subclasses `Source` and implements `generate()` instead of `process()`.

All four hooks are plain (blocking) methods: the runner calls them in the stage's own worker
thread, with the stage's CUDA stream current when the stage runs on a GPU, so a hook may block
on I/O or the GPU without stalling the event loop or other stages.

Example, a complete custom stage:

    >>> from streamflow import Stage, StageConfig
    >>> class Brighten(Stage):
    ...     class Config(StageConfig):
    ...         amount: int = 10
    ...     def process(self, item):
    ...         for frame in item.frames:
    ...             frame.image = (frame.image.int() + self.config.amount).clamp(0, 255).byte()
    ...         return item
    >>> Brighten(amount=5).config.amount
    5
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from streamflow.frame import Batch, Frame, Item

__all__ = [
    "DeviceSpec",
    "Overflow",
    "Source",
    "Stage",
    "StageConfig",
    "StageOutput",
    "resolve_device",
]

StageOutput = Item | Iterable[Item] | None


class Overflow(enum.StrEnum):
    """What a full input queue does with a new item."""

    BLOCK = "block"  # the producer waits: nothing is lost (files)
    DROP_OLDEST = "drop_oldest"  # the oldest queued frame is discarded and counted (live sources)


class StageConfig(BaseModel):
    """Base of every stage's options model. Unknown options are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


DeviceSpec = str  # "auto" | "cpu" | "cuda" | "cuda:N"


def resolve_device(spec: DeviceSpec | torch.device | None) -> torch.device:
    """Turn a device spec into a concrete device; "auto" picks CUDA when it is usable."""
    if isinstance(spec, torch.device):
        return spec
    if spec is None or spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:  # torch's message lists every device type it knows, most of them not ours
        raise ValueError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:N")
    return device


class Stage:
    """Base class of all stages. See the module docstring for the contract.

    Runner-level settings are keyword arguments shared by every stage: `name`, `queue_size` (bound
    of this stage's input edge), `overflow` (policy of that edge), `batch_size` (how many frames the
    runner gathers into one `Batch` before calling `process`; 1 = items are passed as they come),
    `batch_timeout_ms` (the stage right after the sources only: how long a batch that is not full
    may wait for more frames after its first; None = take what is queued and go), `device` and
    `watchdog_s` (one warning line when a single hook call runs longer than that).
    Every other keyword is an option validated by the stage's `Config` model.

    `process()` returning None passes nothing on, like `[]`. A stage that isn't a sink (`is_sink`)
    and returns None for every item it got while stages follow it fails at end of stream, naming
    itself: it almost surely forgot `return item` (return `[]` to drop on purpose).
    """

    Config: ClassVar[type[StageConfig]] = StageConfig
    #: True if the stage may run work on a GPU; it then gets its own CUDA stream when on cuda.
    uses_gpu: ClassVar[bool] = False
    #: Default overflow of this stage's input edge when neither the stage nor the config sets one.
    default_overflow: ClassVar[Overflow] = Overflow.BLOCK
    #: Config fields that name local files the stage reads / writes. The runner resolves them before
    #: anything starts, so an output can never overwrite an input (or another output) and output
    #: folders are created (or refused with one line) before any model loads.
    #: A sink consumes frames and passes none on by design; any other stage that returns None for
    #: every item it gets (while stages follow it) fails at end of stream: it forgot `return item`.
    is_sink: ClassVar[bool] = False
    input_path_fields: ClassVar[tuple[str, ...]] = ()
    output_path_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        config: StageConfig | None = None,
        /,
        *,
        name: str | None = None,
        queue_size: int | None = None,
        overflow: Overflow | str | None = None,
        batch_size: int = 1,
        batch_timeout_ms: float | None = None,
        device: DeviceSpec | None = None,
        watchdog_s: float | None = None,
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise TypeError(f"{type(self).__name__}: pass either a Config instance or keyword options, not both")
        if config is None:
            config = self.Config(**options)
        elif not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__}: config must be {self.Config.__name__}, got {type(config).__name__}"
            )
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        if batch_timeout_ms is not None and batch_timeout_ms < 0:
            raise ValueError(f"{type(self).__name__}: batch_timeout_ms must be >= 0, got {batch_timeout_ms}")
        if queue_size is not None and queue_size < 1:
            raise ValueError(f"{type(self).__name__}: queue_size must be >= 1, got {queue_size}")
        self.config: Any = config
        self.name: str = name or type(self).__name__.lower()
        self.queue_size = queue_size
        self.overflow = Overflow(overflow) if overflow is not None else None
        self.batch_size = batch_size
        self.batch_timeout_ms = batch_timeout_ms
        self.device_spec = device
        if watchdog_s is not None and watchdog_s <= 0:
            raise ValueError(f"{type(self).__name__}: watchdog_s must be > 0, got {watchdog_s}")
        #: Warn (one line) when one call of a hook runs longer than this; None: the pipeline's default.
        self.watchdog_s = watchdog_s
        #: The resolved device, set by the runner before `setup()`.
        self.device: torch.device = torch.device("cpu")
        #: The stage's own CUDA stream when it runs on a GPU (current while its hooks run).
        self.stream: torch.cuda.Stream | None = None
        #: Set by the runner when the pipeline should stop taking input (SIGINT, an error elsewhere).
        self.stopping = threading.Event()
        #: Stage-specific counters (bad packets, reconnects...) that observers read and report.
        self.counters: dict[str, float] = {}
        self.log = logging.getLogger(f"streamflow.stage.{self.name}")

    # -- the four hooks ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Acquire resources. Runs in the stage's thread, with its CUDA stream current."""

    def process(self, item: Frame | Batch) -> StageOutput:
        """Handle one frame or batch; return what goes downstream. Default: pass through."""
        return item

    def flush(self) -> StageOutput:
        """End of stream arrived: return what is still buffered. Default: nothing."""
        return None

    def end_source(self, source_id: str) -> StageOutput:
        """One source ended (others go on): return what is buffered for it. Default: nothing."""
        return None

    def teardown(self) -> None:
        """Release resources. Always called, also after errors."""

    def input_paths(self) -> list[str]:
        """Local files this stage reads (network uris left out). Default: `input_path_fields`."""
        return self._paths_of(self.input_path_fields)

    def output_paths(self) -> list[str]:
        """Local files this stage writes. Default: `output_path_fields`."""
        return self._paths_of(self.output_path_fields)

    def _paths_of(self, fields: tuple[str, ...]) -> list[str]:
        values = (getattr(self.config, field, None) for field in fields)
        return [str(value) for value in values if value is not None and "://" not in str(value)]

    # -- helpers for stage authors ---------------------------------------------------------------
    def count(self, counter: str, amount: float = 1) -> None:
        """Add to a stage counter (reported by observers and in the summary)."""
        self.counters[counter] = self.counters.get(counter, 0) + amount

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, {self.config!r})"


class Source(Stage):
    """A stage without input. Implement `generate()`; check `self.stopping` between items."""

    #: A live source (camera, network stream) produces at its own pace: the edge after it defaults to
    #: `drop_oldest`, so a slow consumer loses old frames instead of building up latency.
    live: bool = False

    def generate(self) -> Iterator[Item]:
        """Yield frames or batches. Runs in the stage's thread; stop early when `self.stopping` is set."""
        raise NotImplementedError(f"{type(self).__name__} must implement generate()")

    def frame_shortfall(self, delivered: int) -> str | None:
        """After `generate()` ran to its end having yielded `delivered` frames: one line saying how
        many frames the input states it has and why fewer came out, or None when nothing is missing
        (or nothing is known). The runner warns with it, or fails under strict frame accounting."""
        return None

    def process(self, item: Frame | Batch) -> StageOutput:
        raise TypeError(f"source stage {self.name!r} has no input")
