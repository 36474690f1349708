"""TensorRT backend: the pure-Python parts run without TensorRT, against small stand-ins for the
TensorRT API objects (the same attribute and method names, recording what they are asked); the tests
that need the real module skip, saying why, when neither `tensorrt` nor `tensorrt_rtx` imports."""

from __future__ import annotations

import enum
import importlib.util
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pytest
import torch

from streamflow.inference.base import BackendUnavailableError, InputSpec, Precision, ShapeError
from streamflow.inference.onnx_tools import file_sha256, graph_inputs, with_static_input_shape
from streamflow.inference.tensorrt_backend import (
    EngineCache,
    build_serialized_engine,
    check_engine_inputs,
    default_engine_cache,
    engine_key,
    fp16_strategy,
    import_tensorrt,
    split_io,
    torch_dtype,
    uses_timing_cache,
)

HAVE_TRT = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))


# -- stand-ins for the TensorRT API surface --------------------------------------------------------
class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class BuilderFlag10(enum.Enum):  # TensorRT 10 still has precision flags
    FP16 = 0
    TF32 = 7


class BuilderFlag11(enum.Enum):  # TensorRT 11 removed them: networks are strongly typed
    TF32 = 7


class FakeEngine:
    """ICudaEngine's I/O introspection: num_io_tensors, get_tensor_name, get_tensor_mode."""

    def __init__(self, io: list[tuple[str, TensorIOMode]]) -> None:
        self.io = io
        self.num_io_tensors = len(io)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return dict(self.io)[name]


