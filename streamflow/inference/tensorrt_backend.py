"""TensorRT: engine build from ONNX, an engine cache that never loads a foreign engine, execute_async_v3.

One code path serves the `tensorrt` module (TensorRT 10 and 11) and the `tensorrt_rtx` module
(TensorRT for RTX, installable from PyPI); both are imported lazily, only when this backend runs.

- I/O: `num_io_tensors`, `get_tensor_name` and `get_tensor_mode` split inputs from outputs; the
  configured input shapes must name exactly the engine's inputs and fit its optimization profile.
- Outputs are allocated once as torch CUDA tensors (at the largest batch) from
  `context.get_tensor_shape` and `engine.get_tensor_dtype`; `set_tensor_address` binds them and the
  inputs; `execute_async_v3` runs on the current torch stream (the stage's). Results are copied out of
  the buffers on that stream, since the next call overwrites them while downstream may still read.
- Build: `Builder`, `OnnxParser`, one optimization profile from the input specs, a timing cache
  kept beside the engines (TensorRT only: TensorRT-RTX ignores timing caches). fp16 uses
  `BuilderFlag.FP16` where it exists (TensorRT 10) and otherwise converts the ONNX graph to fp16
  before parsing (TensorRT 11 and TensorRT-RTX build strongly typed networks).
- Cache: one engine per model content, shapes, precision and GPU, with a JSON sidecar holding the
  full key (ONNX SHA-256, TensorRT module and version, GPU name, compute capability, shapes,
  precision). A sidecar that differs, or an engine TensorRT refuses, is rebuilt with one log line.

Example (needs TensorRT and a GPU):
    >>> # specs = {"input.1": InputSpec.static("input.1", [8, 3, 480, 640])}
    >>> # backend = TensorRTBackend("models/centerface.onnx", specs, precision=Precision.FP16, device="cuda")
    >>> # backend.load(); backend.infer({"input.1": batch})["537"].shape  ->  (8, 1, 120, 160)
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Literal

import torch

from streamflow.inference.base import (
    ENGINE_SUFFIXES,
    BackendKind,
    BackendUnavailableError,
    CudaGraphMode,
    InferenceBackend,
    InputSpec,
    ModelError,
    Precision,
    ShapeError,
    format_shape,
)
from streamflow.inference.onnx_tools import (
    check_model_inputs,
    file_sha256,
    graph_inputs,
    load_onnx,
    to_fp16,
    with_static_input_shape,
)

__all__ = [
    "TRT_MODULES",
    "EngineCache",
    "EngineKey",
    "TensorRTBackend",
    "build_serialized_engine",
    "check_engine_inputs",
    "default_engine_cache",
    "engine_key",
    "fp16_strategy",
    "gpu_support",
    "import_tensorrt",
    "split_io",
    "torch_dtype",
]

log = logging.getLogger(__name__)

#: Modules tried in this order; both expose the same Python API.
TRT_MODULES = ("tensorrt", "tensorrt_rtx")
INSTALL_HINT = (
    "install TensorRT (`pip install tensorrt`, data-center and RTX GPUs) or TensorRT for RTX "
    "(`pip install tensorrt-rtx`, RTX GPUs), or use backend torch"
)

_TRT_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def import_tensorrt(module: str | None = None) -> ModuleType:
    """Import `module`, or the first importable of `TRT_MODULES`; a clear error says how to install."""
    names = (module,) if module else TRT_MODULES
    reasons = []
    for name in names:
        try:
            return importlib.import_module(name)
        except (ImportError, OSError, RuntimeError) as error:  # OSError/RuntimeError: libraries that fail to load
            reasons.append(f"{name}: {error}")
    raise BackendUnavailableError(f"TensorRT is not importable ({'; '.join(reasons)}): {INSTALL_HINT}")


def module_label(trt: ModuleType) -> str:
    """`"tensorrt 10.8.0"` or `"tensorrt_rtx 1.7.1.116"`."""
    return f"{trt.__name__} {getattr(trt, '__version__', '?')}"


def fp16_strategy(trt: ModuleType) -> Literal["builder_flag", "onnx_fp16"]:
    """How this TensorRT makes an fp16 engine: the builder flag (TensorRT 10) or an fp16 graph (11, RTX)."""
    return "builder_flag" if hasattr(trt.BuilderFlag, "FP16") else "onnx_fp16"


def uses_timing_cache(trt: ModuleType) -> bool:
    """TensorRT-RTX compiles kernels just in time and deprecates timing caches (no-ops there)."""
    return trt.__name__ != "tensorrt_rtx" and hasattr(trt.IBuilderConfig, "create_timing_cache")


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """The torch dtype of a TensorRT `DataType` (matched by member name, so it works for every module)."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    try:
        return _TRT_DTYPES[name]
    except KeyError:
        raise TypeError(f"TensorRT data type {name} has no torch equivalent") from None


