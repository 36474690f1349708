"""ONNX -> torch module, run eagerly or replayed from a CUDA graph on the stage's stream.

The model's input dims are rewritten to the configured shapes first (`with_static_input_shape`), then
converted, by one of two converters (`converter`):
- `native` (`streamflow.inference.onnx_graph`): the operators of CNNs; shapes, indices and sizes stay
  host values, so nothing reads back from the GPU. Quick to import, which is most of start-up.
- `onnx2torch`: many more operators, but importing it imports torchvision and `torch._dynamo`. Its
  Resize/Slice nodes with constant parameters are then frozen into modules that hold plain Python
  values (`static_ops.freeze_constant_arguments`): onnx2torch's own versions read those parameters back
  from the GPU on every call, a host sync that also makes CUDA graph capture fail.
- `auto` (the default): native when it implements every operator of the graph, else onnx2torch, and
  the log says which and why.
Only then does the module move to the device in the chosen precision. On a GPU with fixed shapes the
forward pass is captured once in a CUDA graph: `infer` copies the batch into the graph's static input
buffer on the current stream, replays the graph there and copies the outputs out (the static output
buffers are overwritten by the next replay, and downstream stages may still be reading the previous
ones). A partial batch is copied into the first rows of the static input and its outputs sliced back,
so no padding tensor is built.

A graph does the work of its whole batch whatever part of it is filled, and live sources send
partial batches (a batch goes when `batch_timeout_ms` passes, full or not): a detector captured at
batch 32 that mostly receives 12 frames spends most of the GPU on padding. `graph_batches` captures
more graphs, one per smaller batch size listed, over the first rows of the same static input and in
one shared memory pool: one graph's scratch memory, even its output buffers, may lie in another's,
which is safe because they replay one at a time on one stream and every replay's outputs are copied
out before the next replay. A batch replays the smallest graph that holds it.

Example (CPU, eager):
    >>> import torch, tempfile, pathlib
    >>> from streamflow.inference.base import InputSpec
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.onnx"
    >>> torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.rand(1, 3, 8, 8),), str(path),
    ...                   input_names=["x"], output_names=["y"], dynamo=False)
    >>> backend = TorchBackend(path, {"x": InputSpec.static("x", [2, 3, 8, 8])})
    >>> backend.load()
    >>> backend.infer({"x": torch.rand(2, 3, 8, 8)})["y"].shape
    torch.Size([2, 2, 8, 8])
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import torch

from streamflow.inference.base import (
    BackendKind,
    CudaGraphMode,
    InferenceBackend,
    InputSpec,
    ModelError,
    Precision,
    TorchConverter,
    check_graph_batches,
)
from streamflow.inference.onnx_tools import (
    check_model_inputs,
    graph_inputs,
    graph_outputs,
    load_onnx,
    with_opset_at_least,
    with_static_input_shape,
)

__all__ = ["TorchBackend"]

log = logging.getLogger(__name__)

# onnx2torch converts opset 11 and later reliably; older graphs are converted up first.
_ONNX2TORCH_MIN_OPSET = 13
_WARMUP_RUNS = 3  # cuDNN picks algorithms and allocators settle before capture


class TorchBackend(InferenceBackend):
    """ONNX converted to a torch module, eager or CUDA-graph replay. See the module docstring."""

    kind: ClassVar[BackendKind] = BackendKind.TORCH

    def __init__(
        self,
        model: str | Path,
        inputs: Mapping[str, InputSpec],
        *,
        precision: Precision = Precision.FP32,
        device: torch.device | str = "cpu",
        cuda_graph: CudaGraphMode = CudaGraphMode.AUTO,
        channels_last: bool = False,
        cudnn_benchmark: bool = False,
        converter: TorchConverter = TorchConverter.AUTO,
        graph_batches: Sequence[int] = (),
    ) -> None:
        super().__init__(model, inputs, precision=precision, device=device)
        self.converter = TorchConverter(converter)
        self.converter_used = self.converter  # the one load() chose
        self.cuda_graph_mode = CudaGraphMode(cuda_graph)
        # NHWC weights and 4-D inputs: cuDNN's tensor-core convolutions work in that layout, and
        # NCHW fp16 input costs them a transpose per layer.
        self.channels_last = channels_last
        # cuDNN times its algorithms for each new shape (process-wide); worth it for fixed shapes.
        self.cudnn_benchmark = cudnn_benchmark
        if self.cuda_graph_mode is CudaGraphMode.ON and self.device.type != "cuda":
            raise ValueError(f"cuda_graph on needs a CUDA device, but this runs on {self.device}: use auto or off")
        check_graph_batches(graph_batches, self.max_batch)
        #: Batch sizes with a CUDA graph of their own, ascending; the largest is `max_batch`.
        self.graph_batches = sorted({*graph_batches, self.max_batch})
        self.module: torch.nn.Module | None = None
        #: The graph at the largest batch (None: eager); `_graphs` holds every captured size.
        self.graph: torch.cuda.CUDAGraph | None = None
        self._graphs: list[_CapturedGraph] = []
        #: The batch size of the graph the last call replayed (None: none yet, or eager).
        self.last_graph_batch: int | None = None
        self._static_inputs: dict[str, torch.Tensor] = {}
        self._input_order: list[str] = []
        self._input_dtypes: dict[str, torch.dtype] = {}

    @property
    def uses_cuda_graph(self) -> bool:
        if self.device.type != "cuda" or self.cuda_graph_mode is CudaGraphMode.OFF:
            return False
        return self.cuda_graph_mode is CudaGraphMode.ON or not any(s.dynamic for s in self.inputs.values())

    @property
    def fixed_batch(self) -> int | None:
        if self.uses_cuda_graph:
            return self.max_batch
        return super().fixed_batch

    def load(self) -> None:
        # Where loading time goes (start-up is a target; these steps are most of a model stage's setup).
        steps: list[tuple[str, float]] = []
        began = time.perf_counter()

        def step(name: str) -> None:
            steps.append((name, time.perf_counter() - began - sum(took for _, took in steps)))

        onnx_model = load_onnx(self.model_path)
        check_model_inputs(graph_inputs(onnx_model), self.inputs, self.model_path)
        dims = {n: ["batch" if s.dynamic else s.opt_batch, *s.frame_shape] for n, s in self.inputs.items()}
        onnx_model = with_static_input_shape(onnx_model, dims)
        self.outputs = list(graph_outputs(onnx_model))
        self.converter_used = self._choose_converter(onnx_model)
        step("model read")
        module = self._convert_native(onnx_model) if self.converter_used is TorchConverter.NATIVE else None
        if module is None:
            self.converter_used = TorchConverter.ONNX2TORCH
            onnx_model = with_opset_at_least(onnx_model, _ONNX2TORCH_MIN_OPSET)
            module = self._convert_onnx2torch(onnx_model, step)
        step("conversion")
        # The first CUDA use of the process creates its CUDA context here.
        self.module = module.eval().to(device=self.device, dtype=self.precision.dtype)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if self.cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        fed = graph_inputs(onnx_model)  # weights that old exports list as inputs are not fed
        self._input_order = list(fed)
        self._input_dtypes = {
            vi.name: self._dtype_of(vi.type.tensor_type.elem_type) for vi in onnx_model.graph.input if vi.name in fed
        }
        step(f"to {self.device}")
        if self.uses_cuda_graph:
            try:
                self._capture()
            except RuntimeError as error:
                # Some converted ops still copy between host and device while running (a Resize or
                # Slice whose parameters are computed rather than constant, other onnx2torch ops that
                # read tensor values), which CUDA graph capture forbids. `on` asked for a graph: fail;
                # `auto` runs eagerly and says so once.
                self.graph, self._graphs, self._static_inputs = None, [], {}
                reason = str(error).splitlines()[0]
                if self.cuda_graph_mode is CudaGraphMode.ON:
                    raise ModelError(f"cannot capture {self.model_path.name} in a CUDA graph: {reason}") from error
                log.warning("%s: CUDA graph capture failed, running eagerly (%s)", self.model_path.name, reason)
        mode = "eager"
        if self.graph is None and len(self.graph_batches) > 1:
            log.info("%s: graph_batches unused: no CUDA graph here (it runs eagerly)", self.model_path.name)
        if self.graph is not None:
            plural = "s" if len(self._graphs) > 1 else ""
            mode = f"CUDA graph{plural} at batch {', '.join(str(g.batch) for g in self._graphs)}"
        if self.channels_last:
            mode += ", channels-last"
        if self.cudnn_benchmark and self.device.type == "cuda":
            mode += ", cuDNN benchmark"
        converted = f"torch {torch.__version__} ({self.converter_used})"
        self.description = f"{converted} on {self.device}, {self.precision}, {mode}"
        step("warm-up and capture" if self.graph is not None else "warm-up")
        log.info(
            "%s loaded in %.2f s (%s)",
            self.model_path.name,
            time.perf_counter() - began,
            ", ".join(f"{name} {took:.2f}" for name, took in steps),
        )

    def _choose_converter(self, onnx_model: onnx.ModelProto) -> TorchConverter:
        from streamflow.inference.onnx_graph import unsupported_operators

        missing = unsupported_operators(onnx_model)
        if self.converter is TorchConverter.NATIVE and missing:
            raise ModelError(
                f"{self.model_path.name}: converter native does not implement {', '.join(missing)}: "
                "use converter onnx2torch (or auto)"
            )
        if self.converter is TorchConverter.AUTO and missing:
            log.info("%s: converting with onnx2torch: it uses %s", self.model_path.name, ", ".join(missing))
            return TorchConverter.ONNX2TORCH
        return TorchConverter.ONNX2TORCH if self.converter is TorchConverter.ONNX2TORCH else TorchConverter.NATIVE

    def _convert_native(self, onnx_model: onnx.ModelProto) -> torch.nn.Module | None:
        """The native module; None where `auto` should hand the graph to onnx2torch instead."""
        from streamflow.inference.onnx_graph import GraphError, OnnxGraphModule

        try:
            return OnnxGraphModule(onnx_model)
        except GraphError as error:  # an attribute value it does not implement (auto checked only operators)
            if self.converter is TorchConverter.NATIVE:
                message = f"{self.model_path.name}: converter native: {error}: use converter onnx2torch"
                raise ModelError(message) from error
            log.info("%s: converting with onnx2torch: %s", self.model_path.name, error)
            return None

    def _convert_onnx2torch(self, onnx_model: onnx.ModelProto, step: Callable[[str], None]) -> torch.nn.Module:
        from onnx2torch import convert  # heavy import (torchvision, torch._dynamo), only when used

        from streamflow.inference.static_ops import freeze_constant_arguments  # imports onnx2torch too

        step("onnx2torch import")
        try:
            module = convert(onnx_model)
        except Exception as error:  # onnx2torch raises NotImplementedError and others for unsupported ops
            raise ModelError(f"onnx2torch cannot convert {self.model_path.name}: {error}") from error
        # On the CPU, before `.to(device)`: the constants are read here once instead of on every call.
        frozen = freeze_constant_arguments(module)
        log.debug("%s: froze %d Resize/Slice node(s) with constant parameters", self.model_path.name, frozen)
        return module

    def _layout(self, tensor: torch.Tensor) -> torch.Tensor:
        """A 4-D input in the module's memory layout (NHWC with `channels_last`), else as it is."""
        if self.channels_last and tensor.dim() == 4:
            return tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _dtype_of(self, elem_type: int) -> torch.dtype:
        """Float inputs take the chosen precision; others (ids, masks) keep the model's type."""
        np_type = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        if np_type.kind == "f":
            return self.precision.dtype
        return torch.from_numpy(np.zeros(0, dtype=np_type)).dtype

    def _forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert self.module is not None, "load() first"
        args = [inputs[name] for name in self._input_order]
        out = self.module(*args)
        tensors = [out] if isinstance(out, torch.Tensor) else list(out)
        if len(tensors) != len(self.outputs):
            raise ModelError(f"converted model returned {len(tensors)} outputs, the graph declares {len(self.outputs)}")
        return dict(zip(self.outputs, tensors, strict=True))

    def _capture(self) -> None:
        batch = self.max_batch
        self._static_inputs = {
            name: self._layout(torch.zeros(spec.shape_for(batch), dtype=self._input_dtypes[name], device=self.device))
            for name, spec in self.inputs.items()
        }
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.no_grad():
            with torch.cuda.stream(side):
                for _ in range(_WARMUP_RUNS):
                    self._forward(self._static_inputs)
                # A capture that fails half-way leaves torch's CUDA random generator believing a
                # capture is still running (every later torch.rand on the GPU then raises "Offset
                # increment outside graph capture"), so a forward pass that waits for the host is
                # found here, before capturing, rather than by a failed capture.
                # Twice: a sync in every call (a `.tolist()`, data-dependent shapes) breaks capture;
                # a one-off (lazy initialisation, another thread's sync seen through the
                # process-wide debug mode) does not, and must not cost the graph.
                first = _host_sync_in(lambda: self._forward(self._static_inputs))
                second = _host_sync_in(lambda: self._forward(self._static_inputs)) if first else None
                if first is not None and second is not None:
                    raise RuntimeError(f"the forward pass synchronizes with the host: {second}")
                if first is not None:
                    log.debug("%s: one host sync before capture, not repeated: %s", self.model_path.name, first)
                for size in self.graph_batches[:-1]:
                    # cuDNN chooses its algorithms (and may allocate) on a shape's first run, which
                    # must not happen during capture.
                    self._forward(self._rows(size))
            current.wait_stream(side)
            # Largest first: the smaller captures then reuse its freed scratch blocks in the shared pool.
            pool = torch.cuda.graph_pool_handle()
            captured = []
            for size in reversed(self.graph_batches):
                graph = torch.cuda.CUDAGraph()
                # thread_local: other stages' threads may touch CUDA while this one captures.
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    outputs = self._forward(self._rows(size))
                wrong = {n: tuple(t.shape) for n, t in outputs.items() if t.dim() == 0 or t.shape[0] != size}
                if wrong and size != batch:
                    raise ModelError(
                        f"{self.model_path.name}: graph_batches needs outputs whose first axis is the batch, "
                        f"but at batch {size} the model gives {wrong} (its graph fixes the batch size)"
                    )
                captured.append(_CapturedGraph(size, graph, outputs))
        self._graphs = captured[::-1]
        self.graph = captured[0].graph

    def _rows(self, count: int) -> dict[str, torch.Tensor]:
        """The first `count` rows of the static inputs (views: a graph captured on them reads that memory)."""
        return {name: tensor[:count] for name, tensor in self._static_inputs.items()}

    def infer(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(inputs)
        return self._run(inputs)

    def infer_partial(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Like `infer`, but a batch smaller than `fixed_batch` is fine (CUDA graph: no pad tensor)."""
        if self.graph is None:
            return super().infer_partial(inputs)
        self.check_inputs(inputs, partial=True)
        return self._run(inputs)

    def _run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            if self.graph is None:
                feed = {
                    n: self._layout(t.to(device=self.device, dtype=self._input_dtypes[n], non_blocking=True))
                    for n, t in inputs.items()
                }
                outputs = self._forward(feed)
                if self.channels_last:  # consumers get the ordinary layout, as without the option
                    outputs = {n: t.contiguous() for n, t in outputs.items()}
                return outputs
            count = next(iter(inputs.values())).shape[0]
            for name, tensor in inputs.items():
                self._static_inputs[name][:count].copy_(tensor, non_blocking=True)
            chosen = next(g for g in self._graphs if g.batch >= count)  # check_inputs bounds count
            chosen.graph.replay()
            self.last_graph_batch = chosen.batch
            # The copy out of the graph's buffer also gives consumers the ordinary (contiguous) layout.
            return {
                name: out[:count].clone(memory_format=torch.contiguous_format) for name, out in chosen.outputs.items()
            }

    def close(self) -> None:
        self.graph = None
        self._graphs = []
        self._static_inputs.clear()
        self.module = None


@dataclass(slots=True)
class _CapturedGraph:
    batch: int
    graph: torch.cuda.CUDAGraph
    outputs: dict[str, torch.Tensor]  # its static output buffers: overwritten by replays of any graph of the pool


def _host_sync_in(run: Callable[[], object]) -> str | None:
    """The first host-synchronizing CUDA call `run` makes (torch's sync debug mode, as a warning), or None."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # "warn", not "error": the mode is process-wide, and another thread must not fail because of it.
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    for warning in caught:
        text = str(warning.message)
        if "synchroniz" in text:
            return text.splitlines()[0]
    return None
