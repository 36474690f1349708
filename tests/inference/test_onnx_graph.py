"""The native ONNX -> torch converter (streamflow.inference.onnx_graph) against ONNX Runtime.

Every operator is checked on a graph built here, with the attribute values that change its meaning
(opset-dependent semantics, asymmetric pads, negative steps...), and the shipped models end to end.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from streamflow.inference.base import InputSpec, ModelError, TorchConverter
from streamflow.inference.onnx_graph import GraphError, OnnxGraphModule, unsupported_operators
from streamflow.inference.onnx_tools import with_static_input_shape
from streamflow.inference.torch_backend import TorchBackend

ROOT = Path(__file__).resolve().parents[2]
ort.set_default_logger_severity(3)  # old exports list unused initializers; ORT warns about each


def _model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple[int, ...]],
    outputs: list[str],
    *,
    opset: int = 17,
    initializers: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
        initializer=[numpy_helper.from_array(v, n) for n, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # The outputs' types, which ONNX Runtime wants declared, from ONNX's own shape inference.
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    del model.graph.output[:]
    model.graph.output.extend(known[n] for n in outputs)
    return model


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tolerance: float = 1e-5) -> list[np.ndarray]:
    """Run `model` in ONNX Runtime and as an OnnxGraphModule; outputs must agree within `tolerance`."""
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    module = OnnxGraphModule(model).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(v) for v in feeds.values()])
    got_list = [got] if isinstance(got, torch.Tensor) else list(got)
    assert len(got_list) == len(expected)
    for want, have in zip(expected, got_list, strict=True):
        assert tuple(have.shape) == want.shape
        scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
        np.testing.assert_allclose(have.numpy(), want, atol=tolerance * scale, rtol=0)
    return expected


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _i64(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


@pytest.mark.parametrize(
    "path, shapes",
    [
        ("models/centerface.onnx", {"input.1": (2, 3, 96, 128)}),
        ("models/version-RFB-640.onnx", {"input": (2, 3, 480, 640)}),
        ("models/vsr_x2.onnx", {"frames": (2, 15, 36, 44)}),
        ("models/vsr_x2_7in3out_nhwc.onnx", {"input:0": (1, 36, 44, 21)}),
    ],
)
def test_shipped_models_match_onnx_runtime(path: str, shapes: dict[str, tuple[int, ...]]) -> None:
    model = onnx.load(ROOT / path)
    assert unsupported_operators(model) == []
    model = with_static_input_shape(model, {n: list(s) for n, s in shapes.items()})
    rng = np.random.default_rng(1)
    _compare(model, {n: rng.random(s, dtype=np.float32) for n, s in shapes.items()}, tolerance=1e-4)


@pytest.mark.parametrize(
    "attrs, scales, sizes",
    [
        ({"mode": "cubic", "coordinate_transformation_mode": "half_pixel", "cubic_coeff_a": -0.75}, [1, 1, 2, 2], None),
        ({"mode": "cubic", "coordinate_transformation_mode": "pytorch_half_pixel"}, [1, 1, 1.5, 2.5], None),
        ({"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, [1, 1, 0.5, 3], None),
        ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, None, [2, 3, 11, 7]),
        (
            {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
            [1, 1, 2, 3],
            None,
        ),
        (
            {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"},
            None,
            [2, 3, 13, 17],
        ),
    ],
)
def test_resize_modes(attrs: dict[str, object], scales: list[float] | None, sizes: list[int] | None) -> None:
    inits = {"roi": np.zeros(0, np.float32)}
    inputs = ["x", "roi"]
    if scales is not None:
        inits["scales"] = np.asarray(scales, np.float32)
        inputs.append("scales")
    else:
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.asarray(sizes, np.int64)
        inputs += ["scales", "sizes"]
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    _compare(_model([node], {"x": (2, 3, 6, 5)}, ["y"], initializers=inits), {"x": _rand(2, 3, 6, 5)}, 1e-4)


def test_upsample_of_opset_9() -> None:
    node = helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")
    model = _model(
        [node], {"x": (1, 2, 3, 4)}, ["y"], opset=9, initializers={"scales": np.asarray([1, 1, 2, 2], np.float32)}
    )
    _compare(model, {"x": _rand(1, 2, 3, 4)})


def test_an_unimplemented_resize_is_refused_when_built() -> None:
    node = helper.make_node(
        "Resize", ["x", "", "scales"], ["y"], mode="linear", coordinate_transformation_mode="asymmetric"
    )
    model = _model([node], {"x": (1, 1, 4, 4)}, ["y"], initializers={"scales": np.asarray([1, 1, 2, 2], np.float32)})
    with pytest.raises(GraphError, match="asymmetric"):
        OnnxGraphModule(model)


def test_slice_with_negative_steps_and_clamped_ends() -> None:
    inits = {"starts": _i64(-1, 1), "ends": _i64(-(2**62), 2**62), "axes": _i64(2, 3), "steps": _i64(-2, 3)}
    node = helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])
    _compare(_model([node], {"x": (1, 2, 7, 9)}, ["y"], initializers=inits), {"x": _rand(1, 2, 7, 9)})


def test_slice_of_opset_9_takes_attributes() -> None:
    node = helper.make_node("Slice", ["x"], ["y"], starts=[0, 1], ends=[2, -1], axes=[2, 3])
    _compare(_model([node], {"x": (1, 2, 5, 6)}, ["y"], opset=9), {"x": _rand(1, 2, 5, 6)})


def test_reshape_from_shape_arithmetic_stays_on_the_host() -> None:
    # UltraFace's pattern: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, with a 0 and a -1.
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one", "four"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("Div", ["shape", "two"], ["halves"]),  # integer division on the host
        helper.make_node("Cast", ["halves"], ["z"], to=TensorProto.FLOAT),
    ]
    inits = {"zero": np.asarray(0, np.int64), "axes": _i64(0), "minus_one": _i64(-1), "four": _i64(4), "two": _i64(2)}
    _compare(_model(nodes, {"x": (3, 8, 5, 2)}, ["y", "z"], initializers=inits), {"x": _rand(3, 8, 5, 2)})


def test_reshape_zero_copies_the_input_dim() -> None:
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    model = _model([node], {"x": (2, 3, 4)}, ["y"], initializers={"shape": _i64(0, -1)})
    _compare(model, {"x": _rand(2, 3, 4)})


@pytest.mark.parametrize("indices", [np.asarray(1, np.int64), _i64(2, 0, -1)])
def test_gather_on_a_tensor(indices: np.ndarray) -> None:
    node = helper.make_node("Gather", ["x", "i"], ["y"], axis=1)
    _compare(_model([node], {"x": (2, 4, 3)}, ["y"], initializers={"i": indices}), {"x": _rand(2, 4, 3)})


@pytest.mark.parametrize("opset, axis", [(11, 1), (11, -1), (13, 1)])
def test_softmax_semantics_by_opset(opset: int, axis: int) -> None:
    # Before opset 13 the input is coerced to 2-D at `axis`; from 13 it is one axis.
    nodes = [
        helper.make_node("Softmax", ["x"], ["y"], axis=axis),
        helper.make_node("LogSoftmax", ["x"], ["z"], axis=axis),
    ]
    _compare(_model(nodes, {"x": (2, 3, 4)}, ["y", "z"], opset=opset), {"x": _rand(2, 3, 4)})


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode: str) -> None:
    node = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)
    _compare(_model([node], {"x": (2, 12, 3, 5)}, ["y"]), {"x": _rand(2, 12, 3, 5)})


def test_convolutions_with_groups_dilation_and_asymmetric_pads() -> None:
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w", "b"],
            ["c"],
            group=2,
            dilations=[2, 1],
            strides=[1, 2],
            pads=[1, 0, 2, 1],
            kernel_shape=[3, 3],
        ),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt", "bt"], ["u"], strides=[2, 2], pads=[1, 1, 1, 1], group=2),
    ]
    inits = {
        "w": _rand(6, 2, 3, 3, seed=1),
        "b": _rand(6, seed=2),
        "wt": _rand(6, 2, 3, 3, seed=3),
        "bt": _rand(4, seed=4),
    }
    _compare(_model(nodes, {"x": (1, 4, 9, 10)}, ["c", "t", "u"], initializers=inits), {"x": _rand(1, 4, 9, 10)}, 1e-4)


def test_batch_norm_pools_and_activations() -> None:
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"], epsilon=1e-3),
        helper.make_node("LeakyRelu", ["bn"], ["lr"], alpha=0.1),
        helper.make_node(
            "MaxPool", ["lr"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1
        ),
        helper.make_node("AveragePool", ["lr"], ["ap"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gap"]),
        helper.make_node("HardSigmoid", ["ap"], ["hs"]),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["clip"]),
        helper.make_node("Sigmoid", ["bn"], ["sig"]),
        helper.make_node("Tanh", ["bn"], ["tanh"]),
    ]
    inits = {
        "s": _rand(3, seed=1),
        "b": _rand(3, seed=2),
        "m": _rand(3, seed=3),
        "v": np.abs(_rand(3, seed=4)) + 0.5,
        "lo": np.asarray(-0.5, np.float32),
        "hi": np.asarray(0.7, np.float32),
    }
    outputs = ["mp", "ap", "gap", "hs", "clip", "sig", "tanh"]
    _compare(_model(nodes, {"x": (2, 3, 7, 8)}, outputs, initializers=inits), {"x": _rand(2, 3, 7, 8)})


def test_dense_layers_and_layout() -> None:
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w", "c"], ["g"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("MatMul", ["g", "m"], ["mm"]),
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Unsqueeze", ["mm", "axes"], ["u"]),
        helper.make_node("Squeeze", ["u", "axes"], ["s"]),
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
        helper.make_node("Pad", ["x", "pads"], ["e"], mode="edge"),
        helper.make_node("Pad", ["x", "pads", "fill"], ["k"], mode="constant"),
    ]
    inits = {
        "w": _rand(5, 24, seed=1),
        "c": _rand(5, seed=2),
        "m": _rand(5, 3, seed=3),
        "axes": _i64(1),
        "pads": _i64(0, 0, 1, 2, 0, 0, 2, 1),
        "fill": np.asarray(0.25, np.float32),
    }
    outputs = ["s", "t", "p", "e", "k"]
    _compare(_model(nodes, {"x": (2, 2, 3, 4)}, outputs, initializers=inits), {"x": _rand(2, 2, 3, 4)}, 1e-4)


def test_unsupported_operators_are_named() -> None:
    nodes = [helper.make_node("NonMaxSuppression", ["x", "x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])]
    model = _model(nodes, {"x": (1, 2, 4)}, ["y", "z"])
    assert unsupported_operators(model) == ["NonMaxSuppression"]
    with pytest.raises(GraphError, match="NonMaxSuppression"):
        OnnxGraphModule(model)


def _export_with_an_operator_native_lacks(path: Path) -> None:
    # Erf (inside GELU) is not among the native operators; onnx2torch converts it.
    nodes = [helper.make_node("Erf", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_backend_auto_uses_onnx2torch_for_an_operator_native_lacks_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "erf.onnx"
    _export_with_an_operator_native_lacks(path)
    spec = {"x": InputSpec.static("x", [2, 4])}
    with caplog.at_level(logging.INFO, logger="streamflow.inference.torch_backend"):
        backend = TorchBackend(path, spec)
        backend.load()
    assert backend.converter_used is TorchConverter.ONNX2TORCH
    assert "(onnx2torch)" in backend.description
    assert any("converting with onnx2torch: it uses Erf" in r.getMessage() for r in caplog.records)
    x = torch.linspace(-2, 2, 8).reshape(2, 4)
    torch.testing.assert_close(backend.infer({"x": x})["y"], torch.erf(x))

    with pytest.raises(ModelError, match="converter native does not implement Erf"):
        TorchBackend(path, spec, converter=TorchConverter.NATIVE).load()


def test_backend_native_and_onnx2torch_agree_on_centerface() -> None:
    spec = {"input.1": InputSpec.static("input.1", [2, 3, 64, 96])}
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    results = {}
    for converter in (TorchConverter.NATIVE, TorchConverter.ONNX2TORCH):
        backend = TorchBackend(ROOT / "models/centerface.onnx", spec, converter=converter)
        backend.load()
        assert backend.converter_used is converter
        results[converter] = backend.infer({"input.1": x})
    for name, tensor in results[TorchConverter.NATIVE].items():
        torch.testing.assert_close(tensor, results[TorchConverter.ONNX2TORCH][name], atol=1e-4, rtol=1e-4)


def test_native_conversion_imports_neither_onnx2torch_nor_torchvision() -> None:
    # The point of the native converter: a model stage's set-up without those imports.
    code = (
        "import sys\n"
        "from streamflow.inference.base import InputSpec\n"
        "from streamflow.inference.torch_backend import TorchBackend\n"
        "b = TorchBackend('models/centerface.onnx', {'input.1': InputSpec.static('input.1', [1, 3, 32, 32])})\n"
        "b.load()\n"
        "heavy = [m for m in ('onnx2torch', 'torchvision', 'torch._dynamo') if m in sys.modules]\n"
        "print(b.converter_used, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "native []"


def test_a_float_scale_on_a_shape_stays_on_the_host() -> None:
    # Exports that size an upsampling from the input's shape: floor(H * 2.0) -> Resize sizes. The float
    # constant must combine with the shape on the host (a device value cannot be a size), while the same
    # kind of constant next to a tensor stays a device buffer.
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "two_axes"], ["hw"], axis=0),
        helper.make_node("Cast", ["hw"], ["hw_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["hw_f", "scale"], ["scaled"]),
        helper.make_node("Floor", ["scaled"], ["floored"]),
        helper.make_node("Cast", ["floored"], ["hw_out"], to=TensorProto.INT64),
        helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw_out"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["up"], mode="linear"),
        helper.make_node("Mul", ["up", "scale"], ["y"]),  # the same constant with a tensor: on the device
    ]
    inits = {
        "two_axes": _i64(2, 3),
        "scale": np.asarray(1.5, np.float32),
        "zero": _i64(0),
        "two": _i64(2),
    }
    _compare(_model(nodes, {"x": (1, 2, 6, 10)}, ["y"], initializers=inits), {"x": _rand(1, 2, 6, 10)}, 1e-4)


def test_backend_auto_hands_an_attribute_native_lacks_to_onnx2torch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every operator is native, but not this Resize's coordinate mode: auto converts with onnx2torch.
    node = helper.make_node(
        "Resize", ["x", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="align_corners"
    )
    model = _model([node], {"x": (1, 1, 4, 4)}, ["y"], initializers={"scales": np.asarray([1, 1, 2, 2], np.float32)})
    path = tmp_path / "resize.onnx"
    onnx.save(model, path)
    x = _rand(1, 1, 4, 4)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    with caplog.at_level(logging.INFO, logger="streamflow.inference.torch_backend"):
        backend = TorchBackend(path, {"x": InputSpec.static("x", [1, 1, 4, 4])})
        backend.load()
    assert backend.converter_used is TorchConverter.ONNX2TORCH and "(onnx2torch)" in backend.description
    assert any("converting with onnx2torch: Resize nearest" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(backend.infer({"x": torch.from_numpy(x)})["y"].numpy(), expected, atol=1e-6)
