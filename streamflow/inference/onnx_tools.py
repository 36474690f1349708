"""Small, reusable ONNX graph edits: load with clear errors, list real inputs, fix input shapes, fp16.

Models exported by older tools list their weights among the graph inputs and bake a batch size into
the input (CenterFace ships with a static 10x3x32x32 input). Backends need the input shapes the run
uses: `with_static_input_shape` rewrites them (an int fixes a dimension, a string such as "batch"
makes it symbolic), drops stale intermediate shapes and re-runs shape inference.

Example:
    >>> import onnx
    >>> from onnx import TensorProto, helper
    >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [10, 3, 32, 32])
    >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 3, 32, 32])
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    >>> m = with_static_input_shape(helper.make_model(g), {"x": ["batch", 3, 48, 64]})
    >>> graph_inputs(m)
    {'x': ('batch', 3, 48, 64)}
    >>> graph_outputs(m)
    {'y': ('batch', 3, 48, 64)}
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, numpy_helper

__all__ = [
    "ModelError",
    "check_model_inputs",
    "file_sha256",
    "graph_inputs",
    "graph_outputs",
    "load_onnx",
    "to_fp16",
    "with_opset_at_least",
    "with_static_input_shape",
]

Dim = int | str | None


class ModelError(ValueError):
    """The model file is missing, unreadable or does not fit the configuration (one-line message)."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the engine cache keys on model content, not its name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file; a missing or corrupt file raises one clear `ModelError` line."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning and others for bad bytes
        raise ModelError(f"{path} is not a valid ONNX model ({type(error).__name__}: {error})") from error
    if not model.graph.node:
        raise ModelError(f"{path} is not a valid ONNX model (the graph has no nodes)")
    return model


def _dims(value_info: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return ()
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def graph_inputs(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """The inputs a caller must feed, with their declared dims (weights listed as inputs excluded)."""
    weights = {init.name for init in model.graph.initializer}
    return {vi.name: _dims(vi) for vi in model.graph.input if vi.name not in weights}


def graph_outputs(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Output names in graph order, with their declared (or inferred) dims."""
    return {vi.name: _dims(vi) for vi in model.graph.output}


def check_model_inputs(model_inputs: Mapping[str, tuple[Dim, ...]], specs: Mapping[str, Any], path: str | Path) -> None:
    """Configured input names (`specs`: name -> `InputSpec`) must be the model's, with the same rank.

    The one-line error lists the model's real inputs so the fix is obvious.
    """
    name = Path(path).name
    described = ", ".join(f"{n} [{', '.join(str(d) for d in dims)}]" for n, dims in model_inputs.items())
    if set(specs) != set(model_inputs):
        raise ModelError(f"input_shapes names {sorted(specs)} do not match the inputs of {name}: {described}")
    for input_name, spec in specs.items():
        dims = model_inputs[input_name]
        if dims and len(dims) != len(spec.shape):
            raise ModelError(
                f"input {input_name!r} of {name} has rank {len(dims)} ({described}), configured {spec.describe()}"
            )


def _set_dims(value_info: onnx.ValueInfoProto, dims: Sequence[Dim]) -> None:
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for value in dims:
        dim = shape.dim.add()
        if isinstance(value, int):
            dim.dim_value = value
        elif isinstance(value, str):
            dim.dim_param = value


def with_static_input_shape(
    model: str | Path | onnx.ModelProto, shapes: Mapping[str, Sequence[Dim]]
) -> onnx.ModelProto:
    """A copy of `model` whose inputs have the given dims; output and inner shapes are re-inferred.

    `shapes` maps input names to dims: an int fixes a dimension, a string makes it symbolic (for a
    dynamic batch). Inputs not named keep their dims. Weights that old exporters list among the
    inputs are removed from the input list (they stay initializers), which lets runtimes fold them.
    """
    source = load_onnx(model) if isinstance(model, str | Path) else model
    result = onnx.ModelProto()
    result.CopyFrom(source)
    real = graph_inputs(result)
    unknown = sorted(set(shapes) - set(real))
    if unknown:
        described = ", ".join(f"{n}{list(d)}" for n, d in real.items())
        raise ModelError(f"model has no input named {', '.join(unknown)}; its inputs are: {described}")
    weights = {init.name for init in result.graph.initializer}
    kept = [vi for vi in result.graph.input if vi.name not in weights]
    del result.graph.input[:]
    result.graph.input.extend(kept)
    for value_info in result.graph.input:
        if value_info.name in shapes:
            declared = real[value_info.name]
            wanted = list(shapes[value_info.name])
            if declared and len(declared) != len(wanted):
                raise ModelError(
                    f"input {value_info.name!r} has rank {len(declared)} {list(declared)}, "
                    f"got shape {wanted} of rank {len(wanted)}"
                )
            _set_dims(value_info, wanted)
    # Shapes recorded for the old input size are now wrong; let inference recompute them.
    del result.graph.value_info[:]
    for value_info in result.graph.output:
        value_info.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(result, strict_mode=False)
    except Exception as error:  # onnx raises InferenceError or ValidationError for inconsistent graphs
        raise ModelError(f"cannot apply input shapes {dict(shapes)}: {error}") from error


# Inputs that must stay float32 whatever the precision (the ONNX spec types them as float).
_FLOAT32_ONLY_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2), "Upsample": (1,)}


def with_opset_at_least(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`model` converted up to `opset` of the default ONNX domain when it is older (else as is).

    Old exports (UltraFace's is opset 9) use operator versions that converters written for newer
    opsets lack, e.g. Slice-1 with its bounds as attributes instead of inputs.

    Example:
        >>> m = onnx.helper.make_model(
        ...     onnx.helper.make_graph([], "g", [], []), opset_imports=[onnx.helper.make_opsetid("", 9)]
        ... )
        >>> [o.version for o in with_opset_at_least(m, 13).opset_import]
        [13]
    """
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= opset:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, opset)
    except Exception as error:  # the converter raises several types for nodes it can't adapt
        raise ModelError(f"cannot convert the model from opset {current} to {opset}: {error}") from None


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float16: weights, constants, casts, inputs and outputs.

    TensorRT 11 and TensorRT-RTX build strongly typed networks, so half precision has to be in the
    graph itself. This covers convolutional detectors (Conv, BatchNorm, activations, Resize); ops
    whose float inputs the spec requires to be float32 (Resize/Upsample scales) keep them.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    keep32: set[str] = set()
    for node in graph.node:
        for index in _FLOAT32_ONLY_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                keep32.add(node.input[index])
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), init.name))
    for node in graph.node:
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        elif node.op_type == "Constant" and not set(node.output) & keep32:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(
                        numpy_helper.from_array(numpy_helper.to_array(attr.t).astype("float16"), attr.t.name)
                    )
    for value_info in [*graph.input, *graph.output]:
        if value_info.type.tensor_type.elem_type == TensorProto.FLOAT:
            value_info.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(result, strict_mode=False)
