"""freeze_constant_arguments: onnx2torch's Resize/Slice with constant parameters become static modules
that compute exactly what the onnx2torch modules compute (and what ONNX Runtime computes, where
onnx2torch agrees with it); Resize/Slice with computed parameters stay as they were."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx2torch import convert
from torch import fx

from streamflow.inference.base import CudaGraphMode, InputSpec, Precision
from streamflow.inference.static_ops import StaticResize, StaticSlice, freeze_constant_arguments
from streamflow.inference.torch_backend import TorchBackend

VSR = Path(__file__).resolve().parents[2] / "models" / "vsr_x2.onnx"
INT64_MAX = 2**63 - 1
X_SHAPE = (2, 3, 7, 9)
ORT_TOLERANCE = 1e-5


def _const(name: str, values: Sequence[float] | Sequence[int], dtype: type) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, dtype), name))


def _floats(name: str, values: Sequence[float]) -> onnx.NodeProto:
    return _const(name, values, np.float32)


def _ints(name: str, values: Sequence[int]) -> onnx.NodeProto:
    return _const(name, values, np.int64)


def _model(
    nodes: list[onnx.NodeProto],
    x_shape: Sequence[int] = X_SHAPE,
    extra_inputs: Sequence[onnx.ValueInfoProto] = (),
    opset: int = 13,
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"y{i}" for i in range(len(x_shape))])
    graph = helper.make_graph(nodes, "t", [x, *extra_inputs], [y])
    # IR 8: what this ONNX Runtime reads; helper's default follows the (newer) onnx package.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _convert(model: onnx.ModelProto) -> fx.GraphModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx2torch warns about nearest/cubic modes it only approximates
        return convert(model)


def _run(module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        # onnx2torch's Slice indexes with a list of slices, which torch warns is deprecated.
        warnings.simplefilter("ignore", UserWarning)
        return module(*(torch.from_numpy(v) for v in feeds.values()))


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> torch.Tensor:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, feeds)[0])


def _module_types(module: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules()}


def _frozen_and_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(frozen output, onnx2torch output); asserts that exactly the one Resize/Slice was frozen."""
    reference, frozen = _convert(model), _convert(model)
    assert freeze_constant_arguments(frozen) == 1
    assert not _module_types(frozen) & {"OnnxResize", "OnnxResizeV10", "OnnxSlice", "OnnxConstant"}
    assert _module_types(frozen) & {"StaticResize", "StaticSlice"}
    return _run(frozen, feeds), _run(reference, feeds)


def _x(shape: Sequence[int] = X_SHAPE) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def test_vsr_model_freezes_its_slice_and_resize_and_computes_the_same() -> None:
    model = onnx.load(VSR)
    reference, frozen = _convert(model), _convert(model)
    assert freeze_constant_arguments(frozen) == 2
    types = _module_types(frozen)
    assert not types & {"OnnxResize", "OnnxResizeV10", "OnnxSlice", "OnnxConstant"}
    assert {"StaticResize", "StaticSlice"} <= types
    feeds = {"frames": np.random.default_rng(0).random((1, 15, 36, 64), np.float32)}
    expected, got = _run(reference, feeds), _run(frozen, feeds)
    assert got.shape == (1, 3, 72, 128)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def _with_constant_inputs(op: str, constants: Sequence[onnx.NodeProto | None], **attrs: str) -> onnx.ModelProto:
    """`op` on `x`, its later inputs fed by Constant nodes in order (None: the input left empty); trailing
    empty inputs are dropped, as exporters write them."""
    inputs = ["x", *(node.output[0] if node is not None else "" for node in constants)]
    while inputs[-1] == "":
        inputs.pop()
    nodes = [node for node in constants if node is not None]
    return _model([*nodes, helper.make_node(op, inputs, ["y"], **attrs)])


def _resize(mode: str, *, scales: Sequence[float] = (), sizes: Sequence[int] = (), **attrs: str) -> onnx.ModelProto:
    constants = [None, _floats("scales", scales) if scales else None, _ints("sizes", sizes) if sizes else None]
    return _with_constant_inputs("Resize", constants, mode=mode, **attrs)


