"""`streamflow build-engine`: build a TensorRT engine ahead of time (a small trtexec).

Without `-o` the engine goes into the engine cache, exactly where the `infer` stage with the same
model, shapes and precision will look for it. With `-o PATH` it is written there, with a `PATH.json`
sidecar holding its key, so that loading it later on another GPU or TensorRT version fails with a
clear message instead of a crash.

Shapes: `--shape NAME=1x3x480x640` (static), or `--shape NAME=1x3x480x640:8x3x480x640:32x3x480x640`
(min:opt:max, only the batch may differ).

Wiring (the lead's CLI):
    >>> import typer
    >>> app = typer.Typer()
    >>> register(app)
    >>> [c.name for c in app.registered_commands]
    ['build-engine']
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import torch

    from streamflow.inference.base import InputSpec

# torch, onnx and the backends are imported where they are used: registering this command with the
# CLI must not cost their import time (`streamflow --help`).

__all__ = ["build_engine", "build_engine_command", "parse_shape_option", "register"]

log = logging.getLogger(__name__)


def _dims(text: str) -> list[int]:
    from streamflow.inference.base import ShapeError

    try:
        dims = [int(part) for part in text.lower().split("x")]
    except ValueError:
        raise ShapeError(f"bad shape {text!r}: write dimensions like 1x3x480x640") from None
    return dims


def parse_shape_option(option: str) -> InputSpec:
    """`"input.1=8x3x480x640"` or `"input.1=1x3x480x640:8x3x480x640:32x3x480x640"` -> an `InputSpec`.

    Example:
        >>> parse_shape_option("x=1x3x8x8:4x3x8x8:16x3x8x8").describe()
        '1..16 (opt 4) x 3x8x8'
    """
    from streamflow.inference.base import InputSpec, ShapeError

    name, sep, shapes = option.rpartition("=")
    if not sep or not name:
        raise ShapeError(f"bad --shape {option!r}: write NAME=1x3x480x640 or NAME=MIN:OPT:MAX")
    parts = shapes.split(":")
    if len(parts) == 1:
        return InputSpec.static(name, _dims(parts[0]))
    if len(parts) == 3:
        lo, opt, hi = (_dims(p) for p in parts)
        return InputSpec.parse(name, {"min": lo, "opt": opt, "max": hi})
    raise ShapeError(f"bad --shape {option!r}: give one shape or three (min:opt:max)")


def build_engine(
    model: str | Path,
    shapes: Mapping[str, InputSpec] | Sequence[str] | None = None,
    fp16: bool = False,
    output: str | Path | None = None,
    *,
    engine_cache: str | Path | None = None,
    device: str | torch.device = "cuda",
) -> Path:
    """Build (or find in the cache) the engine for `model` and return its path.

    `shapes` maps input names to specs, or is a list of `--shape` strings; omitted, the model's own
    input shapes are used when they are all fixed.
    """
    from streamflow.inference.base import InputSpec, ModelError, Precision, ShapeError
    from streamflow.inference.onnx_tools import graph_inputs, load_onnx
    from streamflow.inference.tensorrt_backend import TensorRTBackend, default_engine_cache

    model = Path(model)
    if shapes is None or not shapes:
        declared = graph_inputs(load_onnx(model))
        if any(not all(isinstance(d, int) for d in dims) or not dims for dims in declared.values()):
            described = ", ".join(f"{n} {list(d)}" for n, d in declared.items())
            raise ShapeError(f"{model.name} has dynamic input dims ({described}): pass --shape NAME=1x3x480x640")
        specs = {n: InputSpec.static(n, [int(d) for d in dims]) for n, dims in declared.items()}  # type: ignore[arg-type]
    elif isinstance(shapes, Mapping):
        specs = dict(shapes)
    else:
        specs = {spec.name: spec for spec in (parse_shape_option(s) for s in shapes)}
    if model.suffix.lower() != ".onnx":
        raise ModelError(f"build-engine needs an .onnx model, got {model}")
    backend = TensorRTBackend(
        model,
        specs,
        precision=Precision.FP16 if fp16 else Precision.FP32,
        device=device,
        engine_cache=engine_cache if engine_cache is not None else default_engine_cache(),
    )
    backend.load()
    built = backend.engine_path
    backend.close()
    if built is None:
        raise RuntimeError("the TensorRT backend did not report its engine path")
    if output is None:
        return built
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, output)
    shutil.copyfile(built.with_suffix(".json"), output.with_suffix(".json"))
    return output


def build_engine_command(
    model: Annotated[Path, typer.Argument(help="ONNX model to build from.")],
    shape: Annotated[
        list[str] | None,
        typer.Option("--shape", help="NAME=1x3x480x640, or NAME=MIN:OPT:MAX for a batch range (repeatable)."),
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Build a half-precision engine.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the engine here (default: the engine cache).")
    ] = None,
    engine_cache: Annotated[
        Path | None, typer.Option("--engine-cache", help="Cache directory (default ~/.cache/streamflow/engines).")
    ] = None,
) -> None:
    """Build a TensorRT engine from an ONNX model and put it in the engine cache (or -o PATH)."""
    # Progress lines ("building ... this takes a while once"); a no-op when the CLI set logging up.
    logging.basicConfig(level=logging.INFO, format="streamflow: %(levelname)s: %(message)s")
    from streamflow.inference.base import ModelError, ShapeError

    try:
        path = build_engine(model, shape or [], fp16, output, engine_cache=engine_cache)
    except (ModelError, ShapeError, RuntimeError, ValueError) as error:
        typer.echo(f"error: {type(error).__name__}: {error}", err=True)
        raise typer.Exit(2 if isinstance(error, ModelError | ShapeError) else 1) from None
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add `build-engine` to a typer app."""
    app.command("build-engine")(build_engine_command)