def split_io(engine: Any, trt: ModuleType) -> tuple[list[str], list[str]]:
    """(input names, output names) of an engine, in its I/O order."""
    inputs: list[str] = []
    outputs: list[str] = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
    return inputs, outputs


def check_engine_inputs(
    engine_inputs: Mapping[str, Sequence[int]],
    profile: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]],
    specs: Mapping[str, InputSpec],
) -> None:
    """Configured shapes must name the engine's inputs and fit its dims (-1 = dynamic) and profile 0."""
    described = ", ".join(f"{name} {format_shape(shape)}" for name, shape in engine_inputs.items())
    if set(specs) != set(engine_inputs):
        raise ShapeError(
            f"configured input shapes name {sorted(specs)}, but the engine's inputs are: {described} (-1 = dynamic)"
        )
    for name, spec in specs.items():
        dims = tuple(engine_inputs[name])
        if len(dims) != len(spec.shape) or any(d not in (-1, s) for d, s in zip(dims, spec.shape, strict=False)):
            raise ShapeError(f"input {name!r} configured as {spec.describe()}, the engine's inputs are: {described}")
        if name in profile:
            lo, _, hi = (tuple(s) for s in profile[name])
            inside = all(a <= b for a, b in zip(lo, spec.min_shape, strict=True)) and all(
                a <= b for a, b in zip(spec.max_shape, hi, strict=True)
            )
            if not inside:
                raise ShapeError(
                    f"input {name!r} configured as {spec.describe()}, outside the engine's profile "
                    f"{format_shape(lo)} .. {format_shape(hi)}: rebuild the engine with these shapes"
                )


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything an engine depends on. Engines run only where all of it matches."""

    onnx_sha256: str
    trt_module: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    inputs: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    precision: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [{"name": n, "min": list(a), "opt": list(b), "max": list(c)} for n, a, b, c in self.inputs]
        return data

    @property
    def model_digest(self) -> str:
        """Identifies the model, shapes and precision (the engine's file name); the GPU slug is added."""
        text = json.dumps([self.onnx_sha256, self.as_dict()["inputs"], self.precision], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def gpu_slug(self) -> str:
        name = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower()
        return f"{name}-sm{self.compute_capability.replace('.', '')}"

    def differences(self, other: Mapping[str, Any]) -> list[str]:
        mine = self.as_dict()
        return [f"{k}: {other.get(k)!r} -> {mine[k]!r}" for k in mine if other.get(k) != mine[k]]


def engine_key(
    onnx_sha256: str,
    trt: ModuleType,
    specs: Mapping[str, InputSpec],
    precision: Precision,
    *,
    gpu_name: str,
    compute_capability: tuple[int, int],
) -> EngineKey:
    return EngineKey(
        onnx_sha256=onnx_sha256,
        trt_module=trt.__name__,
        trt_version=str(getattr(trt, "__version__", "?")),
        gpu_name=gpu_name,
        compute_capability=f"{compute_capability[0]}.{compute_capability[1]}",
        inputs=tuple((s.name, s.min_shape, s.shape, s.max_shape) for s in specs.values()),
        precision=str(Precision(precision)),
    )


def default_engine_cache() -> Path:
    """`$XDG_CACHE_HOME/streamflow/engines`, or `~/.cache/streamflow/engines`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamflow" / "engines"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers in other processes never see a half-written engine


class EngineCache:
    """Engine files `<model>-<digest>-<gpu>.engine` with a `.json` sidecar holding the full `EngineKey`.

    The file name leaves out the TensorRT version on purpose: after an upgrade the old engine is found,
    its sidecar differs, and it is rebuilt in place (one log line) instead of piling up.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def engine_path(self, key: EngineKey, stem: str) -> Path:
        return self.directory / f"{stem}-{key.model_digest}-{key.gpu_slug}.engine"

    def timing_cache_path(self, key: EngineKey) -> Path:
        return self.directory / f"timing-{key.trt_module}-{key.trt_version}-{key.gpu_slug}.cache"

    def load(self, key: EngineKey, stem: str) -> bytes | None:
        """The cached engine for `key`, or None (absent, or stale: logged once) when it must be built."""
        path = self.engine_path(key, stem)
        if not path.is_file():
            return None
        meta_path = path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            log.warning("rebuilding %s: its key file %s is missing or unreadable", path, meta_path.name)
            return None
        differences = key.differences(meta)
        if differences:
            log.warning("rebuilding %s: built for another setup (%s)", path, "; ".join(differences))
            return None
        return path.read_bytes()

    def store(self, key: EngineKey, stem: str, data: bytes) -> Path:
        path = self.engine_path(key, stem)
        _write_atomic(path, data)
        _write_atomic(path.with_suffix(".json"), json.dumps(key.as_dict(), indent=2).encode())
        return path


def _make_logger(trt: ModuleType) -> Any:
    """A TensorRT ILogger that forwards to `logging` and remembers the last errors for our messages."""

    class _Logger(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: collections.deque[str] = collections.deque(maxlen=6)

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            if name in ("ERROR", "INTERNAL_ERROR"):
                # Raised to the user in our own message; debug here so a probe failure is not noise.
                self.errors.append(msg)
                log.debug("TensorRT: %s", msg)
            elif name == "WARNING":
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

        def last_errors(self) -> str:
            return " | ".join(self.errors) or "no error message from TensorRT"

    return _Logger()


def build_serialized_engine(
    trt: ModuleType,
    onnx_model: Any,
    specs: Mapping[str, InputSpec],
    precision: Precision,
    *,
    timing_cache: Path | None = None,
    logger: Any = None,
) -> bytes:
    """Parse `onnx_model` (an `onnx.ModelProto` whose inputs already have the spec's dims), build, serialize."""
    logger = logger or _make_logger(trt)
    fp16 = Precision(precision) is Precision.FP16
    strategy = fp16_strategy(trt) if fp16 else None
    if strategy == "onnx_fp16":
        onnx_model = to_fp16(onnx_model)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{module_label(trt)} cannot parse the model: {errors}")
    config = builder.create_builder_config()
    if strategy == "builder_flag":
        config.set_flag(trt.BuilderFlag.FP16)
    cache = None
    if timing_cache is not None and uses_timing_cache(trt):
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)  # False: a mismatching cache is an error, not silently reused
    profile = builder.create_optimization_profile()
    for name, spec in specs.items():
        profile.set_shape(name, spec.min_shape, spec.shape, spec.max_shape)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"{module_label(trt)} failed to build an engine: {logger.last_errors()}")
    if cache is not None and timing_cache is not None:
        _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


_GPU_SUPPORT: dict[tuple[str, int], str | None] = {}


def gpu_support(trt: ModuleType, device: torch.device) -> str | None:
    """None if `trt` can build and run an engine on `device`, else why not (probed once per process).

    Asking is the only reliable test: TensorRT-RTX imports and builds on data-center GPUs but refuses
    to run the engines ("cannot run on this GPU, which has compute capability 9.0").
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    cache_key = (trt.__name__, index)
    if cache_key not in _GPU_SUPPORT:
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        logger = _make_logger(trt)
        reason: str | None = None
        try:
            with torch.cuda.device(index):
                data = build_serialized_engine(
                    trt, model, {"x": InputSpec.static("x", [1, 8])}, Precision.FP32, logger=logger
                )
                runtime = trt.Runtime(logger)
                engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                reason = f"{module_label(trt)} cannot run engines on this GPU: {logger.last_errors()}"
            del engine, runtime  # the engine first: it must not outlive its runtime
        except Exception as error:  # any failure means "not usable here"; the reason says which
            reason = f"{module_label(trt)} failed a probe build on this GPU: {error}"
        _GPU_SUPPORT[cache_key] = reason
    return _GPU_SUPPORT[cache_key]


class TensorRTBackend(InferenceBackend):
    """A TensorRT engine (built from ONNX and cached, or a serialized `.engine`/`.plan` file)."""

    kind: ClassVar[BackendKind] = BackendKind.TENSORRT

    def __init__(
        self,
        model: str | Path,
        inputs: Mapping[str, InputSpec],
        *,
        precision: Precision = Precision.FP32,
        device: torch.device | str = "cuda",
        engine_cache: str | Path | None = None,
        cuda_graph: CudaGraphMode = CudaGraphMode.AUTO,
        module: str | None = None,
    ) -> None:
        super().__init__(model, inputs, precision=precision, device=device)
        if self.device.type != "cuda":
            raise BackendUnavailableError(f"TensorRT needs a CUDA device, this runs on {self.device}")
        self.engine_cache = EngineCache(engine_cache if engine_cache is not None else default_engine_cache())
        self.cuda_graph_mode = CudaGraphMode(cuda_graph)
        self.module_name = module
        self.engine_path: Path | None = None
        self.trt: ModuleType | None = None
        self.engine: Any = None
        self.context: Any = None
        self._logger: Any = None
        self._runtime: Any = None
        self._input_dtypes: dict[str, torch.dtype] = {}
        self._buffers: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static_inputs: dict[str, torch.Tensor] = {}

    @property
    def fixed_batch(self) -> int | None:
        return self.max_batch if self.cuda_graph_mode is CudaGraphMode.ON else super().fixed_batch

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        onnx_model = None
        if self.model_path.suffix.lower() not in ENGINE_SUFFIXES:
            # The cheap checks first: a wrong name or shape is reported even where TensorRT is absent.
            onnx_model = load_onnx(self.model_path)
            check_model_inputs(graph_inputs(onnx_model), self.inputs, self.model_path)
        if not torch.cuda.is_available():
            raise BackendUnavailableError("TensorRT needs a CUDA GPU and torch sees none (torch.cuda.is_available())")
        trt = self.trt = import_tensorrt(self.module_name)
        self._logger = _make_logger(trt)
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        gpu = torch.cuda.get_device_name(index)
        capability = torch.cuda.get_device_capability(index)
        with torch.cuda.device(index):
            if onnx_model is None:
                self.engine = self._load_engine_file(trt, gpu, capability)
            else:
                self.engine = self._engine_from_onnx(trt, onnx_model, gpu, capability)
            self._bind(trt)
        graph = f", CUDA graph at batch {self.max_batch}" if self.graph is not None else ""
        self.description = f"{module_label(trt)} engine {self.engine_path}, {self.precision}{graph}"

    def _deserialize(self, trt: ModuleType, data: bytes) -> Any:
        self._logger.errors.clear()
        if self._runtime is None:
            self._runtime = trt.Runtime(self._logger)  # kept: engines must not outlive their runtime
        return self._runtime.deserialize_cuda_engine(data)

    def _load_engine_file(self, trt: ModuleType, gpu: str, capability: tuple[int, int]) -> Any:
        path = self.model_path
        if not path.is_file():
            raise ModelError(f"engine file not found: {path}")
        here = f"{module_label(trt)} on {gpu} (compute capability {capability[0]}.{capability[1]})"
        meta_path = path.with_suffix(".json")
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError:
                meta = {}
            built = (meta.get("trt_module"), meta.get("trt_version"), meta.get("compute_capability"))
            if all(built) and built != (trt.__name__, str(trt.__version__), f"{capability[0]}.{capability[1]}"):
                raise ModelError(
                    f"{path} was built with {built[0]} {built[1]} for compute capability {built[2]}, this is {here}: "
                    "rebuild it with `streamflow build-engine MODEL.onnx`"
                )
        engine = self._deserialize(trt, path.read_bytes())
        if engine is None:
            raise ModelError(
                f"{here} cannot load {path} ({self._logger.last_errors()}): rebuild it with "
                "`streamflow build-engine MODEL.onnx`"
            )
        self.engine_path = path
        return engine

    def _engine_from_onnx(self, trt: ModuleType, onnx_model: Any, gpu: str, capability: tuple[int, int]) -> Any:
        key = engine_key(
            file_sha256(self.model_path), trt, self.inputs, self.precision, gpu_name=gpu, compute_capability=capability
        )
        stem = self.model_path.stem
        self.engine_path = self.engine_cache.engine_path(key, stem)
        data = self.engine_cache.load(key, stem)
        if data is not None:
            engine = self._deserialize(trt, data)
            if engine is not None:
                log.info("loaded cached TensorRT engine %s", self.engine_path)
                return engine
            log.warning(
                "rebuilding %s: %s could not load it (%s)",
                self.engine_path,
                module_label(trt),
                self._logger.last_errors(),
            )
        dims = {n: ["batch" if s.dynamic else s.opt_batch, *s.frame_shape] for n, s in self.inputs.items()}
        shaped = with_static_input_shape(onnx_model, dims)
        log.info(
            "building a TensorRT engine for %s (%s, %s); this takes a while once",
            self.model_path.name,
            ", ".join(s.describe() for s in self.inputs.values()),
            self.precision,
        )
        data = build_serialized_engine(
            trt,
            shaped,
            self.inputs,
            self.precision,
            timing_cache=self.engine_cache.timing_cache_path(key),
            logger=self._logger,
        )
        engine = self._deserialize(trt, data)
        if engine is None:
            raise BackendUnavailableError(
                f"{module_label(trt)} built an engine but cannot run it on {gpu} (compute capability "
                f"{capability[0]}.{capability[1]}): {self._logger.last_errors()}"
            )
        self.engine_cache.store(key, stem, data)
        return engine

    def _bind(self, trt: ModuleType) -> None:
        engine = self.engine
        inputs, outputs = split_io(engine, trt)
        shapes = {name: tuple(engine.get_tensor_shape(name)) for name in inputs}
        profile: dict[str, Any] = {}
        if any(-1 in shape for shape in shapes.values()):  # only dynamic engines need (and have) a profile
            profile = {name: tuple(tuple(s) for s in engine.get_tensor_profile_shape(name, 0)) for name in inputs}
        check_engine_inputs(shapes, profile, self.inputs)
        self.outputs = outputs
        context = self.context = engine.create_execution_context()
        if context is None:
            raise RuntimeError(
                f"{module_label(trt)} could not create an execution context: {self._logger.last_errors()}"
            )
        self._input_dtypes = {name: torch_dtype(engine.get_tensor_dtype(name)) for name in inputs}
        # Output buffers are sized once, for the largest batch the profile allows.
        for name, spec in self.inputs.items():
            self._set_shape(name, spec.max_shape)
        for name in outputs:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelError(f"output {name!r} has a data-dependent shape {format_shape(shape)}; not supported")
            buffer = torch.empty(shape, dtype=torch_dtype(engine.get_tensor_dtype(name)), device=self.device)
            self._buffers[name] = buffer
            context.set_tensor_address(name, buffer.data_ptr())
        if self.cuda_graph_mode is CudaGraphMode.ON:
            self._capture()

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self._shapes.get(name) == shape:
            return
        if self.context.set_input_shape(name, shape) is False:
            raise ShapeError(
                f"TensorRT rejected shape {format_shape(shape)} for input {name!r}: {self._logger.last_errors()}"
            )
        self._shapes[name] = shape

    def _capture(self) -> None:
        batch = self.max_batch
        self._static_inputs = {
            name: torch.zeros(spec.shape_for(batch), dtype=self._input_dtypes[name], device=self.device)
            for name, spec in self.inputs.items()
        }
        for name, tensor in self._static_inputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        current = torch.cuda.current_stream(self.device)
        # TensorRT allocates lazily on its first run, which must not happen during capture.
        self._execute(current)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._execute(torch.cuda.current_stream(self.device))
        self.graph = graph

    def _execute(self, stream: torch.cuda.Stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed: {self._logger.last_errors()}")

    # -- running ------------------------------------------------------------------------------
    def infer(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(inputs)
        if self.context is None:
            raise RuntimeError("load() first")
        stream = torch.cuda.current_stream(self.device)
        if self.graph is not None:
            for name, tensor in inputs.items():
                self._static_inputs[name].copy_(tensor, non_blocking=True)
            self.graph.replay()
            return {name: buffer.clone() for name, buffer in self._buffers.items()}
        fed = {}  # referenced until execute is enqueued; later reuse of the memory is stream-ordered
        for name, tensor in inputs.items():
            fed[name] = tensor.to(device=self.device, dtype=self._input_dtypes[name], non_blocking=True).contiguous()
            self._set_shape(name, tuple(fed[name].shape))
            self.context.set_tensor_address(name, fed[name].data_ptr())
        self._execute(stream)
        results = {}
        for name, buffer in self._buffers.items():
            shape = tuple(self.context.get_tensor_shape(name))
            count = 1
            for dim in shape:
                count *= dim
            results[name] = buffer.view(-1)[:count].view(shape).clone()
        return results

    def close(self) -> None:
        self.graph = None
        self.context = None
        self.engine = None
        self._runtime = None
        self._buffers.clear()
        self._static_inputs.clear()
        self._shapes.clear()