# (model, does onnx2torch agree with ONNX Runtime on it)
RESIZE_CASES = {
    "sizes-linear": (_resize("linear", sizes=[2, 3, 12, 20]), True),
    "sizes-linear-down": (_resize("linear", sizes=[2, 3, 4, 5]), True),
    "sizes-nearest": (
        _resize("nearest", sizes=[2, 3, 14, 27], coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        True,
    ),
    "scales-linear": (_resize("linear", scales=[1, 1, 2, 1.5]), True),
    "scales-linear-align-corners": (
        _resize("linear", scales=[1, 1, 2, 3], coordinate_transformation_mode="align_corners"),
        True,
    ),
    "scales-nearest": (
        _resize("nearest", scales=[1, 1, 2, 3], coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        True,
    ),
    # onnx2torch maps nearest to torch's floor/asymmetric whatever the attributes say (and warns):
    # ONNX Runtime, honouring half_pixel + round_prefer_floor, picks other pixels here.
    "scales-nearest-half-pixel": (_resize("nearest", scales=[1, 1, 0.6, 2.5]), False),
    "scales-cubic": (_resize("cubic", scales=[1, 1, 2, 2]), True),
    "scales-cubic-pytorch-half-pixel": (
        _resize("cubic", scales=[1, 1, 3, 2], coordinate_transformation_mode="pytorch_half_pixel"),
        True,
    ),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_resize_with_constant_sizes_or_scales(case: str) -> None:
    model, agrees_with_ort = RESIZE_CASES[case]
    feeds = _x()
    got, expected = _frozen_and_reference(model, feeds)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    if agrees_with_ort:
        torch.testing.assert_close(got, _ort(model, feeds), rtol=ORT_TOLERANCE, atol=ORT_TOLERANCE)


def test_resize_with_empty_roi_and_scales_constants_uses_the_sizes() -> None:
    # Older exporters pass empty tensors instead of leaving inputs out: "not given", not "scale by nothing".
    nodes = [
        _floats("roi", []),
        _floats("scales", []),
        _ints("sizes", [2, 3, 10, 12]),
        helper.make_node("Resize", ["x", "roi", "scales", "sizes"], ["y"], mode="linear"),
    ]
    model, feeds = _model(nodes), _x()
    got, expected = _frozen_and_reference(model, feeds)
    assert got.shape == (2, 3, 10, 12)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got, _ort(model, feeds), rtol=ORT_TOLERANCE, atol=ORT_TOLERANCE)


def test_resize_v10_and_one_spatial_dim() -> None:
    v10 = _model([_floats("s", [1, 1, 2, 3]), helper.make_node("Resize", ["x", "s"], ["y"], mode="nearest")], opset=10)
    got, expected = _frozen_and_reference(v10, _x())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got.shape == (2, 3, 14, 27)
    one_d = _model(
        [_floats("s", [1, 1, 2.5]), helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear")], (2, 3, 9)
    )
    feeds = _x((2, 3, 9))
    got, expected = _frozen_and_reference(one_d, feeds)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got, _ort(one_d, feeds), rtol=ORT_TOLERANCE, atol=ORT_TOLERANCE)


def _slice(
    starts: Sequence[int], ends: Sequence[int], axes: Sequence[int] = (), steps: Sequence[int] = ()
) -> onnx.ModelProto:
    optional = [_ints("axes", axes) if axes else None, _ints("steps", steps) if steps else None]
    return _with_constant_inputs("Slice", [_ints("starts", starts), _ints("ends", ends), *optional])


SLICE_CASES = {
    "positive-axes": _slice([1, 2], [3, 8], axes=[1, 3], steps=[1, 2]),
    "negative-axes": _slice([-5, 1], [-1, 3], axes=[-1, -2]),
    "mixed-axes": _slice([1, -6], [3, INT64_MAX], axes=[1, -1], steps=[1, 2]),
    "negative-steps": _slice([-1, 7, 5], [-INT64_MAX, 1, -100], axes=[2, 3, 1], steps=[-1, -3, -1]),
    "negative-step-negative-axis": _slice([-2], [0], axes=[-1], steps=[-2]),
    "omitted-axes-and-steps": _slice([1, 0], [2, 2]),
    "omitted-axes-with-steps": _slice([0, 1, 6], [2, 3, 0], steps=[1, 1, -2]),
    "omitted-steps": _slice([2], [5], axes=[-2]),
}


@pytest.mark.parametrize("case", list(SLICE_CASES))
def test_slice_with_constant_parameters(case: str) -> None:
    model, feeds = SLICE_CASES[case], _x()
    got, expected = _frozen_and_reference(model, feeds)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got, _ort(model, feeds), rtol=0, atol=0)


def test_resize_with_scales_in_an_initializer_is_frozen_too() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X_SHAPE))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 1.5], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="linear")
    graph = helper.make_graph([node], "t", [x], [y], initializer=[roi, scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    feeds = _x()
    reference = _run(_convert(model), feeds)
    module = _convert(model)
    assert freeze_constant_arguments(module) == 1
    assert "OnnxResize" not in _module_types(module)
    frozen = _run(module, feeds)
    assert torch.equal(frozen, reference)
    assert torch.allclose(frozen, _ort(model, feeds), atol=ORT_TOLERANCE)


def test_resize_with_scales_from_a_graph_input_stays_and_works() -> None:
    scales = helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4])
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")], extra_inputs=[scales])
    module = _convert(model)
    assert freeze_constant_arguments(module) == 0
    assert "OnnxResize" in _module_types(module) and "StaticResize" not in _module_types(module)
    feeds = {**_x(), "scales": np.array([1, 1, 2, 1.5], np.float32)}
    got = _run(module, feeds)
    assert got.shape == (2, 3, 14, 13)
    torch.testing.assert_close(got, _ort(model, feeds), rtol=ORT_TOLERANCE, atol=ORT_TOLERANCE)


