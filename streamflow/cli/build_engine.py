"""`streamflow build-engine`: build a TensorRT engine ahead of time (a small trtexec).

Without `-o` the engine goes into the engine cache, exactly where the `infer` stage with the same
model, shapes and precision will look for it. With `-o PATH` it is written there, with a `PATH.json`
sidecar holding its key, so that loading it later on another GPU or TensorRT version fails with a
clear message instead of a crash.

Shapes: `--shape NAME=1x3x480x640` (static), or `--shape NAME=1x3x480x640:8x3x480x640:32x3x480x640`
(min:opt:max). trtexec's own spelling works too, so its command lines carry over: `--min-shapes`,
`--opt-shapes` and `--max-shapes` take `NAME:DIMS[,NAME:DIMS...]` (the name ends at the last colon,
so `input:0:1x360x640x21` is input `input:0`), and `--save-engine` is `-o`. BMF's two engines:

    trtexec --onnx=version-RFB-640.onnx --buildOnly --saveEngine=version-RFB-640.engine
    streamflow build-engine models/version-RFB-640.onnx -o version-RFB-640.engine

    trtexec --onnx=v1.onnx --minShapes=input:0:1x360x640x21 --optShapes=input:0:1x360x640x21 \
        --maxShapes=input:0:1x360x640x21 --buildOnly --fp16 --saveEngine=v1.engine
    streamflow build-engine v1.onnx --min-shapes input:0:1x360x640x21 --opt-shapes input:0:1x360x640x21 \
        --max-shapes input:0:1x360x640x21 --fp16 -o v1.engine

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

__all__ = [
    "build_engine",
    "build_engine_command",
    "parse_shape_option",
    "parse_trtexec_shapes",
    "register",
    "shape_specs",
]

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


def parse_trtexec_shapes(option: str) -> dict[str, list[int]]:
    """trtexec's `NAME:DIMS[,NAME:DIMS...]` -> {name: dims}; a name may contain colons (the last one splits).

    Example:
        >>> parse_trtexec_shapes("input:0:1x360x640x21")
        {'input:0': [1, 360, 640, 21]}
        >>> parse_trtexec_shapes("a:1x3,b:2x4")
        {'a': [1, 3], 'b': [2, 4]}
    """
    from streamflow.inference.base import ShapeError

    shapes: dict[str, list[int]] = {}
    for item in option.split(","):
        name, sep, dims = item.strip().rpartition(":")
        if not sep or not name:
            raise ShapeError(f"bad shape {item!r}: write NAME:1x3x480x640 (trtexec's spelling)")
        if name in shapes:
            raise ShapeError(f"input {name!r} given twice in {option!r}")
        shapes[name] = _dims(dims)
    return shapes


def shape_specs(
    shape: Sequence[str] = (),
    min_shapes: Sequence[str] = (),
    opt_shapes: Sequence[str] = (),
    max_shapes: Sequence[str] = (),
) -> dict[str, InputSpec]:
    """The input specs of `--shape` and trtexec-style `--min/--opt/--max-shapes` options, checked.

    Every input named in one of min/opt/max must be named in all three; an input may not be given
    both ways. Empty when no option is given (the model's own static shapes are used then).

    Example:
        >>> s = shape_specs(min_shapes=["x:1x3x8x8"], opt_shapes=["x:4x3x8x8"], max_shapes=["x:16x3x8x8"])
        >>> s["x"].min_shape, s["x"].shape, s["x"].max_shape
        ((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))
    """
    from streamflow.inference.base import InputSpec, ShapeError

    specs = {spec.name: spec for spec in (parse_shape_option(s) for s in shape)}
    ranges = {key: {} for key in ("min", "opt", "max")}  # type: dict[str, dict[str, list[int]]]
    for key, options in (("min", min_shapes), ("opt", opt_shapes), ("max", max_shapes)):
        for option in options:
            for name, dims in parse_trtexec_shapes(option).items():
                ranges[key][name] = dims
    for name in sorted(set().union(*ranges.values())):
        missing = [f"--{key}-shapes" for key in ("min", "opt", "max") if name not in ranges[key]]
        if missing:
            raise ShapeError(f"input {name!r} needs {', '.join(missing)} too (min, opt and max go together)")
        if name in specs:
            raise ShapeError(f"input {name!r} is given by --shape and by --min/--opt/--max-shapes: use one")
        specs[name] = InputSpec.parse(name, {key: ranges[key][name] for key in ("min", "opt", "max")})
    return specs


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
    min_shapes: Annotated[
        list[str] | None, typer.Option("--min-shapes", help="trtexec's --minShapes: NAME:1x3x480x640[,NAME:...].")
    ] = None,
    opt_shapes: Annotated[list[str] | None, typer.Option("--opt-shapes", help="trtexec's --optShapes.")] = None,
    max_shapes: Annotated[list[str] | None, typer.Option("--max-shapes", help="trtexec's --maxShapes.")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Build a half-precision engine.")] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", "--save-engine", help="Write the engine here (default: the engine cache)."),
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
        specs = shape_specs(shape or (), min_shapes or (), opt_shapes or (), max_shapes or ())
        path = build_engine(model, specs, fp16, output, engine_cache=engine_cache)
    except (ModelError, ShapeError, RuntimeError, ValueError) as error:
        typer.echo(f"error: {type(error).__name__}: {error}", err=True)
        raise typer.Exit(2 if isinstance(error, ModelError | ShapeError) else 1) from None
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add `build-engine` to a typer app."""
    app.command("build-engine")(build_engine_command)
