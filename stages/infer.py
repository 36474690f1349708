"""`infer`: runs an ONNX model (or a TensorRT engine) on each batch and attaches its named outputs.

Input: a `Batch` whose `data` is the stacked model input (NCHW, as `preprocess` makes it), or a
single `Frame` carrying its input in `frame.results["input"]` (else its `image`). The tensor goes to
the model input named by `input` (default: the model's only input); other model inputs, if any, are
read from `item.results` by name. Output: every model output as a torch tensor in `item.results`
under its ONNX name, first axis = frame (for a single `Frame` too: a batch of one).

Backends (`backend`): `tensorrt` (engine built from ONNX once, then cached in `engine_cache`),
`torch` (onnx2torch; CUDA graph replay for fixed shapes), `onnxruntime` (CPU, or CUDA with
onnxruntime-gpu), or `auto` (TensorRT if it runs on this GPU, else torch on CUDA, else ONNX Runtime
on the CPU; the choice is logged). Batches smaller than the captured or static batch are padded and
the outputs sliced back; larger ones run in chunks. A CUDA graph does its whole batch's work however
little of it is filled, so where batches often go out partial (live sources with `batch_timeout_ms`)
`graph_batches` captures more graphs at smaller batch sizes, and each batch replays the smallest graph
that holds it (torch backend).

`input_shapes` gives each input's shape, batch included: `{"input.1": [8, 3, 480, 640]}`, or a
batch range for dynamic batch, `{"input.1": {"min": [1, 3, 480, 640], "opt": [8, 3, 480, 640],
"max": [32, 3, 480, 640]}}`. Omitted, the model's own shapes are used when they are all fixed; when
some are dynamic (a fully convolutional model takes any height and width), the shapes come from the
stream: each new input size gets its own backend (a TensorRT engine with a profile for that shape,
a CUDA graph, an ONNX Runtime session), built when the first batch of that size arrives and kept,
at most `shape_cache` of them (`streamflow.inference.per_shape`). Fixed `input_shapes` are for those
who want the engine built before the first frame; a batch that does not fit them is an error that
says what to set.

Example (YAML):
    - name: detect
      type: infer
      model: models/centerface.onnx
      input_shapes: {input.1: [8, 3, 480, 640]}
      precision: fp16
      batch_size: 8
      graph_batches: [2, 4]     # partial batches of up to 2 or 4 frames replay smaller graphs

Example (Python):
    >>> import tempfile, pathlib, torch
    >>> from fractions import Fraction
    >>> from streamflow.frame import Batch, Frame, PixelFormat
    >>> from streamflow.testing import run_stage
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.onnx"
    >>> torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.rand(1, 3, 8, 8),), str(path),
    ...                   input_names=["x"], output_names=["y"], dynamo=False)
    >>> frames = [Frame(torch.zeros(3, 8, 8), i, Fraction(1, 30), format=PixelFormat.TENSOR) for i in range(3)]
    >>> stage = Infer(model=path, input_shapes={"x": [4, 3, 8, 8]})
    >>> out = run_stage(stage, [Batch(frames, data=torch.rand(3, 3, 8, 8))])
    >>> out[0].results["y"].shape
    torch.Size([3, 2, 8, 8])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from streamflow.frame import Batch, Frame, row_frame_counts
from streamflow.inference.base import (
    ENGINE_SUFFIXES,
    BackendKind,
    CudaGraphMode,
    InferenceBackend,
    InputSpec,
    Precision,
    ShapeError,
    TorchConverter,
    check_graph_batches,
)
from streamflow.inference.onnx_tools import Dim, graph_inputs, load_onnx
from streamflow.inference.per_shape import PerShapeBackends, is_dynamic
from streamflow.inference.select import create_backend
from streamflow.inference.tensorrt_backend import default_engine_cache
from streamflow.stage import Stage, StageConfig

__all__ = ["Infer", "ShapeRange"]

MODEL_SUFFIXES = (".onnx", *ENGINE_SUFFIXES)


class ShapeRange(BaseModel):
    """A batch range for one input: shapes that differ only in the first (batch) dimension."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: list[int]
    opt: list[int]
    max: list[int]