def test_resize_that_onnx2torch_cannot_run_stays_and_keeps_its_error() -> None:
    # Scaling the channels: onnx2torch raises on every call; the node is left to raise its own error.
    model = _resize("linear", scales=[1, 2, 2, 2])
    module = _convert(model)
    assert freeze_constant_arguments(module) == 0
    with pytest.raises(NotImplementedError, match="channel or batch"):
        _run(module, _x())


def test_frozen_resize_checks_batch_and_channels_like_onnx2torch() -> None:
    # sizes name the batch and channels too: a different input batch fails the same way, per call.
    frozen = _convert(_resize("linear", sizes=[2, 3, 12, 20]))
    freeze_constant_arguments(frozen)
    with pytest.raises(NotImplementedError, match="channel or batch"):
        _run(frozen, _x((1, 3, 7, 9)))
    assert isinstance(frozen.get_submodule("Resize"), StaticResize)


def test_static_slice_holds_python_values() -> None:
    frozen = _convert(SLICE_CASES["mixed-axes"])
    freeze_constant_arguments(frozen)
    (static,) = (m for m in frozen.modules() if isinstance(m, StaticSlice))
    assert static.positive == (slice(None, None), slice(1, 3, 1))
    assert static.negative == (Ellipsis, slice(-6, INT64_MAX, 2))
    assert static.flip_dims == [] and not list(static.buffers())


@pytest.mark.gpu
def test_vsr_cuda_graph_fp16_replays_without_host_syncs() -> None:
    specs = {"frames": InputSpec.static("frames", [2, 15, 64, 96])}
    x = torch.rand(2, 15, 64, 96, device="cuda")
    with TorchBackend(VSR, specs, device="cuda", precision=Precision.FP16, cuda_graph=CudaGraphMode.ON) as backend:
        assert backend.graph is not None
        with torch.no_grad():
            eager = backend._forward({"frames": x.half()})["hr"]  # the same module, run eagerly
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            replayed = backend.infer({"frames": x})["hr"]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.testing.assert_close(replayed, eager, rtol=2e-3, atol=2e-3)
    # The check has teeth: onnx2torch's own Resize/Slice read their parameters back from the GPU.
    unfrozen = _convert(onnx.load(VSR)).cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"), torch.no_grad():
            unfrozen(x[:1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
