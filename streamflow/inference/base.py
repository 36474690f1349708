"""What every inference backend offers, and the input shape specification they share.

A backend is created with the model path, one `InputSpec` per model input, the precision and the
device; `load()` does the expensive work (conversion, engine build, CUDA-graph capture), `infer()`
runs one batch on the *current* torch CUDA stream and `close()` frees what `load()` took.

Tensors returned by `infer()` belong to the caller: a later call never overwrites them (backends
that write into buffers they own copy out on the stream), because downstream stages may still be
reading them on their own streams.

Example:
    >>> spec = InputSpec.parse("input.1", {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]})
    >>> spec.dynamic, spec.min_batch, spec.opt_batch, spec.max_batch
    (True, 1, 8, 32)
    >>> InputSpec.parse("x", [4, 3, 8, 8]).shape_for(2)
    (2, 3, 8, 8)
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import torch

from streamflow.inference.onnx_tools import ModelError

__all__ = [
    "ENGINE_SUFFIXES",
    "BackendKind",
    "BackendUnavailableError",
    "CudaGraphMode",
    "InferenceBackend",
    "InputSpec",
    "ModelError",
    "Precision",
    "ShapeError",
    "check_graph_batches",
    "format_shape",
    "parse_input_shapes",
]


#: Serialized TensorRT engines (any other model file is read as ONNX).
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class Precision(enum.StrEnum):
    """Arithmetic precision of the model's weights and activations."""

    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self is Precision.FP16 else torch.float32

    def check_device(self, device: torch.device, runner: str = "this") -> None:
        """The one place the fp16-needs-CUDA rule lives (fp16 kernels on the CPU are missing or slow).

        `runner` names what runs, for the error: "this" or "stage 'detect'".

        Example:
            >>> Precision.FP16.check_device(torch.device("cpu"))
            Traceback (most recent call last):
            ...
            ValueError: precision fp16 needs a CUDA device, but this runs on cpu: use precision fp32
        """
        if self is Precision.FP16 and device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device, but {runner} runs on {device}: use precision fp32")


class BackendKind(enum.StrEnum):
    """Which runtime executes the model; `auto` picks the fastest one this machine can run."""

    AUTO = "auto"
    TENSORRT = "tensorrt"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


class TorchConverter(enum.StrEnum):
    """How the torch backend turns ONNX into a module: `native` (streamflow.inference.onnx_graph, the
    operators of CNNs, quick to import), `onnx2torch` (more operators, a slow import), `auto`: native when
    it implements every operator of the graph, else onnx2torch."""

    AUTO = "auto"
    NATIVE = "native"
    ONNX2TORCH = "onnx2torch"


class CudaGraphMode(enum.StrEnum):
    """`auto`: capture when the shapes are fixed and the device is a GPU; `on`: require it; `off`: never."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class ShapeError(ValueError):
    """An input shape does not match the configured shapes or the engine's profile."""


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (module not installed, GPU not supported)."""


def format_shape(shape: Sequence[Any]) -> str:
    """`(1, 3, 480, 640)` -> `"1x3x480x640"` (dynamic dims print as they are)."""
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input: its name and shape, with a batch range (`min_batch`..`max_batch`).

    `shape` is the optimal shape, batch included; only the first axis may vary. A static input has
    `min_batch == opt_batch == max_batch`.
    """

    name: str
    shape: tuple[int, ...]
    min_batch: int
    opt_batch: int
    max_batch: int

    def __post_init__(self) -> None:
        if not self.shape or any(d < 1 for d in self.shape):
            raise ShapeError(f"input {self.name!r}: every dimension must be >= 1, got {list(self.shape)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ShapeError(
                f"input {self.name!r}: need 1 <= min <= opt <= max batch, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if self.shape[0] != self.opt_batch:
            raise ShapeError(
                f"input {self.name!r}: shape {list(self.shape)} must start with opt batch {self.opt_batch}"
            )

    @classmethod
    def static(cls, name: str, shape: Sequence[int]) -> InputSpec:
        shape = tuple(int(d) for d in shape)
        if not shape:
            raise ShapeError(f"input {name!r}: empty shape")
        return cls(name, shape, shape[0], shape[0], shape[0])

    @classmethod
    def parse(cls, name: str, value: Sequence[int] | Mapping[str, Sequence[int]]) -> InputSpec:
        """From config: a shape list (static), or `{"min": [...], "opt": [...], "max": [...]}` (dynamic batch)."""
        if isinstance(value, Mapping):
            missing = sorted({"min", "opt", "max"} - set(value))
            extra = sorted(set(value) - {"min", "opt", "max"})
            if missing or extra:
                raise ShapeError(f"input {name!r}: a shape range needs exactly min, opt and max (got {sorted(value)})")
            lo, opt, hi = (tuple(int(d) for d in value[k]) for k in ("min", "opt", "max"))
            if not (len(lo) == len(opt) == len(hi)) or lo[1:] != opt[1:] or hi[1:] != opt[1:]:
                raise ShapeError(
                    f"input {name!r}: min/opt/max may differ only in the batch (first) dimension, got "
                    f"{format_shape(lo)} / {format_shape(opt)} / {format_shape(hi)}"
                )
            return cls(name, opt, lo[0], opt[0], hi[0])
        return cls.static(name, value)

    @property
    def dynamic(self) -> bool:
        return self.min_batch != self.max_batch

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """The shape of one item of the batch."""
        return self.shape[1:]

    def shape_for(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.frame_shape)

    @property
    def min_shape(self) -> tuple[int, ...]:
        return self.shape_for(self.min_batch)

    @property
    def max_shape(self) -> tuple[int, ...]:
        return self.shape_for(self.max_batch)

    def check(self, shape: Sequence[int]) -> None:
        """Raise `ShapeError` unless `shape` is inside this spec's range."""
        shape = tuple(shape)
        if shape[1:] != self.frame_shape or not self.min_batch <= shape[0] <= self.max_batch:
            raise ShapeError(f"input {self.name!r} got shape {format_shape(shape)}, outside {self.describe()}")

    def describe(self) -> str:
        if not self.dynamic:
            return format_shape(self.shape)
        rest = format_shape(self.frame_shape)
        return f"{self.min_batch}..{self.max_batch} (opt {self.opt_batch}) x {rest}"

    def as_key(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min_shape), "opt": list(self.shape), "max": list(self.max_shape)}


