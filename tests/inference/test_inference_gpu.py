"""GPU checks (marked `gpu`; skipped without CUDA): torch on CUDA against ONNX Runtime on the CPU,
fp16 within a stated tolerance, CUDA-graph replay against eager, and TensorRT where a module is
installed (TensorRT-RTX on a data-center GPU: builds, then refuses to run, with a clear error)."""

from __future__ import annotations

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

import onnx
import pytest
import torch

from streamflow.frame import Batch, Frame, PixelFormat
from streamflow.inference.base import BackendUnavailableError, CudaGraphMode, InputSpec, ModelError, Precision
from streamflow.inference.onnxruntime_backend import OnnxRuntimeBackend
from streamflow.inference.torch_backend import TorchBackend
from streamflow.testing import run_stage

pytestmark = pytest.mark.gpu

HAVE_TRT = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))
FP32_TOLERANCE = 1e-3  # relative to the largest output magnitude (CenterFace outputs reach ~10)
FP16_TOLERANCE = 3e-2  # half precision: ~3 significant digits, accumulated over ~50 layers
SHAPE = [4, 3, 96, 128]


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    # cuDNN convolutions default to TF32 on Ampere and later: fp32 comparisons need true fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _specs() -> dict[str, InputSpec]:
    return {"input.1": InputSpec.static("input.1", SHAPE)}


