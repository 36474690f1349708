"""Pick and create an inference backend: an explicit choice, or `auto`.

`auto` takes TensorRT when a TensorRT module imports and can run an engine on this GPU, else torch
on CUDA, else ONNX Runtime on the CPU. The choice and its reason are logged once per stage setup.

Example:
    >>> import torch
    >>> kind, reason = choose_backend("auto", torch.device("cpu"))
    >>> str(kind), reason
    ('onnxruntime', 'no CUDA device: ONNX Runtime on the CPU')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

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
    TorchConverter,
)

__all__ = ["choose_backend", "create_backend"]

log = logging.getLogger(__name__)


def choose_backend(
    kind: BackendKind | str, device: torch.device, *, model: str | Path | None = None
) -> tuple[BackendKind, str]:
    """(backend kind, reason) for `kind` on `device`. An explicit kind is returned as is."""
    kind = BackendKind(kind)
    if kind is not BackendKind.AUTO:
        return kind, "requested"
    if model is not None and Path(model).suffix.lower() in ENGINE_SUFFIXES:
        return BackendKind.TENSORRT, "the model is a serialized TensorRT engine"
    if device.type != "cuda":
        return BackendKind.ONNXRUNTIME, "no CUDA device: ONNX Runtime on the CPU"
    from streamflow.inference.tensorrt_backend import gpu_support, import_tensorrt, module_label

    try:
        trt = import_tensorrt()
    except BackendUnavailableError as error:
        return BackendKind.TORCH, f"torch on CUDA, since {error}"
    problem = gpu_support(trt, device)
    if problem is not None:
        return BackendKind.TORCH, f"torch on CUDA, since {problem}"
    return BackendKind.TENSORRT, f"{module_label(trt)} supports {torch.cuda.get_device_name(device)}"


def create_backend(
    model: str | Path,
    inputs: Mapping[str, InputSpec],
    *,
    kind: BackendKind | str = BackendKind.AUTO,
    precision: Precision | str = Precision.FP32,
    device: torch.device | str = "cpu",
    engine_cache: str | Path | None = None,
    cuda_graph: CudaGraphMode | str = CudaGraphMode.AUTO,
    channels_last: bool = False,
    cudnn_benchmark: bool = False,
    converter: TorchConverter | str = TorchConverter.AUTO,
    graph_batches: Sequence[int] = (),
    logger: logging.Logger | None = None,
) -> InferenceBackend:
    """Choose (for `auto`), create and return a backend; `load()` it before `infer()`.

    Example:
        >>> # backend = create_backend("models/centerface.onnx", specs, precision="fp16", device="cuda")
        >>> # backend.load(); outputs = backend.run({"input.1": batch})
    """
    device = torch.device(device)
    precision = Precision(precision)
    cuda_graph = CudaGraphMode(cuda_graph)
    precision.check_device(device)  # before the model file: the config error comes first
    if not Path(model).is_file():
        raise ModelError(f"model file not found: {model}")
    chosen, reason = choose_backend(kind, device, model=model)
    (logger or log).info("inference backend: %s (%s)", chosen, reason)
    converter = TorchConverter(converter)
    torch_only = [
        name
        for name, on in (
            ("channels_last", channels_last),
            ("cudnn_benchmark", cudnn_benchmark),
            ("converter", converter is not TorchConverter.AUTO),
            ("graph_batches", bool(graph_batches)),
        )
        if on
    ]
    if torch_only and chosen is not BackendKind.TORCH:
        (logger or log).info("%s: options of the torch backend, not used by %s", ", ".join(torch_only), chosen)
    if chosen is BackendKind.TENSORRT:
        from streamflow.inference.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(
            model, inputs, precision=precision, device=device, engine_cache=engine_cache, cuda_graph=cuda_graph
        )
    if Path(model).suffix.lower() in ENGINE_SUFFIXES:
        raise ModelError(f"{model} is a TensorRT engine; only backend tensorrt (or auto) can run it")
    if chosen is BackendKind.TORCH:
        from streamflow.inference.torch_backend import TorchBackend

        return TorchBackend(
            model,
            inputs,
            precision=precision,
            device=device,
            cuda_graph=cuda_graph,
            channels_last=channels_last,
            cudnn_benchmark=cudnn_benchmark,
            converter=converter,
            graph_batches=graph_batches,
        )
    from streamflow.inference.onnxruntime_backend import OnnxRuntimeBackend

    if cuda_graph is CudaGraphMode.ON:
        raise ValueError("cuda_graph on is not available with backend onnxruntime: use auto or off")
    return OnnxRuntimeBackend(model, inputs, precision=precision, device=device)
