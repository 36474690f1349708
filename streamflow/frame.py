"""Typed items that travel on pipeline edges: frames, batches of frames and end of stream.

Every edge carries `Item`s. Data (`Frame`, `Batch`) and control (`EndOfStream`) share the same
queue so that end of stream always arrives *behind* the last frame of its source.

Example:
    >>> from fractions import Fraction
    >>> import torch
    >>> f = Frame(image=torch.zeros(3, 4, 4, dtype=torch.uint8), pts=3, time_base=Fraction(1, 30))
    >>> f.time
    0.1
    >>> [x.index for x in Batch([f, f]).frames]
    [0, 0]
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeAlias

import torch

__all__ = [
    "FRAMES_PER_ROW",
    "Batch",
    "EndOfStream",
    "Frame",
    "Item",
    "Layout",
    "PixelFormat",
    "StreamInfo",
    "iter_tensors",
    "row_frame_counts",
]

#: `Batch.results` key: how many frames each row of `Batch.data` serves (a list of ints, in order), set
#: when one model input serves several frames (a window stage for N-in/M-out models). Absent: one each.
FRAMES_PER_ROW = "frames_per_row"


class PixelFormat(enum.StrEnum):
    """Layout of `Frame.image`."""

    NV12 = "nv12"  # uint8 (H * 3 // 2, W): full-resolution Y plane then interleaved UV at half resolution
    RGB = "rgb"  # uint8 (3, H, W)
    TENSOR = "tensor"  # anything else (model input/output); stages document what they expect


class Layout(enum.StrEnum):
    """Axis order of a batched model tensor whose channels stack several RGB frames."""

    NCHW = "nchw"  # (B, C, H, W): channels first, as PyTorch exports
    NHWC = "nhwc"  # (B, H, W, C): channels last, as BMF's SR engine takes and gives them


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a source knows about one video stream; shared by all frames of that stream."""

    width: int
    height: int
    codec: str
    time_base: Fraction
    fps: Fraction | None = None
    frame_count: int | None = None
    color_space: str = "bt709"  # "bt601" | "bt709"
    color_range: str = "limited"  # "limited" | "full"
    uri: str = ""  # already redacted: never holds credentials


@dataclass(slots=True)
class Frame:
    """One video frame and everything stages learned about it.

    `image` is a torch tensor on the CPU or a CUDA device, laid out as `format` says. `results`
    holds what stages attach (boxes, scores, model outputs), keyed by name. `timestamps` maps a
    stage name to the `time.perf_counter()` at which the frame left it; the runner fills it so
    observers can compute latency. `ready` is the CUDA event recorded on the producing stage's
    stream after the frame's tensors were written; the runner sets and consumes it.
    """

    image: torch.Tensor
    pts: int | None
    time_base: Fraction
    source_id: str = "0"
    index: int = 0
    format: PixelFormat = PixelFormat.RGB
    info: StreamInfo | None = None
    results: dict[str, Any] = field(default_factory=dict)
    timestamps: dict[str, float] = field(default_factory=dict)
    arrival_time: float | None = None  # wall clock (time.time()) when a live source received it
    ready: torch.cuda.Event | None = None

    @property
    def time(self) -> float | None:
        """Presentation time in seconds, or None when the source gave no pts."""
        return None if self.pts is None else float(self.pts * self.time_base)

    @property
    def frames(self) -> list[Frame]:
        """`[self]`, so stages can treat a frame and a batch alike."""
        return [self]


@dataclass(slots=True)
class Batch:
    """Several frames that travel and are processed together.

    `data` is an optional stacked tensor for the whole batch (for example the NCHW model input
    built by `preprocess`); `results` holds batch-level outputs (raw model outputs, first axis =
    frame). Frames keep their own identity (source, index, pts) inside the batch.
    """

    frames: list[Frame]
    data: torch.Tensor | None = None
    results: dict[str, Any] = field(default_factory=dict)
    ready: torch.cuda.Event | None = None

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """In-band end of stream. `source_id=None` ends every source; a string ends just that one."""

    source_id: str | None = None
    reason: str = "finished"


Item: TypeAlias = Frame | Batch | EndOfStream


def row_frame_counts(item: Frame | Batch) -> list[int]:
    """Frames served by each row of the item's model input: `results[FRAMES_PER_ROW]`, else 1 per frame.

    Raises ValueError when the counts don't add up to the item's frames.

    Example:
        >>> from fractions import Fraction
        >>> f = Frame(image=torch.zeros(1), pts=0, time_base=Fraction(1, 30))
        >>> row_frame_counts(Batch([f, f, f], results={FRAMES_PER_ROW: [2, 1]}))
        [2, 1]
    """
    counts = item.results.get(FRAMES_PER_ROW)
    if counts is None:
        return [1] * len(item.frames)
    if sum(counts) != len(item.frames):
        raise ValueError(
            f"results[{FRAMES_PER_ROW!r}] = {counts} adds up to {sum(counts)}, not {len(item.frames)} frames"
        )
    return list(counts)


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor reachable from an item (images, batch data and nested results)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Frame):
        yield obj.image
        yield from iter_tensors(obj.results)
    elif isinstance(obj, Batch):
        if obj.data is not None:
            yield obj.data
        yield from iter_tensors(obj.results)
        for frame in obj.frames:
            yield from iter_tensors(frame)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from iter_tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from iter_tensors(value)
