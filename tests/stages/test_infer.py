"""The `infer` stage on the CPU: batches and single frames, padding and chunking through the real
runner, outputs equal to a direct ONNX Runtime run, clear errors for bad configs, and the stage
contract (end of stream, flush, teardown, error propagation)."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pydantic
import pytest
import torch

from stages.infer import Infer
from streamflow.frame import Batch, EndOfStream, Frame, Item, PixelFormat
from streamflow.inference.base import ModelError, ShapeError
from streamflow.pipeline import Pipeline
from streamflow.testing import ListSink, ListSource, RaiseError, run_stage

CENTERFACE = Path(__file__).resolve().parents[2] / "models" / "centerface.onnx"


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 2, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = torch.relu(self.conv1(x))
        return torch.sigmoid(self.conv2(feat)), feat.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("infer") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter says it is legacy
        torch.onnx.export(
            TinyNet().eval(),
            (torch.rand(4, 3, 16, 24),),
            str(path),
            input_names=["pixels"],
            output_names=["heat", "pooled"],
            opset_version=17,  # onnx2torch converts ReduceMean/Constant up to opset 17
            dynamo=False,
        )
    return path


def reference(model: Path, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The same model straight through ONNX Runtime (the file's own static batch of 4, one at a time)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rows: dict[str, list[np.ndarray]] = {"heat": [], "pooled": []}
    for start in range(0, x.shape[0], 4):
        chunk = x[start : start + 4].numpy()
        padded = np.concatenate([chunk, np.zeros((4 - len(chunk), *chunk.shape[1:]), np.float32)])
        heat, pooled = session.run(["heat", "pooled"], {"pixels": padded})
        rows["heat"].append(heat[: len(chunk)])
        rows["pooled"].append(pooled[: len(chunk)])
    return {k: np.concatenate(v) for k, v in rows.items()}


def frames(count: int, *, start: int = 0) -> list[Frame]:
    return [
        Frame(torch.rand(3, 16, 24), i, Fraction(1, 30), index=i, format=PixelFormat.TENSOR)
        for i in range(start, start + count)
    ]


def test_batches_get_outputs_matching_onnxruntime(model: Path) -> None:
    data = [torch.rand(n, 3, 16, 24) for n in (4, 3, 9)]  # full, partial (padded), larger (chunked)
    items = [Batch(frames(len(d)), data=d) for d in data]
    out = run_stage(Infer(model=model, backend="onnxruntime"), items)
    assert [len(b.frames) for b in out] == [4, 3, 9]
    for batch, x in zip(out, data, strict=True):
        assert isinstance(batch, Batch)
        expected = reference(model, x)
        assert batch.results["heat"].shape == (len(x), 2, 8, 12) and batch.results["pooled"].shape == (len(x), 8)
        for name in ("heat", "pooled"):
            assert np.abs(batch.results[name].numpy() - expected[name]).max() <= 1e-5


def test_torch_backend_and_dynamic_batch(model: Path) -> None:
    shapes = {"pixels": {"min": [1, 3, 16, 24], "opt": [4, 3, 16, 24], "max": [8, 3, 16, 24]}}
    x = torch.rand(5, 3, 16, 24)
    out = run_stage(Infer(model=model, backend="torch", input_shapes=shapes), [Batch(frames(5), data=x)])
    expected = reference(model, x)
    for name in ("heat", "pooled"):
        assert np.abs(out[0].results[name].numpy() - expected[name]).max() <= 1e-4


def test_single_frames_use_results_input_or_image(model: Path) -> None:
    by_result = frames(1)[0]
    by_result.results["input"] = torch.rand(3, 16, 24)
    by_image = frames(1, start=1)[0]
    out = run_stage(Infer(model=model), [by_result, by_image])
    assert [item.frames[0].index for item in out] == [0, 1]
    for frame, x in zip(out, [by_result.results["input"], by_image.image], strict=True):
        assert isinstance(frame, Frame)
        assert frame.results["heat"].shape == (1, 2, 8, 12)  # first axis = frame, a batch of one
        assert np.abs(frame.results["heat"].numpy() - reference(model, x[None])["heat"]).max() <= 1e-5


def test_runner_batching_gathers_frames_without_data(model: Path) -> None:
    sink = ListSink()
    stage = Infer(model=model, batch_size=4)
    Pipeline([ListSource(frames(10)), stage, sink], device="cpu").run_sync()
    assert [f.index for f in sink.frames] == list(range(10))
    for item in sink.items:
        stacked = torch.stack([f.image for f in item.frames])
        assert np.abs(item.results["heat"].numpy() - reference(model, stacked)["heat"]).max() <= 1e-5
    assert stage.counters["frames"] == 10


def test_centerface_stage_on_cpu() -> None:
    if not CENTERFACE.is_file():
        pytest.skip("models/centerface.onnx is not in the repository")
    x = torch.rand(2, 3, 64, 96) * 255
    out = run_stage(Infer(model=CENTERFACE, input_shapes={"input.1": [2, 3, 64, 96]}), [Batch(frames(2), data=x)])
    assert {k: tuple(v.shape) for k, v in out[0].results.items()} == {
        "537": (2, 1, 16, 24),
        "538": (2, 2, 16, 24),
        "539": (2, 2, 16, 24),
        "540": (2, 10, 16, 24),
    }


def test_config_errors_are_clear(model: Path, tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="model file not found"):
        Infer(model=tmp_path / "missing.onnx")
    with pytest.raises(pydantic.ValidationError, match="model must be one of"):
        Infer(model=model.with_suffix(".txt"))
    with pytest.raises(pydantic.ValidationError, match="only in the batch"):
        Infer(model=model, input_shapes={"pixels": {"min": [1, 3, 16, 24], "opt": [4, 3, 16, 24], "max": [8, 3, 8, 8]}})
    with pytest.raises(pydantic.ValidationError, match="precision"):
        Infer(model=model, precision="int4")
    with pytest.raises(pydantic.ValidationError, match="extra"):
        Infer(model=model, modle="x")


def test_graph_batches_are_checked_against_the_input_shapes_batch(model: Path) -> None:
    shapes = {"pixels": [8, 3, 16, 24]}
    with pytest.raises(pydantic.ValidationError, match="graph_batches needs input_shapes"):
        Infer(model=model, graph_batches=[2])
    wrong = r"graph_batches \[0, 8, 16\]: .*below the largest batch \(8\)"
    with pytest.raises(pydantic.ValidationError, match=wrong):
        Infer(model=model, input_shapes=shapes, graph_batches=[2, 0, 8, 16])
    assert Infer(model=model, input_shapes=shapes, graph_batches=[2, 4]).config.graph_batches == [2, 4]
    # The backend checks the same on its own (it is used without the stage too).
    from streamflow.inference.base import InputSpec
    from streamflow.inference.torch_backend import TorchBackend

    with pytest.raises(ValueError, match=r"graph_batches \[8\]"):
        TorchBackend(model, {"pixels": InputSpec.static("pixels", shapes["pixels"])}, graph_batches=[2, 8])


def test_graph_batches_on_the_cpu_run_eagerly_with_the_same_results(
    model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No CUDA graph on the CPU: the option changes nothing there, and says so (GPU tests check the graphs).
    x = torch.rand(5, 3, 16, 24)
    stage = Infer(model=model, backend="torch", input_shapes={"pixels": [8, 3, 16, 24]}, graph_batches=[2, 4])
    with caplog.at_level("INFO"):
        out = run_stage(stage, [Batch(frames(5), data=x)])
    assert "graph_batches unused" in caplog.text
    expected = reference(model, x)
    for name in ("heat", "pooled"):
        np.testing.assert_allclose(out[0].results[name].numpy(), expected[name], rtol=1e-4, atol=1e-5)


def test_setup_errors_are_one_line(model: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ModelError, match=r"names \['image'\] do not match the inputs of tiny\.onnx: pixels \[4, 3, 16, 24\]"
    ):
        run_stage(Infer(model=model, input_shapes={"image": [4, 3, 16, 24]}), [])
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        run_stage(Infer(model=model, precision="fp16"), [])
    with pytest.raises(ShapeError, match=r"input 'x' is not a model input; the inputs are \['pixels'\]"):
        run_stage(Infer(model=model, input="x"), [])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 20)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        run_stage(Infer(model=corrupt, input_shapes={"pixels": [4, 3, 16, 24]}), [])


def test_shape_outside_the_profile(model: Path) -> None:
    shapes = {"pixels": {"min": [1, 3, 16, 24], "opt": [2, 3, 16, 24], "max": [4, 3, 16, 24]}}
    with pytest.raises(ShapeError, match=r"got shape 2x3x16x20, outside 1\.\.4 \(opt 2\) x 3x16x24") as info:
        run_stage(
            Infer(model=model, input_shapes=shapes, backend="torch"), [Batch(frames(2), data=torch.rand(2, 3, 16, 20))]
        )
    assert getattr(info.value, "stage_name", None) == "infer"


def test_contract_flush_teardown_and_error_propagation(model: Path) -> None:
    stage = Infer(model=model)
    sink = ListSink()
    items: list[Item] = [Batch(frames(2), data=torch.rand(2, 3, 16, 24)), EndOfStream()]
    Pipeline([ListSource(items), stage, sink], device="cpu").run_sync()
    assert sink.flushed and sink.torn_down and stage.backend is None  # teardown released the backend
    stage = Infer(model=model)
    with pytest.raises(KeyError, match="boom"):
        run_stage(stage, [Batch(frames(1), data=torch.rand(1, 3, 16, 24)), RaiseError(KeyError("boom"))])
    assert stage.backend is None


@pytest.fixture(scope="module")
def any_size_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyNet with dynamic batch, height and width, as a fully convolutional model is exported."""
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("infer") / "any_size.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            TinyNet().eval(),
            (torch.rand(2, 3, 16, 24),),
            str(path),
            input_names=["pixels"],
            output_names=["heat", "pooled"],
            dynamic_axes={"pixels": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_shapes_come_from_the_stream_without_input_shapes(any_size_model: Path, backend: str) -> None:
    """Each input size gets a backend prepared for it, the least recently used beyond shape_cache closed."""
    sizes = [(16, 24), (32, 20), (16, 24), (8, 8)]
    inputs = [torch.rand(3, 3, h, w) for h, w in sizes]
    stage = Infer(model=any_size_model, backend=backend, shape_cache=2)
    items: list[Item] = [Batch(frames(3), data=x) for x in inputs]
    sink = ListSink()
    Pipeline([ListSource(items), stage, sink], device="cpu").run_sync()
    session = ort.InferenceSession(str(any_size_model), providers=["CPUExecutionProvider"])
    for batch, x, (h, w) in zip(sink.items, inputs, sizes, strict=True):
        assert isinstance(batch, Batch)
        heat = batch.results["heat"]
        assert heat.shape == (3, 2, (h + 1) // 2, (w + 1) // 2)
        expected = session.run(["heat"], {"pixels": x.numpy()})[0]
        np.testing.assert_allclose(heat.numpy(), expected, atol=1e-5)
    assert stage.per_shape is None  # teardown closed every prepared backend


def test_per_shape_backends_are_cached_and_bounded(any_size_model: Path) -> None:
    from streamflow.inference.onnx_tools import graph_inputs, load_onnx
    from streamflow.inference.onnxruntime_backend import OnnxRuntimeBackend
    from streamflow.inference.per_shape import PerShapeBackends

    built: list[OnnxRuntimeBackend] = []

    def build(specs: dict) -> OnnxRuntimeBackend:  # type: ignore[type-arg]
        backend = OnnxRuntimeBackend(any_size_model, specs)
        backend.load()
        built.append(backend)
        return backend

    cache = PerShapeBackends(graph_inputs(load_onnx(any_size_model)), build, batch=4, capacity=2)
    for h, w in [(16, 24), (16, 24), (8, 8), (16, 24), (32, 32), (8, 8)]:
        out = cache.run({"pixels": torch.rand(2, 3, h, w)})
        assert out["heat"].shape == (2, 2, h // 2, w // 2)
    # 16x24 reused; 32x32 evicted 8x8 (least recently used), which is built again at the end.
    assert cache.built == len(built) == 4 and len(cache) == 2
    assert [b.inputs["pixels"].shape for b in built] == [(4, 3, 16, 24), (4, 3, 8, 8), (4, 3, 32, 32), (4, 3, 8, 8)]
    cache.close()
    assert len(cache) == 0


def test_a_fixed_dim_of_the_model_is_checked() -> None:
    from streamflow.inference.per_shape import resolve_specs

    with pytest.raises(ShapeError, match=r"got shape 2x4x8x8, the model declares Nx3xHxW \(axis 1 must be 3\)"):
        resolve_specs({"x": ("N", 3, "H", "W")}, {"x": (2, 4, 8, 8)}, batch=2)
