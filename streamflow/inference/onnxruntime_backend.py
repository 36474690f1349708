"""ONNX Runtime: the CPU provider everywhere (CI, machines without a GPU), the CUDA provider when
`onnxruntime-gpu` is installed and the stage runs on a GPU.

With the CUDA provider, inputs and outputs stay on the device (I/O binding on the tensors' memory)
and ONNX Runtime is given the stage's CUDA stream as its compute stream, so no host sync is needed.
On a GPU stage without the CUDA provider it runs on the CPU and says so once in a warning.

Example:
    >>> import torch, tempfile, pathlib
    >>> from streamflow.inference.base import InputSpec
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.onnx"
    >>> torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.rand(1, 3, 8, 8),), str(path),
    ...                   input_names=["x"], output_names=["y"], dynamo=False)
    >>> backend = OnnxRuntimeBackend(path, {"x": InputSpec.static("x", [1, 3, 8, 8])})
    >>> backend.load()
    >>> backend.infer({"x": torch.rand(1, 3, 8, 8)})["y"].shape
    torch.Size([1, 2, 8, 8])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from streamflow.inference.base import BackendKind, InferenceBackend, InputSpec, ModelError, Precision
from streamflow.inference.onnx_tools import (
    check_model_inputs,
    graph_inputs,
    load_onnx,
    to_fp16,
    with_static_input_shape,
)

__all__ = ["OnnxRuntimeBackend", "cuda_provider_available"]

log = logging.getLogger(__name__)

_ORT_TYPES: dict[str, torch.dtype] = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
    "tensor(uint8)": torch.uint8,
    "tensor(int8)": torch.int8,
    "tensor(int32)": torch.int32,
    "tensor(int64)": torch.int64,
    "tensor(bool)": torch.bool,
}


def cuda_provider_available() -> bool:
    """True when the installed onnxruntime has the CUDA execution provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime session on the CPU or CUDA provider. See the module docstring."""

    kind: ClassVar[BackendKind] = BackendKind.ONNXRUNTIME

    def __init__(
        self,
        model: str | Path,
        inputs: Mapping[str, InputSpec],
        *,
        precision: Precision = Precision.FP32,
        device: torch.device | str = "cpu",
        threads: int = 0,
    ) -> None:
        super().__init__(model, inputs, precision=precision, device=device)
        self.threads = threads  # 0: ONNX Runtime's default (all physical cores)
        self.session: Any = None
        self.on_cuda = False
        self._input_dtypes: dict[str, torch.dtype] = {}

    def load(self) -> None:
        import onnxruntime as ort

        onnx_model = load_onnx(self.model_path)
        check_model_inputs(graph_inputs(onnx_model), self.inputs, self.model_path)
        dims = {n: ["batch" if s.dynamic else s.opt_batch, *s.frame_shape] for n, s in self.inputs.items()}
        onnx_model = with_static_input_shape(onnx_model, dims)
        self.on_cuda = self.device.type == "cuda" and cuda_provider_available()
        if self.device.type == "cuda" and not self.on_cuda:
            if self.precision is Precision.FP16:
                raise ModelError(
                    "onnxruntime here has no CUDA provider, so it cannot run fp16: install onnxruntime-gpu, "
                    "or use precision fp32 or backend torch"
                )
            log.warning(
                "onnxruntime has no CUDA provider (install onnxruntime-gpu): running on the CPU, copying to %s",
                self.device,
            )
        if self.precision is Precision.FP16:
            onnx_model = to_fp16(onnx_model)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # old exporters' models trigger a warning per weight
        if self.threads:
            options.intra_op_num_threads = self.threads
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.on_cuda:
            stream = torch.cuda.current_stream(self.device).cuda_stream
            cuda_options = {
                "device_id": str(self.device.index or 0),
                "has_user_compute_stream": "1",
                "user_compute_stream": str(stream),
            }
            providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(onnx_model.SerializeToString(), options, providers=providers)
        except Exception as error:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise ModelError(f"onnxruntime cannot load {self.model_path.name}: {error}") from error
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._input_dtypes = {i.name: _ORT_TYPES.get(i.type, torch.float32) for i in self.session.get_inputs()}
        provider = self.session.get_providers()[0]
        self.description = f"onnxruntime {ort.__version__} {provider}, {self.precision}"

    def infer(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(inputs)
        if self.session is None:
            raise RuntimeError("load() first")
        if self.on_cuda:
            return self._infer_cuda(inputs)
        feed = {n: t.detach().to("cpu", self._input_dtypes[n]).contiguous().numpy() for n, t in inputs.items()}
        results = self.session.run(self.outputs, feed)
        return {
            n: torch.from_numpy(np.ascontiguousarray(r)).to(self.device)
            for n, r in zip(self.outputs, results, strict=True)
        }

    def _infer_cuda(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        binding = self.session.io_binding()
        index = self.device.index or 0
        keep = []  # the converted inputs must live until the run is enqueued
        for name, tensor in inputs.items():
            dtype = self._input_dtypes[name]
            fed = tensor.to(device=self.device, dtype=dtype).contiguous()
            keep.append(fed)
            np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            binding.bind_input(name, "cuda", index, np_dtype, list(fed.shape), fed.data_ptr())
        for name in self.outputs:
            binding.bind_output(name, "cuda", index)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        # The DLPack views do not keep ORT's buffers alive: copy into torch memory while `values` lives.
        # ORT ran on the stage's stream (user_compute_stream), so the copy is ordered after it.
        return {name: torch.from_dlpack(value).clone() for name, value in zip(self.outputs, values, strict=True)}

    def close(self) -> None:
        self.session = None