def _reference(centerface: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with OnnxRuntimeBackend(centerface, {"input.1": InputSpec.static("input.1", list(x.shape))}) as backend:
        return backend.infer({"input.1": x.cpu()})


def _max_rel_diff(reference: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> float:
    scale = max(1.0, max(float(v.abs().max()) for v in reference.values()))
    return max(float((reference[k] - outputs[k].float().cpu()).abs().max()) for k in reference) / scale


def test_torch_cuda_fp32_matches_onnxruntime_cpu(centerface: Path) -> None:
    x = torch.rand(SHAPE) * 255
    with TorchBackend(centerface, _specs(), device="cuda", cuda_graph=CudaGraphMode.OFF) as backend:
        out = backend.infer({"input.1": x.cuda()})
    assert all(t.is_cuda for t in out.values())
    assert _max_rel_diff(_reference(centerface, x), out) <= FP32_TOLERANCE


def test_torch_cuda_fp16_within_tolerance(centerface: Path) -> None:
    x = torch.rand(SHAPE) * 255
    with TorchBackend(centerface, _specs(), device="cuda", precision=Precision.FP16) as backend:
        out = backend.infer({"input.1": x.cuda()})
    assert all(t.dtype == torch.float16 for t in out.values())
    assert _max_rel_diff(_reference(centerface, x), out) <= FP16_TOLERANCE


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
def test_cuda_graph_replay_equals_eager(centerface: Path, precision: Precision) -> None:
    x = (torch.rand(SHAPE) * 255).cuda()
    # Same kernels either way; fp16 gets a little room in case cuDNN picks another algorithm.
    tolerance = 1e-5 if precision is Precision.FP32 else 2e-3
    with TorchBackend(centerface, _specs(), device="cuda", precision=precision, cuda_graph=CudaGraphMode.ON) as graphed:
        assert graphed.graph is not None
        with torch.no_grad():
            eager = graphed._forward({"input.1": x.to(precision.dtype)})  # the same module, run eagerly
        replayed = graphed.infer({"input.1": x})
        for name in eager:
            torch.testing.assert_close(replayed[name], eager[name], rtol=tolerance, atol=tolerance)
        # A partial batch uses the first rows of the captured batch; results match eager.
        part = graphed.infer_partial({"input.1": x[:3]})
        for name in eager:
            assert part[name].shape[0] == 3
            torch.testing.assert_close(part[name], eager[name][:3], rtol=tolerance, atol=tolerance)
    with TorchBackend(centerface, _specs(), device="cuda", precision=precision, cuda_graph=CudaGraphMode.OFF) as plain:
        assert plain.graph is None
        other = plain.infer({"input.1": x})
        for name in eager:
            torch.testing.assert_close(other[name], eager[name], rtol=tolerance, atol=tolerance)


def test_cuda_graph_outputs_survive_the_next_replay_on_a_side_stream(centerface: Path) -> None:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with TorchBackend(centerface, _specs(), device="cuda", cuda_graph=CudaGraphMode.ON) as backend:
            x1 = (torch.rand(SHAPE) * 255).cuda()
            first = backend.infer({"input.1": x1})
            snapshot = {k: v.clone() for k, v in first.items()}
            backend.infer({"input.1": (torch.rand(SHAPE) * 255).cuda()})
        stream.synchronize()
    for name, value in first.items():
        assert torch.equal(value, snapshot[name])
    assert _max_rel_diff(_reference(centerface, x1.cpu()), first) <= FP32_TOLERANCE


def test_graph_batches_replay_the_smallest_graph_that_holds_the_batch(centerface: Path) -> None:
    x = (torch.rand(SHAPE) * 255).cuda()
    graphed = TorchBackend(centerface, _specs(), device="cuda", cuda_graph=CudaGraphMode.ON, graph_batches=[1, 2])
    with graphed as backend:
        assert "CUDA graphs at batch 1, 2, 4" in backend.description
        with torch.no_grad():
            eager = backend._forward({"input.1": x})  # the same module, run eagerly
        for count, graph in ((1, 1), (2, 2), (3, 4), (4, 4), (2, 2), (1, 1)):  # in and out of order
            out = backend.infer_partial({"input.1": x[:count]})
            assert backend.last_graph_batch == graph
            for name in eager:
                assert out[name].shape[0] == count
                torch.testing.assert_close(out[name], eager[name][:count], rtol=1e-5, atol=1e-5)
        # Outputs handed out earlier are copies: a later replay of another graph (sharing the
        # scratch pool) does not change them.
        first = backend.infer_partial({"input.1": x[:2]})
        kept = {k: v.clone() for k, v in first.items()}
        backend.infer_partial({"input.1": torch.zeros_like(x)})
        backend.infer_partial({"input.1": torch.zeros_like(x[:1])})
        torch.cuda.synchronize()
        for name, value in first.items():
            assert torch.equal(value, kept[name])


def test_graph_batches_refuse_a_model_that_fixes_its_batch(tmp_path: Path) -> None:
    # Reshape to a constant [4, -1]: at batch 2 the graph still gives 4 rows (wrong data, silently,
    # if it were let through).
    x_info = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3, 8, 8])
    y_info = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 192])
    shape = onnx.helper.make_tensor("shape", onnx.TensorProto.INT64, [2], [4, -1])
    node = onnx.helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = onnx.helper.make_graph([node], "fixed", [x_info], [y_info], initializer=[shape])
    model = tmp_path / "fixed_batch.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8), model)
    specs = {"x": InputSpec.static("x", [4, 3, 8, 8])}
    with pytest.raises(ModelError, match="graph_batches needs outputs whose first axis is the batch"):
        TorchBackend(model, specs, device="cuda", cuda_graph=CudaGraphMode.ON, graph_batches=[2]).load()


def test_infer_stage_on_cuda_pads_partial_batches(centerface: Path) -> None:
    from stages.infer import Infer

    frames = [Frame(torch.zeros(3, 96, 128), i, Fraction(1, 30), index=i, format=PixelFormat.TENSOR) for i in range(3)]
    x = torch.rand(3, 3, 96, 128) * 255
    stage = Infer(model=centerface, input_shapes={"input.1": SHAPE}, backend="torch", cuda_graph="on")
    out = run_stage(stage, [Batch(frames, data=x.cuda())], device="cuda")
    assert len(out) == 1 and out[0].results["537"].shape == (3, 1, 24, 32)
    assert _max_rel_diff(_reference(centerface, x), out[0].results) <= FP32_TOLERANCE


