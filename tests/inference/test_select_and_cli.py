"""Backend choice (`auto`) and the `build-engine` command's argument handling."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from streamflow.cli.build_engine import parse_shape_option, parse_trtexec_shapes, register, shape_specs
from streamflow.inference.base import BackendKind, BackendUnavailableError, InputSpec, ModelError, ShapeError
from streamflow.inference.onnxruntime_backend import OnnxRuntimeBackend
from streamflow.inference.select import choose_backend, create_backend


def test_auto_on_cpu_is_onnxruntime() -> None:
    kind, reason = choose_backend("auto", torch.device("cpu"))
    assert kind is BackendKind.ONNXRUNTIME and "no CUDA device" in reason


def test_explicit_choice_and_engine_files() -> None:
    assert choose_backend("torch", torch.device("cpu")) == (BackendKind.TORCH, "requested")
    kind, reason = choose_backend("auto", torch.device("cpu"), model="m.plan")
    assert kind is BackendKind.TENSORRT and "serialized TensorRT engine" in reason


def test_create_backend_logs_choice_once(small_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    specs = {"images": InputSpec.static("images", [2, 3, 32, 48])}
    with caplog.at_level(logging.INFO, logger="streamflow.inference.select"):
        backend = create_backend(small_model, specs, device="cpu")
    assert isinstance(backend, OnnxRuntimeBackend)
    lines = [r.getMessage() for r in caplog.records if "inference backend" in r.getMessage()]
    assert lines == ["inference backend: onnxruntime (no CUDA device: ONNX Runtime on the CPU)"]


def test_create_backend_errors(small_model: Path, tmp_path: Path) -> None:
    specs = {"images": InputSpec.static("images", [2, 3, 32, 48])}
    with pytest.raises(ModelError, match="model file not found"):
        create_backend(tmp_path / "missing.onnx", specs)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        create_backend(small_model, specs, precision="fp16", device="cpu")
    with pytest.raises(BackendUnavailableError, match="TensorRT needs a CUDA device"):
        create_backend(small_model, specs, kind="tensorrt", device="cpu")


def test_parse_shape_option() -> None:
    spec = parse_shape_option("input.1=1x3x480x640")
    assert (spec.name, spec.shape, spec.dynamic) == ("input.1", (1, 3, 480, 640), False)
    spec = parse_shape_option("a=b=1x3x8x8:4x3x8x8:16x3x8x8")  # names may contain '='; the last one splits
    assert (spec.name, spec.min_batch, spec.opt_batch, spec.max_batch) == ("a=b", 1, 4, 16)
    with pytest.raises(ShapeError, match="NAME=1x3x480x640"):
        parse_shape_option("1x3x480x640")
    with pytest.raises(ShapeError, match="bad shape '1x3xAx640'"):
        parse_shape_option("x=1x3xAx640")
    with pytest.raises(ShapeError, match="one shape or three"):
        parse_shape_option("x=1x3x8x8:2x3x8x8")


def test_build_engine_command_reports_clear_errors(small_model: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.command()
    def version() -> None:  # a second command, so typer keeps `build-engine` as a sub-command
        typer.echo("0")

    runner = CliRunner()
    result = runner.invoke(app, ["build-engine", str(small_model), "--shape", "images=2x3x32"])
    assert result.exit_code == 2
    assert "input 'images' of small.onnx has rank 4" in result.output or "TensorRT needs a CUDA GPU" in result.output
    if torch.cuda.is_available():
        return
    result = runner.invoke(app, ["build-engine", str(small_model), "--shape", "images=2x3x32x48"])
    assert result.exit_code == 1
    assert "error: BackendUnavailableError: TensorRT needs a CUDA GPU" in result.output


# -- BMF's two trtexec lines ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SR_SHAPE = "input:0:1x360x640x21"


def test_trtexec_shape_options_make_the_profile() -> None:
    specs = shape_specs(min_shapes=[SR_SHAPE], opt_shapes=[SR_SHAPE], max_shapes=[SR_SHAPE])
    spec = specs["input:0"]
    # What build_serialized_engine hands to profile.set_shape(name, min, opt, max).
    assert (spec.min_shape, spec.shape, spec.max_shape) == ((1, 360, 640, 21),) * 3
    ranged = shape_specs(
        min_shapes=["input:0:1x360x640x21,other:1x4"],
        opt_shapes=["input:0:2x360x640x21", "other:2x4"],
        max_shapes=["input:0:4x360x640x21,other:4x4"],
    )
    assert (ranged["input:0"].min_batch, ranged["input:0"].opt_batch, ranged["input:0"].max_batch) == (1, 2, 4)
    assert ranged["other"].max_shape == (4, 4)
    assert shape_specs() == {}
    with pytest.raises(ShapeError, match="needs --max-shapes too"):
        shape_specs(min_shapes=[SR_SHAPE], opt_shapes=[SR_SHAPE])
    with pytest.raises(ShapeError, match="by --shape and by --min/--opt/--max-shapes"):
        shape_specs(["input:0=1x360x640x21"], [SR_SHAPE], [SR_SHAPE], [SR_SHAPE])
    with pytest.raises(ShapeError, match="NAME:1x3x480x640"):
        parse_trtexec_shapes("1x360x640x21")


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def version() -> None:  # a second command, so typer keeps `build-engine` as a sub-command
        typer.echo("0")

    return app


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks how far the command gets without a GPU")
def test_bmf_command_lines_parse_and_reach_tensorrt(tmp_path: Path) -> None:
    runner = CliRunner()
    face = ["build-engine", str(ROOT / "models" / "version-RFB-640.onnx"), "--save-engine", str(tmp_path / "f.engine")]
    sr_model = str(ROOT / "models" / "vsr_x2_7in3out_nhwc.onnx")
    sr = ["build-engine", sr_model, "--min-shapes", SR_SHAPE, "--opt-shapes", SR_SHAPE, "--max-shapes", SR_SHAPE]
    for args in (face, [*sr, "--fp16", "-o", str(tmp_path / "v1.engine")]):
        result = runner.invoke(_app(), args)
        # Shapes accepted (static from the model, or the profile); stops only at the missing GPU.
        assert result.exit_code == 1, result.output
        assert "TensorRT needs a CUDA GPU" in result.output
    result = runner.invoke(_app(), [*sr[:-2]])  # --max-shapes missing: a usage error
    assert result.exit_code == 2
    assert "needs --max-shapes too" in result.output