class Recorder:
    """Builder, network, parser, config, profile and timing cache in one: records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.parsed: bytes = b""

    # Builder
    def create_network(self, flags: int) -> Recorder:
        self.calls.append(("create_network", flags))
        return self

    def create_builder_config(self) -> Recorder:
        return self

    def create_optimization_profile(self) -> Recorder:
        return self

    def build_serialized_network(self, network: Any, config: Any) -> bytes:
        self.calls.append(("build_serialized_network", None))
        return b"serialized-engine"

    # OnnxParser
    def parse(self, model: bytes) -> bool:
        self.parsed = model
        return True

    # IBuilderConfig
    def set_flag(self, flag: Any) -> None:
        self.calls.append(("set_flag", flag.name))

    def create_timing_cache(self, blob: bytes) -> Recorder:
        self.calls.append(("create_timing_cache", blob))
        return self

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> None:
        self.calls.append(("set_timing_cache", ignore_mismatch))

    def get_timing_cache(self) -> Recorder:
        return self

    def serialize(self) -> bytes:
        return b"timing-cache-v2"

    def add_optimization_profile(self, profile: Any) -> None:
        self.calls.append(("add_optimization_profile", None))

    # IOptimizationProfile
    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.calls.append(("set_shape", (name, tuple(lo), tuple(opt), tuple(hi))))


def fake_trt(name: str = "tensorrt", version: str = "10.8.0", *, builder_flag: type[enum.Enum] = BuilderFlag10) -> Any:
    recorder = Recorder()
    module = SimpleNamespace(
        __name__=name,
        __version__=version,
        TensorIOMode=TensorIOMode,
        BuilderFlag=builder_flag,
        IBuilderConfig=SimpleNamespace(create_timing_cache=Recorder.create_timing_cache),
        Builder=lambda logger: recorder,
        OnnxParser=lambda network, logger: recorder,
        recorder=recorder,
    )
    return module


class NoLogger:
    def last_errors(self) -> str:
        return "none"


SPEC = {"input.1": InputSpec.parse("input.1", {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]})}


# -- tests -------------------------------------------------------------------------------------------
def test_split_io_uses_tensor_modes() -> None:
    engine = FakeEngine([("input.1", TensorIOMode.INPUT), ("537", TensorIOMode.OUTPUT), ("mask", TensorIOMode.INPUT)])
    assert split_io(engine, fake_trt()) == (["input.1", "mask"], ["537"])


def test_check_engine_inputs_lists_actual_names_and_shapes() -> None:
    engine_inputs = {"input.1": (-1, 3, 64, 64)}
    profile = {"input.1": ((1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64))}
    check_engine_inputs(engine_inputs, profile, SPEC)  # fits: no error
    with pytest.raises(ShapeError, match=r"name \['images'\], but the engine's inputs are: input\.1 -1x3x64x64"):
        check_engine_inputs(engine_inputs, profile, {"images": InputSpec.static("images", [8, 3, 64, 64])})
    with pytest.raises(ShapeError, match=r"configured as 8x3x64x96, the engine's inputs are: input\.1 -1x3x64x64"):
        check_engine_inputs(engine_inputs, profile, {"input.1": InputSpec.static("input.1", [8, 3, 64, 96])})
    wide_range = {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [64, 3, 64, 64]}
    wide = {"input.1": InputSpec.parse("input.1", wide_range)}
    with pytest.raises(ShapeError, match=r"outside the engine's profile 1x3x64x64 \.\. 32x3x64x64"):
        check_engine_inputs(engine_inputs, profile, wide)


def test_fp16_path_depends_on_the_api_version() -> None:
    assert fp16_strategy(fake_trt(version="10.8.0", builder_flag=BuilderFlag10)) == "builder_flag"
    assert fp16_strategy(fake_trt(version="11.1.0", builder_flag=BuilderFlag11)) == "onnx_fp16"
    assert uses_timing_cache(fake_trt("tensorrt"))
    assert not uses_timing_cache(fake_trt("tensorrt_rtx", "1.7.1.116", builder_flag=BuilderFlag11))


def test_build_trt10_fp16_sets_the_builder_flag_and_keeps_the_graph_fp32(centerface: Path, tmp_path: Path) -> None:
    trt = fake_trt(version="10.8.0", builder_flag=BuilderFlag10)
    shaped = with_static_input_shape(centerface, {"input.1": ["batch", 3, 64, 64]})
    cache = tmp_path / "timing.cache"
    data = build_serialized_engine(trt, shaped, SPEC, Precision.FP16, timing_cache=cache, logger=NoLogger())
    assert data == b"serialized-engine"
    calls = trt.recorder.calls
    assert ("create_network", 0) in calls
    assert ("set_flag", "FP16") in calls
    assert ("create_timing_cache", b"") in calls and ("set_timing_cache", False) in calls
    assert ("set_shape", ("input.1", (1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64))) in calls
    assert calls.index(("add_optimization_profile", None)) < calls.index(("build_serialized_network", None))
    parsed = onnx.load_from_string(trt.recorder.parsed)
    assert parsed.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert cache.read_bytes() == b"timing-cache-v2"  # saved beside the engines for the next build


def test_build_trt11_fp16_converts_the_graph_instead(centerface: Path, tmp_path: Path) -> None:
    trt = fake_trt(version="11.1.0", builder_flag=BuilderFlag11)
    shaped = with_static_input_shape(centerface, {"input.1": ["batch", 3, 64, 64]})
    build_serialized_engine(trt, shaped, SPEC, Precision.FP16, timing_cache=tmp_path / "t.cache", logger=NoLogger())
    assert not [c for c in trt.recorder.calls if c[0] == "set_flag"]
    parsed = onnx.load_from_string(trt.recorder.parsed)
    assert parsed.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert graph_inputs(parsed) == {"input.1": ("batch", 3, 64, 64)}


def test_rtx_skips_the_timing_cache(centerface: Path, tmp_path: Path) -> None:
    trt = fake_trt("tensorrt_rtx", "1.7.1.116", builder_flag=BuilderFlag11)
    shaped = with_static_input_shape(centerface, {"input.1": ["batch", 3, 64, 64]})
    build_serialized_engine(trt, shaped, SPEC, Precision.FP32, timing_cache=tmp_path / "t.cache", logger=NoLogger())
    assert not [c for c in trt.recorder.calls if "timing" in c[0]]
    assert not (tmp_path / "t.cache").exists()


def _key(centerface: Path, version: str = "10.8.0") -> Any:
    trt = fake_trt(version=version)
    return engine_key(
        file_sha256(centerface), trt, SPEC, Precision.FP16, gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0)
    )


def test_engine_key_covers_model_trt_gpu_shapes_precision(centerface: Path) -> None:
    key = _key(centerface)
    data = key.as_dict()
    assert data["onnx_sha256"] == file_sha256(centerface)
    assert (data["trt_module"], data["trt_version"]) == ("tensorrt", "10.8.0")
    assert (data["gpu_name"], data["compute_capability"], data["precision"]) == ("NVIDIA H100 80GB HBM3", "9.0", "fp16")
    assert data["inputs"] == [{"name": "input.1", "min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]}]
    assert key.gpu_slug == "nvidia-h100-80gb-hbm3-sm90"
    newer = _key(centerface, version="10.9.0")
    assert newer.model_digest == key.model_digest  # same file name: an upgrade replaces, not piles up
    assert newer.differences(key.as_dict()) == ["trt_version: '10.8.0' -> '10.9.0'"]
    other = engine_key("0" * 64, fake_trt(), SPEC, Precision.FP16, gpu_name="x", compute_capability=(9, 0))
    assert other.model_digest != key.model_digest


def test_engine_cache_rebuilds_stale_engines_with_one_log_line(
    centerface: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EngineCache(tmp_path)
    key = _key(centerface)
    assert cache.load(key, "centerface") is None  # nothing cached yet
    path = cache.store(key, "centerface", b"engine-bytes")
    assert path.parent == tmp_path and path.suffix == ".engine"
    assert json.loads(path.with_suffix(".json").read_text())["trt_version"] == "10.8.0"
    assert cache.load(key, "centerface") == b"engine-bytes"
    upgraded = _key(centerface, version="10.9.0")
    assert cache.engine_path(upgraded, "centerface") == path
    with caplog.at_level(logging.WARNING):
        assert cache.load(upgraded, "centerface") is None
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "rebuilding" in lines[0] and "10.8.0" in lines[0] and "10.9.0" in lines[0]
    path.with_suffix(".json").unlink()
    assert cache.load(key, "centerface") is None  # an engine without its key is never loaded blindly
    assert "timing-tensorrt-10.8.0-nvidia-h100-80gb-hbm3-sm90" in cache.timing_cache_path(key).name


def test_torch_dtype_by_member_name() -> None:
    assert torch_dtype(DataType.FLOAT) is torch.float32
    assert torch_dtype(DataType.HALF) is torch.float16
    assert torch_dtype(DataType.INT64) is torch.int64
    with pytest.raises(TypeError, match="FP8"):
        torch_dtype(DataType.FP8)


def test_missing_module_says_how_to_install() -> None:
    with pytest.raises(BackendUnavailableError, match="pip install tensorrt-rtx"):
        import_tensorrt("streamflow_no_such_tensorrt_module")


def test_default_engine_cache_respects_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_engine_cache() == tmp_path / "streamflow" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_engine_cache() == Path.home() / ".cache" / "streamflow" / "engines"


@pytest.mark.skipif(HAVE_TRT, reason="a TensorRT module is installed here")
def test_absent_module_message_names_both_modules() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        import_tensorrt()
    assert "tensorrt:" in str(info.value) and "tensorrt_rtx:" in str(info.value)