@pytest.mark.skipif(not HAVE_TRT, reason="neither tensorrt nor tensorrt_rtx is installed")
def test_tensorrt_builds_and_runs_or_says_why(centerface: Path, tmp_path: Path) -> None:
    from streamflow.inference.onnx_tools import file_sha256, with_static_input_shape
    from streamflow.inference.tensorrt_backend import (
        TensorRTBackend,
        build_serialized_engine,
        engine_key,
        gpu_support,
        import_tensorrt,
    )

    trt = import_tensorrt()
    specs = {
        "input.1": InputSpec.parse("input.1", {"min": [1, 3, 96, 128], "opt": [4, 3, 96, 128], "max": [8, 3, 96, 128]})
    }
    backend = TensorRTBackend(centerface, specs, device="cuda", engine_cache=tmp_path)
    problem = gpu_support(trt, torch.device("cuda"))
    if problem is not None:
        # e.g. TensorRT-RTX on an H100: it parses and builds, then refuses to deserialize.
        with pytest.raises(BackendUnavailableError, match="built an engine but cannot run it on") as info:
            backend.load()
        assert "compute capability" in str(info.value)
        assert not list(tmp_path.glob("*.engine"))  # an engine that cannot run is not cached
        # Parsing and building work on their own; the key names this module, GPU and shapes.
        shaped = with_static_input_shape(centerface, {"input.1": ["batch", 3, 96, 128]})
        assert len(build_serialized_engine(trt, shaped, specs, Precision.FP32)) > 10_000
        major, minor = torch.cuda.get_device_capability()
        key = engine_key(
            file_sha256(centerface),
            trt,
            specs,
            Precision.FP32,
            gpu_name=torch.cuda.get_device_name(),
            compute_capability=(major, minor),
        ).as_dict()
        assert (key["trt_module"], key["compute_capability"]) == (trt.__name__, f"{major}.{minor}")
        assert key["inputs"][0]["max"] == [8, 3, 96, 128]
        return
    backend.load()
    x = torch.rand(3, 3, 96, 128) * 255
    out = backend.infer({"input.1": x.cuda()})
    assert _max_rel_diff(_reference(centerface, x), out) <= FP32_TOLERANCE * 10  # TensorRT may pick TF32 tactics
    assert backend.engine_path is not None and backend.engine_path.is_file()
    key = json.loads(backend.engine_path.with_suffix(".json").read_text())
    assert key["trt_module"] == trt.__name__ and key["gpu_name"] == torch.cuda.get_device_name()
    backend.close()
    again = TensorRTBackend(centerface, specs, device="cuda", engine_cache=tmp_path)
    again.load()  # from the cache this time
    assert again.engine_path == backend.engine_path
    again.close()


def test_graph_capture_failure_runs_eagerly_under_auto_and_fails_under_on(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # NonZero's output size depends on the data: torch must read it back to the host, which CUDA
    # graph capture forbids, so this model can only run eagerly.
    x_info = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])
    y_info = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [2, "n"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("NonZero", ["x"], ["y"])], "nz", [x_info], [y_info])
    model = tmp_path / "nonzero.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8), model)
    specs = {"x": InputSpec.static("x", [2, 8])}
    x = torch.zeros(2, 8, device="cuda")
    x[0, 3] = x[1, 5] = 1.0
    with TorchBackend(model, specs, device="cpu") as on_cpu:
        expected = on_cpu.infer({"x": x.cpu()})["y"]
    with TorchBackend(model, specs, device="cuda", cuda_graph=CudaGraphMode.AUTO) as backend:
        assert backend.graph is None
        assert "CUDA graph capture failed" in caplog.text
        assert torch.equal(backend.infer({"x": x})["y"].cpu(), expected)
    with pytest.raises(ModelError, match="cannot capture"):
        TorchBackend(model, specs, device="cuda", cuda_graph=CudaGraphMode.ON).load()
