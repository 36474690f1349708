"""Model inference: one backend interface over TensorRT, torch (onnx2torch) and ONNX Runtime.

Example:
    >>> from streamflow.inference import InputSpec, Precision
    >>> InputSpec.static("input.1", [8, 3, 480, 640]).describe(), Precision("fp16").dtype
    ('8x3x480x640', torch.float16)
"""

from streamflow.inference.base import (
    BackendKind,
    BackendUnavailableError,
    CudaGraphMode,
    InferenceBackend,
    InputSpec,
    ModelError,
    Precision,
    ShapeError,
    parse_input_shapes,
)
from streamflow.inference.onnx_tools import with_static_input_shape
from streamflow.inference.select import create_backend

__all__ = [
    "BackendKind",
    "BackendUnavailableError",
    "CudaGraphMode",
    "InferenceBackend",
    "InputSpec",
    "ModelError",
    "Precision",
    "ShapeError",
    "create_backend",
    "parse_input_shapes",
    "with_static_input_shape",
]
