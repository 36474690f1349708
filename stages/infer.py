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
the outputs sliced back; larger ones run in chunks.

`input_shapes` gives each input's shape, batch included: `{"input.1": [8, 3, 480, 640]}`, or a
batch range for dynamic batch, `{"input.1": {"min": [1, 3, 480, 640], "opt": [8, 3, 480, 640],
"max": [32, 3, 480, 640]}}`. Omitted, the model's own shapes are used when they are all fixed.

Example (YAML):
    - name: detect
      type: infer
      model: models/centerface.onnx
      input_shapes: {input.1: [8, 3, 480, 640]}
      precision: fp16
      batch_size: 8

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
    ModelError,
    Precision,
    ShapeError,
)
from streamflow.inference.onnx_tools import graph_inputs, load_onnx
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
        input: str | None = Field(
            None, description="the model input that gets the batch's data (default: the only one)"
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
            self.specs()  # bad shapes fail when the pipeline is built, not when it starts
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
        self.data_input = ""

    def setup(self) -> None:
        cfg = self.config
        if cfg.precision is Precision.FP16 and not self.on_gpu:
            raise ValueError(
                f"precision fp16 needs a CUDA device, but stage {self.name!r} runs on {self.device}: use precision fp32"
            )
        specs = cfg.specs() or self._model_specs(cfg.model)
        if cfg.input is not None and cfg.input not in specs:
            raise ShapeError(f"input {cfg.input!r} is not a model input; the inputs are {sorted(specs)}")
        if cfg.input is None and len(specs) != 1:
            raise ShapeError(f"the model has inputs {sorted(specs)}: set `input` to the one that gets the batch data")
        self.data_input = cfg.input or next(iter(specs))
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
            logger=self.log,
        )
        backend.load()
        self.backend = backend
        self.log.info("%s", backend.description)

    @staticmethod
    def _model_specs(model: Path) -> dict[str, InputSpec]:
        if model.suffix.lower() != ".onnx":
            raise ShapeError(f"input_shapes is required with a TensorRT engine ({model.name})")
        declared = graph_inputs(load_onnx(model))
        specs = {}
        for name, dims in declared.items():
            if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
                described = ", ".join(f"{n} {list(d)}" for n, d in declared.items())
                raise ModelError(f"{model.name} has dynamic input dims ({described}): set input_shapes")
            specs[name] = InputSpec.static(name, [int(d) for d in dims])  # type: ignore[arg-type]
        return specs

    def _data(self, item: Frame | Batch) -> torch.Tensor:
        assert self.backend is not None  # setup() ran: the runner guarantees it
        rank = len(self.backend.inputs[self.data_input].shape)
        if isinstance(item, Batch):
            if item.data is not None:
                return item.data
            tensors = [self._frame_tensor(frame, rank) for frame in item.frames]
            return torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        return self._frame_tensor(item, rank)

    @staticmethod
    def _frame_tensor(frame: Frame, rank: int) -> torch.Tensor:
        tensor = frame.results.get("input", frame.image)
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"frame {frame.index}: results['input'] is {type(tensor).__name__}, not a tensor")
        return tensor.unsqueeze(0) if tensor.dim() == rank - 1 else tensor

    def process(self, item: Frame | Batch) -> Frame | Batch:
        assert self.backend is not None  # setup() ran: the runner guarantees it
        data = self._data(item)
        if data.device != self.device:
            data = data.to(self.device, non_blocking=True)
        feeds = {self.data_input: data}
        for name in self.backend.inputs:
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
        item.results.update(self.backend.run(feeds))
        self.count("frames", len(item.frames))
        return item

    def teardown(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
