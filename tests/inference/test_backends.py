"""CPU backends: ONNX Runtime and torch (onnx2torch) agree, shapes are checked, batches pad and split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamflow.inference.base import CudaGraphMode, InputSpec, ModelError, Precision, ShapeError
from streamflow.inference.onnxruntime_backend import OnnxRuntimeBackend
from streamflow.inference.torch_backend import TorchBackend

FP32_TOLERANCE = 1e-4


def _specs(name: str, shape: list[int]) -> dict[str, InputSpec]:
    return {name: InputSpec.static(name, shape)}


def _dynamic(name: str, frame: list[int], lo: int, opt: int, hi: int) -> dict[str, InputSpec]:
    return {name: InputSpec.parse(name, {"min": [lo, *frame], "opt": [opt, *frame], "max": [hi, *frame]})}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_small_model_ort_and_torch_agree(small_model: Path) -> None:
    specs = _specs("images", [2, 3, 32, 48])
    with OnnxRuntimeBackend(small_model, specs) as ort_backend, TorchBackend(small_model, specs) as torch_backend:
        assert ort_backend.outputs == torch_backend.outputs == ["heat", "box"]
        x = torch.rand(2, 3, 32, 48)
        a, b = ort_backend.infer({"images": x}), torch_backend.infer({"images": x})
        assert a["heat"].shape == (2, 1, 16, 24) and a["box"].shape == (2, 4, 16, 24)
        assert a["box"].abs().max() > 0.1  # a real computation, not zeros
        assert _max_diff(a, b) <= FP32_TOLERANCE


def test_centerface_ort_and_torch_agree(centerface: Path) -> None:
    specs = _specs("input.1", [2, 3, 64, 96])
    with OnnxRuntimeBackend(centerface, specs) as ort_backend, TorchBackend(centerface, specs) as torch_backend:
        x = torch.rand(2, 3, 64, 96) * 255
        a, b = ort_backend.infer({"input.1": x}), torch_backend.infer({"input.1": x})
        assert {k: tuple(v.shape) for k, v in a.items()} == {
            "537": (2, 1, 16, 24),
            "538": (2, 2, 16, 24),
            "539": (2, 2, 16, 24),
            "540": (2, 10, 16, 24),
        }
        # Outputs reach ~10 in magnitude here: 1e-4 relative to that scale.
        scale = max(1.0, max(float(v.abs().max()) for v in a.values()))
        assert _max_diff(a, b) <= FP32_TOLERANCE * scale


def test_dynamic_batch_runs_every_size_in_range(small_model: Path) -> None:
    specs = _dynamic("images", [3, 32, 48], 1, 4, 8)
    with OnnxRuntimeBackend(small_model, specs) as ort_backend, TorchBackend(small_model, specs) as torch_backend:
        assert ort_backend.fixed_batch is None and torch_backend.fixed_batch is None
        for batch in (1, 3, 8):
            x = torch.rand(batch, 3, 32, 48)
            a, b = ort_backend.infer({"images": x}), torch_backend.infer({"images": x})
            assert a["heat"].shape[0] == batch
            assert _max_diff(a, b) <= FP32_TOLERANCE
        with pytest.raises(ShapeError, match=r"got shape 9x3x32x48, outside 1\.\.8 \(opt 4\) x 3x32x48"):
            ort_backend.infer({"images": torch.rand(9, 3, 32, 48)})


def test_run_pads_partial_batches_and_splits_large_ones(small_model: Path) -> None:
    specs = _specs("images", [4, 3, 32, 48])
    with OnnxRuntimeBackend(small_model, specs) as backend:
        assert backend.fixed_batch == 4
        x = torch.rand(10, 3, 32, 48)
        whole = backend.run({"images": x})  # 4 + 4 + 2 (padded to 4, sliced back)
        assert whole["heat"].shape == (10, 1, 16, 24)
        one_by_one = [backend.run({"images": x[i : i + 1]})["heat"] for i in range(10)]
        assert float((torch.cat(one_by_one) - whole["heat"]).abs().max()) <= 1e-6
        with pytest.raises(ShapeError, match="got shape 3x3x32x48, outside 4x3x32x48"):
            backend.infer({"images": x[:3]})


def test_wrong_names_and_shapes_are_one_line_errors(small_model: Path) -> None:
    expected = r"names \['x'\] do not match the inputs of small\.onnx: images \[2, 3, 32, 48\]"
    with pytest.raises(ModelError, match=expected):
        OnnxRuntimeBackend(small_model, _specs("x", [2, 3, 32, 48])).load()
    with pytest.raises(ModelError, match="rank 4"):
        TorchBackend(small_model, _specs("images", [2, 32, 48])).load()
    with TorchBackend(small_model, _specs("images", [2, 3, 32, 48])) as backend:
        with pytest.raises(ShapeError, match="got shape 2x3x30x48, outside 2x3x32x48"):
            backend.infer({"images": torch.rand(2, 3, 30, 48)})
        with pytest.raises(ShapeError, match=r"model inputs are \['images'\], got tensors for \['data'\]"):
            backend.infer({"data": torch.rand(2, 3, 32, 48)})


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        TorchBackend(tmp_path / "nope.onnx", _specs("images", [1, 3, 8, 8])).load()


def test_fp16_and_cuda_graph_need_a_gpu(small_model: Path) -> None:
    specs = _specs("images", [2, 3, 32, 48])
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        TorchBackend(small_model, specs, precision=Precision.FP16, device="cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        OnnxRuntimeBackend(small_model, specs, precision=Precision.FP16, device="cpu")
    with pytest.raises(ValueError, match="cuda_graph on needs a CUDA device"):
        TorchBackend(small_model, specs, cuda_graph=CudaGraphMode.ON, device="cpu")
    backend = TorchBackend(small_model, specs, cuda_graph=CudaGraphMode.AUTO, device="cpu")
    assert not backend.uses_cuda_graph  # auto on the CPU: eager, no error


def test_outputs_belong_to_the_caller(small_model: Path) -> None:
    specs = _specs("images", [2, 3, 32, 48])
    with TorchBackend(small_model, specs) as backend:
        first = backend.infer({"images": torch.zeros(2, 3, 32, 48)})["box"].clone()
        kept = backend.infer({"images": torch.zeros(2, 3, 32, 48)})["box"]
        backend.infer({"images": torch.rand(2, 3, 32, 48) * 10})
        assert torch.equal(kept, first)
        kept.mul_(2)  # ordinary tensors: downstream stages may work on them in place


def test_input_spec_validation() -> None:
    with pytest.raises(ShapeError, match="only in the batch"):
        InputSpec.parse("x", {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 16, 16]})
    with pytest.raises(ShapeError, match="min <= opt <= max"):
        InputSpec.parse("x", {"min": [4, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [8, 3, 8, 8]})
    with pytest.raises(ShapeError, match="exactly min, opt and max"):
        InputSpec.parse("x", {"min": [1, 3, 8, 8], "max": [8, 3, 8, 8]})
    with pytest.raises(ShapeError, match=">= 1"):
        InputSpec.static("x", [0, 3, 8, 8])
    spec = InputSpec.parse("x", {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [16, 3, 8, 8]})
    assert (spec.min_shape, spec.shape, spec.max_shape) == ((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))


def test_ultraface_opset9_runs_on_torch_like_onnxruntime() -> None:
    """UltraFace is an opset-9 export (Slice-1 with attribute bounds): the torch backend converts the
    graph up to a newer opset before onnx2torch, and agrees with ONNX Runtime on the original."""
    model = Path(__file__).resolve().parents[2] / "models" / "version-RFB-640.onnx"
    specs = _specs("input", [1, 3, 480, 640])
    with OnnxRuntimeBackend(model, specs) as ort_backend, TorchBackend(model, specs) as torch_backend:
        x = (torch.rand(1, 3, 480, 640) * 255 - 127) / 128
        a, b = ort_backend.infer({"input": x}), torch_backend.infer({"input": x})
        assert {k: tuple(v.shape) for k, v in a.items()} == {"scores": (1, 17640, 2), "boxes": (1, 17640, 4)}
        assert _max_diff(a, b) <= FP32_TOLERANCE
