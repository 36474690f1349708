"""Model inference: one backend interface over TensorRT, torch (ONNX converted to a module) and ONNX Runtime.

Names are imported on first use (torch, onnx), so that `streamflow build-engine --help` stays quick.

Example:
    >>> from streamflow.inference import InputSpec, Precision
    >>> InputSpec.static("input.1", [8, 3, 480, 640]).describe(), Precision("fp16").dtype
    ('8x3x480x640', torch.float16)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamflow.inference.base import (
        BackendKind,
        BackendUnavailableError,
        CudaGraphMode,
        InferenceBackend,
        InputSpec,
        ModelError,
        Precision,
        ShapeError,
        TorchConverter,
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
    "TorchConverter",
    "create_backend",
    "parse_input_shapes",
    "with_static_input_shape",
]

_HOMES = {
    "create_backend": "streamflow.inference.select",
    "with_static_input_shape": "streamflow.inference.onnx_tools",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'streamflow.inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, "streamflow.inference.base")), name)
    globals()[name] = value
    return value