def check_graph_batches(batches: Sequence[int], largest: int) -> None:
    """`graph_batches` must lie below the largest batch, which has its CUDA graph anyway (ValueError)."""
    wrong = sorted(b for b in batches if not 1 <= b < largest)
    if wrong:
        raise ValueError(
            f"graph_batches {wrong}: each must be from 1 to below the largest batch ({largest}), "
            "which has its graph anyway"
        )


def parse_input_shapes(config: Mapping[str, Sequence[int] | Mapping[str, Sequence[int]]]) -> dict[str, InputSpec]:
    """Turn the stage's `input_shapes` option into specs, in the given order."""
    return {name: InputSpec.parse(name, value) for name, value in config.items()}


class InferenceBackend(ABC):
    """A loaded model that runs batches of named tensors. See the module docstring.

    Subclasses set `kind`, fill `self.outputs` (output names, in model order) in `load()` and
    implement `infer`. `fixed_batch` is the one batch size `infer` accepts when the backend cannot
    take a smaller one (static shapes, CUDA graphs); callers pad partial batches to it.
    """

    kind: ClassVar[BackendKind]

    def __init__(
        self,
        model: str | Path,
        inputs: Mapping[str, InputSpec],
        *,
        precision: Precision = Precision.FP32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model_path = Path(model)
        self.inputs: dict[str, InputSpec] = dict(inputs)
        self.precision = Precision(precision)
        self.device = torch.device(device)
        self.outputs: list[str] = []
        #: One line saying how the backend runs (engine file, providers, CUDA graph), set by `load()`.
        self.description = ""
        self.precision.check_device(self.device)

    @property
    def fixed_batch(self) -> int | None:
        """The only batch size `infer` accepts, or None when any batch in the spec range works."""
        specs = list(self.inputs.values())
        return specs[0].opt_batch if specs and not any(s.dynamic for s in specs) else None

    @property
    def max_batch(self) -> int:
        return min(s.max_batch for s in self.inputs.values())

    @abstractmethod
    def load(self) -> None:
        """Prepare the model (may take seconds: conversion, engine build, graph capture)."""

    @abstractmethod
    def infer(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one batch on the current stream; returns output name -> tensor (first axis = batch)."""

    def close(self) -> None:  # noqa: B027  (optional: backends holding nothing special need nothing)
        """Release what `load()` acquired."""

    def check_inputs(self, inputs: Mapping[str, torch.Tensor], *, partial: bool = False) -> None:
        """Names and shapes of `inputs` must match the specs; one clear line otherwise.

        `partial` allows any batch from 1 to the maximum (for `infer_partial`)."""
        if set(inputs) != set(self.inputs):
            raise ShapeError(f"model inputs are {sorted(self.inputs)}, got tensors for {sorted(inputs)}")
        batches = {t.shape[0] if t.dim() else 0 for t in inputs.values()}
        if len(batches) != 1:
            raise ShapeError(f"all inputs must have the same batch size, got {sorted(batches)}")
        count = next(iter(batches))
        for name, tensor in inputs.items():
            spec = self.inputs[name]
            if partial:
                if tuple(tensor.shape[1:]) != spec.frame_shape or not 1 <= count <= spec.max_batch:
                    raise ShapeError(
                        f"input {name!r} got shape {format_shape(tensor.shape)}, outside {spec.describe()}"
                    )
            else:
                spec.check(tensor.shape)
        fixed = self.fixed_batch
        if not partial and fixed is not None and count != fixed:
            raise ShapeError(f"this backend runs batches of exactly {fixed}; got {count} (use infer_partial)")

    def infer_partial(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run 1..`max_batch` items: pads to the batch `infer` needs, slices the outputs back."""
        self.check_inputs(inputs, partial=True)
        count = next(iter(inputs.values())).shape[0]
        target = self.fixed_batch or max(count, min(s.min_batch for s in self.inputs.values()))
        if count == target:
            return self.infer(inputs)
        padded = {n: torch.cat([t, t.new_zeros((target - count, *t.shape[1:]))]) for n, t in inputs.items()}
        return {name: out[:count] for name, out in self.infer(padded).items()}

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run any number of items: chunks of at most `max_batch`, the last one padded as needed.

        Example:
            >>> # backend.run({"input.1": torch.rand(70, 3, 32, 32)})  ->  chunks of 32, 32 and 6 (padded)
        """
        count = next(iter(inputs.values())).shape[0]
        limit = self.fixed_batch or self.max_batch
        if count <= limit:
            return self.infer_partial(inputs)
        parts = [self.infer_partial({n: t[i : i + limit] for n, t in inputs.items()}) for i in range(0, count, limit)]
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    def __enter__(self) -> Self:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
