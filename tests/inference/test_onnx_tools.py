"""ONNX graph edits: loading errors, real inputs, input reshaping, fp16 conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from streamflow.inference.onnx_tools import (
    ModelError,
    file_sha256,
    graph_inputs,
    graph_outputs,
    load_onnx,
    to_fp16,
    with_static_input_shape,
)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_missing_and_corrupt_files_raise_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        load_onnx(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX model") as info:
        load_onnx(bad)
    assert "\n" not in str(info.value)


def test_centerface_real_inputs_exclude_weights(centerface: Path) -> None:
    model = load_onnx(centerface)
    assert len(model.graph.input) > 100  # the shipped file lists its weights as inputs
    assert graph_inputs(model) == {"input.1": (10, 3, 32, 32)}
    assert list(graph_outputs(model)) == ["537", "538", "539", "540"]


def test_with_static_input_shape_reinfers_outputs(centerface: Path) -> None:
    model = with_static_input_shape(centerface, {"input.1": [2, 3, 96, 128]})
    assert graph_inputs(model) == {"input.1": (2, 3, 96, 128)}
    assert [vi.name for vi in model.graph.input] == ["input.1"]
    assert graph_outputs(model) == {
        "537": (2, 1, 24, 32),
        "538": (2, 2, 24, 32),
        "539": (2, 2, 24, 32),
        "540": (2, 10, 24, 32),
    }
    results = _session(model).run(None, {"input.1": np.zeros((2, 3, 96, 128), np.float32)})
    assert [r.shape for r in results] == [(2, 1, 24, 32), (2, 2, 24, 32), (2, 2, 24, 32), (2, 10, 24, 32)]


def test_symbolic_batch_runs_any_batch(small_model: Path) -> None:
    model = with_static_input_shape(small_model, {"images": ["batch", 3, 32, 48]})
    assert graph_inputs(model)["images"] == ("batch", 3, 32, 48)
    session = _session(model)
    for batch in (1, 5):
        heat, box = session.run(None, {"images": np.random.rand(batch, 3, 32, 48).astype(np.float32)})
        assert heat.shape == (batch, 1, 16, 24) and box.shape == (batch, 4, 16, 24)


def test_unknown_input_and_wrong_rank_are_clear(small_model: Path) -> None:
    with pytest.raises(ModelError, match=r"no input named x; its inputs are: images\[2, 3, 32, 48\]"):
        with_static_input_shape(small_model, {"x": [1, 3, 32, 48]})
    with pytest.raises(ModelError, match="rank 4"):
        with_static_input_shape(small_model, {"images": [3, 32, 48]})


def test_original_model_is_not_modified(centerface: Path) -> None:
    model = load_onnx(centerface)
    with_static_input_shape(model, {"input.1": [1, 3, 64, 64]})
    assert graph_inputs(model) == {"input.1": (10, 3, 32, 32)}


def test_to_fp16_matches_fp32_within_half_precision(centerface: Path) -> None:
    fp32 = with_static_input_shape(centerface, {"input.1": [2, 3, 64, 64]})
    fp16 = to_fp16(fp32)
    onnx.checker.check_model(fp16)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert all(init.data_type != onnx.TensorProto.FLOAT for init in fp16.graph.initializer)
    x = (np.random.default_rng(0).random((2, 3, 64, 64)) * 255).astype(np.float32)
    reference = _session(fp32).run(None, {"input.1": x})
    half = _session(fp16).run(None, {"input.1": x.astype(np.float16)})
    for ref, out in zip(reference, half, strict=True):
        assert out.dtype == np.float16
        # Half precision keeps ~3 significant digits: compare relative to each output's range.
        assert np.abs(ref - out.astype(np.float32)).max() <= 1e-2 * (1 + np.abs(ref).max())


def test_file_sha256_tracks_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"x" * 10)
    assert file_sha256(a) == file_sha256(b)
    b.write_bytes(b"y" * 10)
    assert file_sha256(a) != file_sha256(b)
