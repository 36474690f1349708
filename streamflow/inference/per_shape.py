"""One backend per input shape, for models whose dims are dynamic and whose shapes nobody configured.

A fully convolutional model (the super-resolution model: `frames` (N, 15, H, W)) runs at any
resolution, but the fast backends want fixed shapes: a TensorRT engine is built with an
optimization profile, the torch backend captures a CUDA graph, ONNX Runtime plans its memory. So
the shapes come from the stream: the first batch of a new size resolves the model's dynamic dims
(batch included) and a backend is built for exactly those shapes (an engine with a profile for
that shape, a CUDA graph, a session), then kept. A small LRU bound keeps a stream that keeps
changing size from holding an engine per size forever; the least recently used one is closed.

The batch of a resolved shape is the larger of the incoming batch and the stage's `batch_size`;
smaller (last) batches are padded by the backend as for any fixed-shape backend.

Example:
    >>> from streamflow.inference.base import InputSpec
    >>> resolve_specs({"x": ("N", 3, "H", "W")}, {"x": (2, 3, 90, 160)}, batch=4)["x"].shape
    (4, 3, 90, 160)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch

from streamflow.inference.base import InferenceBackend, InputSpec, ShapeError, format_shape
from streamflow.inference.onnx_tools import Dim

__all__ = ["PerShapeBackends", "is_dynamic", "resolve_specs"]

log = logging.getLogger(__name__)


def is_dynamic(dims: Sequence[Dim]) -> bool:
    """True when a declared input has a dimension without a fixed size (a name, or unknown)."""
    return not dims or not all(isinstance(d, int) and d > 0 for d in dims)


def resolve_specs(
    declared: Mapping[str, Sequence[Dim]], shapes: Mapping[str, Sequence[int]], *, batch: int
) -> dict[str, InputSpec]:
    """Static specs for `shapes`, checked against the model's declared dims.

    Fixed declared dims must match; dynamic ones take the incoming size, except a dynamic batch
    (first) dim, which takes `batch` so that later, smaller batches fit the same backend.
    """
    specs = {}
    for name, dims in declared.items():
        if name not in shapes:
            raise ShapeError(f"model input {name!r} is not fed")
        shape = tuple(int(d) for d in shapes[name])
        if dims and len(dims) != len(shape):
            raise ShapeError(f"input {name!r} got shape {format_shape(shape)}, the model declares {format_shape(dims)}")
        resolved = []
        for axis, size in enumerate(shape):
            fixed = dims[axis] if dims else None
            if isinstance(fixed, int) and fixed > 0:
                if fixed != size and axis > 0:
                    raise ShapeError(
                        f"input {name!r} got shape {format_shape(shape)}, the model declares "
                        f"{format_shape(dims)} (axis {axis} must be {fixed})"
                    )
                resolved.append(fixed)
            else:
                resolved.append(max(batch, size) if axis == 0 else size)
        specs[name] = InputSpec.static(name, resolved)
    return specs


class PerShapeBackends:
    """Backends keyed by the per-item input shapes, least recently used closed beyond `capacity`.

    `build` creates and loads a backend for static specs (the expensive part: engine build, graph
    capture); it runs on the caller's thread and, on a GPU, the caller's CUDA stream.
    """

    def __init__(
        self,
        declared: Mapping[str, Sequence[Dim]],
        build: Callable[[dict[str, InputSpec]], InferenceBackend],
        *,
        batch: int = 1,
        capacity: int = 4,
        logger: logging.Logger | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.declared = {name: tuple(dims) for name, dims in declared.items()}
        self.batch = batch
        self.capacity = capacity
        self._build = build
        self._log = logger or log
        self._backends: OrderedDict[tuple[tuple[str, tuple[int, ...]], ...], InferenceBackend] = OrderedDict()
        #: How many backends were built (more than `capacity` means sizes came back after eviction).
        self.built = 0

    def __len__(self) -> int:
        return len(self._backends)

    def backend_for(self, inputs: Mapping[str, torch.Tensor]) -> InferenceBackend:
        """The backend for these tensors' shapes, built on first sight of them."""
        key = tuple(sorted((name, tuple(t.shape[1:])) for name, t in inputs.items()))
        backend = self._backends.get(key)
        if backend is not None:
            self._backends.move_to_end(key)
            return backend
        count = next(iter(inputs.values())).shape[0]
        specs = resolve_specs(
            self.declared, {n: tuple(t.shape) for n, t in inputs.items()}, batch=max(self.batch, count)
        )
        shapes = ", ".join(f"{name} {format_shape(spec.shape)}" for name, spec in specs.items())
        self._log.info("input shapes %s: preparing the model for them", shapes)
        backend = self._build(specs)
        self.built += 1
        self._backends[key] = backend
        while len(self._backends) > self.capacity:
            _, oldest = self._backends.popitem(last=False)
            self._log.info("more than %d input shapes seen: releasing the least recently used", self.capacity)
            oldest.close()
        return backend

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.backend_for(inputs).run(inputs)

    def close(self) -> None:
        while self._backends:
            _, backend = self._backends.popitem()
            backend.close()