class Infer(Stage):
    """Runs a model on each batch. See the module docstring."""

    class Config(StageConfig):
        model: Path = Field(description="an .onnx model, or a serialized TensorRT .engine/.plan")
        input_shapes: dict[str, list[int] | ShapeRange] | None = Field(
            None, description="per input name: a shape, or {min, opt, max} for a dynamic batch"
        )
        precision: Precision = Precision.FP32
        backend: BackendKind = BackendKind.AUTO
        engine_cache: Path | None = Field(
            None, description="TensorRT engine cache (default ~/.cache/streamflow/engines)"
        )
        cuda_graph: CudaGraphMode = CudaGraphMode.AUTO
        channels_last: bool = Field(
            False, description="torch backend: NHWC weights and inputs (faster fp16 convolutions with cuDNN)"
        )
        cudnn_benchmark: bool = Field(
            False, description="torch backend on CUDA: let cuDNN time its algorithms per shape (process-wide)"
        )
        converter: TorchConverter = Field(
            TorchConverter.AUTO,
            description="torch backend: native (CNN operators, quick start-up), onnx2torch, or auto "
            "(native when it implements every operator of the model)",
        )
        input: str | None = Field(
            None, description="the model input that gets the batch's data (default: the only one)"
        )
        shape_cache: int = Field(
            4, ge=1, description="without input_shapes: how many input sizes keep a prepared model (LRU)"
        )
        graph_batches: list[int] = Field(
            default_factory=list,
            description="torch backend with CUDA graphs: smaller batch sizes that get a graph of their own beside "
            "the input_shapes batch; a partial batch replays the smallest graph that holds it",
        )

        @field_validator("model")
        @classmethod
        def _model_exists(cls, value: Path) -> Path:
            if value.suffix.lower() not in MODEL_SUFFIXES:
                raise ValueError(f"model must be one of {', '.join(MODEL_SUFFIXES)} files, got {value}")
            if not value.expanduser().is_file():
                raise ValueError(f"model file not found: {value}")
            return value.expanduser()

        @model_validator(mode="after")
        def _shapes_valid(self) -> Infer.Config:
            specs = self.specs()  # bad shapes fail when the pipeline is built, not when it starts
            if self.graph_batches:
                if specs is None:
                    raise ValueError("graph_batches needs input_shapes: the largest batch is the one they give")
                check_graph_batches(self.graph_batches, min(spec.max_batch for spec in specs.values()))
            return self

        def specs(self) -> dict[str, InputSpec] | None:
            if self.input_shapes is None:
                return None
            return {
                name: InputSpec.parse(name, value.model_dump() if isinstance(value, ShapeRange) else value)
                for name, value in self.input_shapes.items()
            }

    uses_gpu: ClassVar[bool] = True
    input_path_fields: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, config: StageConfig | None = None, /, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.backend: InferenceBackend | None = None
        #: Without input_shapes and with dynamic model dims: one backend per input size.
        self.per_shape: PerShapeBackends | None = None
        self.data_input = ""
        self._rank = 0

    def setup(self) -> None:
        cfg = self.config
        cfg.precision.check_device(self.device, runner=f"stage {self.name!r}")
        specs = cfg.specs()
        declared = None if specs is not None else self._declared_inputs(cfg.model)
        if declared is not None and not any(is_dynamic(dims) for dims in declared.values()):
            specs = {name: InputSpec.static(name, dims) for name, dims in declared.items()}  # type: ignore[arg-type]
        names = list(specs or declared or {})
        if cfg.input is not None and cfg.input not in names:
            raise ShapeError(f"input {cfg.input!r} is not a model input; the inputs are {sorted(names)}")
        if cfg.input is None and len(names) != 1:
            raise ShapeError(f"the model has inputs {sorted(names)}: set `input` to the one that gets the batch data")
        self.data_input = cfg.input or names[0]
        if specs is None:
            assert declared is not None  # no input_shapes: the model's declared dims were read above
            self._rank = len(declared[self.data_input])
            self.per_shape = PerShapeBackends(
                declared, self._load_backend, batch=self.batch_size, capacity=cfg.shape_cache, logger=self.log
            )
            self.log.info("model input shapes are taken from the stream (dynamic dims, no input_shapes)")
            return
        self._rank = len(specs[self.data_input].shape)
        self.backend = self._load_backend(specs)

    def _load_backend(self, specs: dict[str, InputSpec]) -> InferenceBackend:
        cfg = self.config
        backend = create_backend(
            cfg.model,
            specs,
            kind=cfg.backend,
            precision=cfg.precision,
            device=self.device,
            engine_cache=cfg.engine_cache if cfg.engine_cache is not None else default_engine_cache(),
            cuda_graph=cfg.cuda_graph,
            channels_last=cfg.channels_last,
            cudnn_benchmark=cfg.cudnn_benchmark,
            converter=cfg.converter,
            graph_batches=cfg.graph_batches,
            logger=self.log,
        )
        backend.load()
        self.log.info("%s", backend.description)
        return backend

    @staticmethod
    def _declared_inputs(model: Path) -> dict[str, tuple[Dim, ...]]:
        if model.suffix.lower() != ".onnx":
            raise ShapeError(f"input_shapes is required with a TensorRT engine ({model.name})")
        return graph_inputs(load_onnx(model))

    def _data(self, item: Frame | Batch) -> torch.Tensor:
        if isinstance(item, Batch):
            if item.data is not None:
                return item.data
            tensors = [self._frame_tensor(frame, self._rank) for frame in item.frames]
            return torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        return self._frame_tensor(item, self._rank)

    @staticmethod
    def _frame_tensor(frame: Frame, rank: int) -> torch.Tensor:
        tensor = frame.results.get("input", frame.image)
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"frame {frame.index}: results['input'] is {type(tensor).__name__}, not a tensor")
        return tensor.unsqueeze(0) if tensor.dim() == rank - 1 else tensor

    def _fixed_shape_hint(self, feeds: dict[str, torch.Tensor]) -> str:
        """What to set so that these tensors fit: the option, its value, or dropping it."""
        assert self.backend is not None  # called only with fixed shapes
        values = []
        for name, tensor in feeds.items():
            spec = self.backend.inputs[name]
            frame = [int(d) for d in tensor.shape[1:]]
            opt = [spec.opt_batch, *frame]
            values.append(f"{name}: {{min: {[spec.min_batch, *frame]}, opt: {opt}, max: {[spec.max_batch, *frame]}}}")
        return (
            f"set {self.name}.input_shapes to {{{', '.join(values)}}}, or leave input_shapes out "
            "to take the shapes from the stream"
        )

    def process(self, item: Frame | Batch) -> Frame | Batch:
        data = self._data(item)
        if data.device != self.device:
            data = data.to(self.device, non_blocking=True)
        feeds = {self.data_input: data}
        names = self.per_shape.declared if self.per_shape is not None else self._backend().inputs
        for name in names:
            if name != self.data_input:
                extra = item.results.get(name)
                if not isinstance(extra, torch.Tensor):
                    raise ShapeError(f"model input {name!r} is not fed: put a tensor in results[{name!r}]")
                feeds[name] = extra.to(self.device, non_blocking=True)
        rows = len(row_frame_counts(item))  # one per frame, unless one input serves several (window frames_out)
        if data.shape[0] != rows:
            raise ShapeError(
                f"the batch has {rows} model inputs ({len(item.frames)} frames) but its data has {data.shape[0]} rows"
            )
        if self.per_shape is not None:
            item.results.update(self.per_shape.run(feeds))
        else:
            backend = self._backend()
            try:
                item.results.update(backend.run(feeds))
            except ShapeError as error:
                if all(tuple(t.shape[1:]) == backend.inputs[n].frame_shape for n, t in feeds.items()):
                    raise
                raise ShapeError(f"{error}: {self._fixed_shape_hint(feeds)}") from None
        self.count("frames", len(item.frames))
        return item

    def _backend(self) -> InferenceBackend:
        assert self.backend is not None  # setup() ran with fixed shapes: the runner guarantees it
        return self.backend

    def teardown(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self.per_shape is not None:
            self.per_shape.close()
            self.per_shape = None
