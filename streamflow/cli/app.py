"""The `streamflow` command.

Exit codes: 0 success; 2 invalid config or usage; 1 failure while running; 130 after SIGINT and
143 after SIGTERM (outputs drained and finalized first).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from streamflow.cli.build_engine import register as register_build_engine

if TYPE_CHECKING:
    from streamflow.observers import RunStats
    from streamflow.pipeline import Pipeline
    from streamflow.sources import SourceSpec

# The pipeline machinery (torch, PyAV, ONNX, the stages) is imported inside each command, not here:
# `streamflow --help` answers without loading any of it.

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="GPU video pipelines from YAML configs.",
)
# Without a terminal (CI logs, pipes) rich would wrap tables at 80 columns and hide stage names.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)

EXIT_FAILURE = 1
EXIT_CONFIG = 2
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override an option: STAGE.FIELD=VALUE (repeatable).")
]
RayOption = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Spread the sources over Ray actors: a bare --ray starts a local cluster; "
        "or ADDRESS (auto, HOST:PORT, ray://HOST:PORT) of a running one.",
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Spread the sources over N worker processes of this machine (each its own interpreter lock; "
        "GPUs handed out in turn), without Ray.",
    ),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.")]
SourceOption = Annotated[
    list[str] | None,
    typer.Option("--source", help="Input ID=URI (repeatable); replaces the config's sources."),
]
API_TOKEN_ENV = "STREAMFLOW_API_TOKEN"
ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api",
        help="Serve the control API (sources, /metrics, /healthz, /readyz) on HOST:PORT, or PORT on 127.0.0.1; "
        f"${API_TOKEN_ENV} set: POST/DELETE need it as a bearer token.",
    ),
]
SourcesFileOption = Annotated[
    Path | None,
    typer.Option("--sources-file", help="Inputs, one URI or ID=URI a line; replaces the config's sources."),
]


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="streamflow: %(levelname)s: %(name)s: %(message)s",
        force=True,
    )


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _describe_failure(error: BaseException) -> str:
    stage = getattr(error, "stage_name", None)
    text = str(error).splitlines()[0] if str(error) else ""
    where = f"stage {stage!r}: " if stage and not text.startswith(f"stage {stage!r}") else ""
    return f"{where}{type(error).__name__}: {text}"


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    set_: SetOption = None,
    stats_json: Annotated[Path | None, typer.Option("--stats-json", help="Write per-stage figures as JSON.")] = None,
    max_frames: Annotated[
        int | None, typer.Option("--max-frames", min=1, help="Stop each source after N frames.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live line or summary table.")] = False,
    strict_frames: Annotated[
        bool,
        typer.Option("--strict-frames", help="Fail (exit 1) when a source delivers fewer frames than it states."),
    ] = False,
    source: SourceOption = None,
    sources_file: SourcesFileOption = None,
    api: ApiOption = None,
    ray: RayOption = None,
    workers: WorkersOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Run a pipeline until its input ends (or Ctrl-C), then print per-stage figures.

    With several sources, one that fails is reported and ends alone; the exit code is then 1.
    With --api the pipeline stays open for sources added over HTTP until SIGINT/SIGTERM.
    """
    from streamflow.cli.report import LiveDisplay
    from streamflow.config import ConfigError, build_pipeline, load_config
    from streamflow.observers import FreezeObjectsAfterSetup, StartupTimes
    from streamflow.preflight import PreflightError

    startup = StartupTimes(launched=process_started())
    startup.mark("python and imports")
    _configure_logging(verbose)
    try:
        specs = command_line_sources(source or [], sources_file)
        loaded = load_config(config, set_ or [])
        startup.mark("config read and checked")
        # This process runs one pipeline: what its setup leaves alive is kept out of GC pauses.
        observers = [FreezeObjectsAfterSetup(), startup]
        pipeline = build_pipeline(loaded, max_frames=max_frames, sources=specs, observers=observers)
        pipeline.strict_frames = pipeline.strict_frames or strict_frames
        if stats_json:
            pipeline.output_files.append(("--stats-json", str(stats_json)))
        alongside = _control_server(pipeline, api) if api is not None else None
        startup.mark("pipeline built")
        pipeline.preflight()
        startup.mark("inputs and outputs checked")
    except (ConfigError, PreflightError) as error:
        raise _fail(str(error), EXIT_CONFIG) from None
    except KeyboardInterrupt:
        raise _fail("interrupted while starting; nothing was written", SIGNAL_EXIT["SIGINT"]) from None
    if workers is not None and ray is not None:
        raise _fail("--workers runs worker processes on this machine, --ray on Ray actors: give one", EXIT_CONFIG)
    if ray is not None or workers is not None or loaded.cluster is not None:
        from streamflow.cli.cluster import run_on_cluster  # Ray is imported only on the Ray route

        code = run_on_cluster(
            loaded,
            address=ray,
            workers=workers,
            sources=specs,
            max_frames=max_frames,
            stats_json=stats_json,
            quiet=quiet,
            api=api,
        )
        raise typer.Exit(code)
    try:
        if err.is_terminal and not quiet:
            with LiveDisplay(pipeline, err):
                stats = pipeline.run_sync(handle_signals=True, alongside=alongside)
        else:
            stats = pipeline.run_sync(handle_signals=True, alongside=alongside)
    except KeyboardInterrupt:
        raise _fail("interrupted", SIGNAL_EXIT["SIGINT"]) from None
    except Exception as error:
        if api is not None and getattr(error, "run_stats", None) is not None:
            # Under --api a source that failed was reported on its own (the POST, GET /sources):
            # the run ends as its stop reason says, and the sources table shows the failure.
            stats = error.run_stats  # type: ignore[attr-defined]
        else:
            _run_failed(error, pipeline, stats_json=stats_json, quiet=quiet, verbose=verbose)
    if stats_json:
        _write_stats(stats_json, {**stats.to_dict(), "startup": startup.summary()})
    if not quiet:
        _print_summary(stats)
        err.print(startup.line(), highlight=False, soft_wrap=True)
    if stats.stopped_by in SIGNAL_EXIT:
        err.print(f"stopped by {stats.stopped_by}; outputs finalized", highlight=False)
        _exit(pipeline, SIGNAL_EXIT[stats.stopped_by])
    _exit(pipeline, 0)


def process_started() -> float:
    """This process's start as a `time.perf_counter()` value: the kernel's start time (Linux,
    10 ms ticks), so the interpreter's own start and the imports count; elsewhere (or with a clock
    that doesn't fit), now, and the imports are not counted."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        running_for = time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter()
    if not 0.0 <= running_for < 300.0:
        # This is called as `run` begins, seconds after the start: anything else is a clock the
        # kernel keeps apart for this process (a time namespace), so count from here instead.
        return time.perf_counter()
    return time.perf_counter() - running_for


def _write_stats(path: Path, data: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(data, indent=2))
    except OSError as error:  # the run's own outcome matters more than its figures: say it, go on
        err.print(f"[bold red]error:[/] cannot write {str(path)!r}: {error.strerror or error}", highlight=False)


def _exit(pipeline: Pipeline, code: int) -> NoReturn:
    """Exit with `code`; at once when a stage was abandoned inside a hook (its thread never ends,
    and a normal exit would wait for it forever)."""
    if pipeline.unfinished:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


def _run_failed(
    error: Exception, pipeline: Pipeline, *, stats_json: Path | None, quiet: bool, verbose: bool
) -> NoReturn:
    if verbose:
        err.print_exception()
    failure = _describe_failure(error)
    stats = getattr(error, "run_stats", None) or pipeline.snapshot()
    if stats_json:
        _write_stats(stats_json, {**stats.to_dict(), "unfinished": pipeline.unfinished, "error": failure})
    if not quiet and stats.failed_sources and len(stats.sources) > 1:  # the others ran on: show them
        _print_summary(stats)
    err.print(f"[bold red]error:[/] {failure}", highlight=False, soft_wrap=True)
    _exit(pipeline, EXIT_FAILURE)


def _control_server(pipeline: Pipeline, bind: str) -> Callable[[], AbstractAsyncContextManager[Any]]:
    """The control API for `--api`, served on the pipeline's loop; the pipeline then stays open."""
    from streamflow.api import ControlServer, parse_bind
    from streamflow.config import ConfigError

    try:
        host, port = parse_bind(bind)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    # Sources come and go over HTTP: the run lasts until a signal, not until the last source ends.
    pipeline.stay_open = True
    return ControlServer(pipeline, host=host, port=port, token=os.environ.get(API_TOKEN_ENV) or None).serving


def _print_summary(stats: RunStats) -> None:
    from streamflow.cli.report import sources_table, summary_table

    err.print(summary_table(stats))
    if len(stats.sources) > 1 or stats.failed_sources:
        err.print(sources_table(stats))


def command_line_sources(args: list[str], sources_file: Path | None) -> list[SourceSpec] | None:
    """`--source ID=URI` and `--sources-file` entries as specs; None when neither was given."""
    if not args and sources_file is None:
        return None
    from pydantic import ValidationError

    from streamflow.config import ConfigError
    from streamflow.sources import parse_source_arg, read_sources_file

    specs: list[SourceSpec] = []
    try:
        if sources_file is not None:
            if not sources_file.is_file():
                raise ValueError(f"--sources-file {str(sources_file)!r}: file not found")
            specs.extend(read_sources_file(sources_file))
        for arg in args:
            specs.append(parse_source_arg(arg))
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"--source: field {'.'.join(map(str, first['loc']))!r}: {first['msg']}") from None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not specs:
        raise ConfigError(f"--sources-file {str(sources_file)!r} lists no source")
    return specs


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    set_: SetOption = None,
) -> None:
    """Check a config (every stage and option) without running anything."""
    from streamflow.config import ConfigError, build_pipeline, load_config
    from streamflow.preflight import PreflightError

    try:
        pipeline = build_pipeline(load_config(config, set_ or []))
        pipeline.preflight(create_folders=False)
    except (ConfigError, PreflightError) as error:
        raise _fail(str(error), EXIT_CONFIG) from None
    out.print(f"{config}: valid ({len(pipeline.stages)} stages: {' -> '.join(s.name for s in pipeline.stages)})")


#: The runner's settings, which every stage entry takes beside its own options (see `Stage`).
RUNNER_SETTINGS = (
    ("name", "str", "the stage type", "unique name in the pipeline; `--set NAME.FIELD=...` uses it"),
    ("queue_size", "int", "the pipeline's queue_size", "bound of this stage's input queue"),
    ("overflow", "block | drop_oldest", "block (drop_oldest after live sources)", "what a full queue does"),
    ("batch_size", "int", "1", "queued frames the runner gathers into one Batch per call"),
    ("device", "auto | cpu | cuda | cuda:N", "the pipeline's device", "where the stage runs"),
)


def _type_text(annotation: Any) -> str:
    """`AnnotateMode` -> `boxes | blur | pixelate`; `int | None` -> `int or none`; `Path` -> `path`."""
    import enum
    import types
    import typing

    if typing.get_origin(annotation) is typing.Annotated:  # constrained values: the type is what a user writes
        return _type_text(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(str(member.value) for member in annotation)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or none" if type(None) in args else "")
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(a) for a in args)
    if args:  # list[int], dict[str, ...], tuple[float, float, float]
        origin = typing.get_origin(annotation)
        return f"{getattr(origin, '__name__', str(origin))} of {', '.join(dict.fromkeys(_type_text(a) for a in args))}"
    name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    return {"Path": "path", "PosixPath": "path", "NoneType": "none", "Ellipsis": "..."}.get(name, name)


def _value_text(value: Any) -> str:
    """A default as it would be written in YAML: `boxes`, `[0, 255, 0]`, `true`, `none`."""
    import enum

    from streamflow.config import REQUIRED

    if value is REQUIRED:
        return "(required)"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


@app.command()
def stages() -> None:
    """List registered stage types with their options, allowed values and defaults."""
    from rich.table import Table

    from streamflow.config import stage_options
    from streamflow.registry import registered_types, resolve_stage_type

    runner = Table(title="runner settings (every stage takes these)", title_justify="left")
    for column in ("setting", "value", "default", "meaning"):
        runner.add_column(column)
    for row in RUNNER_SETTINGS:
        runner.add_row(row[0], row[1], row[2], row[3])
    out.print(runner)
    table = Table(title="registered stage types and their options", title_justify="left")
    table.add_column("type", no_wrap=True)
    table.add_column("class", no_wrap=True)  # a class name cut short can't be looked up
    table.add_column("option", no_wrap=True)
    table.add_column("value")
    table.add_column("default")
    table.add_column("meaning")
    seen: dict[type, str] = {}
    for type_name in registered_types():
        cls = resolve_stage_type(type_name)
        if cls in seen:  # an old name kept for old configs
            table.add_row(type_name, f"{cls.__module__}:{cls.__qualname__}", "", "", "", f"same as {seen[cls]}")
            continue
        seen[cls] = type_name
        options = stage_options(cls)
        rows = [
            (option, _type_text(kind), _value_text(default), about)
            for option, (kind, default, about) in options.items()
        ]
        for index, (option, kind_text, default_text, about) in enumerate(rows or [("", "", "", "(no options)")]):
            first = index == 0
            table.add_row(
                type_name if first else "",
                f"{cls.__module__}:{cls.__qualname__}" if first else "",
                option,
                kind_text,
                default_text,
                about,
            )
    out.print(table)


@app.command()
def bench(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames measured (after warm-up).")] = 600,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Frames excluded from timing.")] = 60,
    baseline: Annotated[str, typer.Option("--baseline", help="Baseline to compare with: serial | none.")] = "serial",
    set_: SetOption = None,
    baseline_set: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline-set",
            help="Override for the baseline only, after its automatic batch-1 ones: STAGE.FIELD=VALUE (repeatable).",
        ),
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, help="Rounds of pipeline then baseline; medians are reported.")
    ] = 1,
    sources: Annotated[
        list[int] | None,
        typer.Option("--sources", min=1, help="Many-source run: N copies of the input (repeatable: 32 and 64)."),
    ] = None,
    frames_per_source: Annotated[int, typer.Option("--frames-per-source", min=1, help="With --sources.")] = 240,
    raw_threads: Annotated[
        str, typer.Option("--raw-threads", help="With --sources: raw decoder thread counts for the ceiling, e.g. 7,14")
    ] = "",
    realtime: Annotated[
        bool, typer.Option("--realtime", help="With --sources: pace each source like a camera.")
    ] = False,
    feeder_threads: Annotated[
        int | None, typer.Option("--feeder-threads", min=1, help="With --sources: sources share N threads.")
    ] = None,
    input_uri: Annotated[
        str | None, typer.Option("--input", help="With --sources: the input (default: config's).")
    ] = None,
    workers: Annotated[
        list[int] | None,
        typer.Option(
            "--workers",
            min=1,
            help="With --sources: also spread the sources over N worker processes (repeatable: 1 is this process).",
        ),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Run the pipeline and a baseline on the same input in one process; print fps and the ratio.

    The serial baseline is the same pipeline with concurrency off (`serial: true`) and batch-1 shapes.

    With --sources N: the pipeline over N copies of its input against the raw decode ceiling.
    """
    from streamflow.cli.bench import BenchError, run_bench
    from streamflow.config import ConfigError
    from streamflow.preflight import PreflightError, ensure_output_folder

    _configure_logging(verbose)
    if sources:
        _bench_sources(
            config,
            sources,
            frames_per_source,
            warmup,
            raw_threads,
            realtime,
            feeder_threads,
            input_uri,
            set_ or [],
            json_path,
            verbose,
            workers or [1],
        )
        return
    if baseline not in ("serial", "none"):
        raise _fail(f"--baseline must be 'serial' or 'none', got {baseline!r}", EXIT_CONFIG)
    try:
        if json_path:
            ensure_output_folder(json_path, owner="--json")
        result = run_bench(
            config,
            frames=frames,
            warmup=warmup,
            baseline=baseline,
            overrides=set_ or [],
            baseline_overrides=baseline_set or [],
            repeat=repeat,
        )
    except (ConfigError, PreflightError) as error:
        raise _fail(str(error), EXIT_CONFIG) from None
    except BenchError as error:
        raise _fail(str(error), EXIT_FAILURE) from None
    except Exception as error:
        if verbose:
            err.print_exception()
        raise _fail(_describe_failure(error), EXIT_FAILURE) from None
    result.print(out)
    if json_path:
        _write_stats(json_path, result.to_dict())


def _bench_sources(
    config: Path,
    counts: list[int],
    frames_per_source: int,
    warmup: int,
    raw_threads: str,
    realtime: bool,
    feeder_threads: int | None,
    input_uri: str | None,
    overrides: list[str],
    json_path: Path | None,
    verbose: bool,
    workers: list[int],
) -> None:
    from streamflow.cli.multibench import run_sources_bench
    from streamflow.cli.report import sources_bench_table
    from streamflow.config import ConfigError
    from streamflow.preflight import PreflightError, ensure_output_folder

    try:
        threads = [int(t) for t in raw_threads.split(",") if t.strip()]
    except ValueError:
        raise _fail(f"--raw-threads must be numbers separated by commas, got {raw_threads!r}", EXIT_CONFIG) from None
    try:
        if json_path:
            ensure_output_folder(json_path, owner="--json")
        result = run_sources_bench(
            config,
            counts,
            uri=input_uri,
            frames_per_source=frames_per_source,
            warmup=warmup,
            realtime=realtime,
            raw_threads=threads,
            overrides=overrides,
            feeder_threads=feeder_threads,
            workers=workers,
        )
    except (ConfigError, PreflightError) as error:
        raise _fail(str(error), EXIT_CONFIG) from None
    except Exception as error:
        if verbose:
            err.print_exception()
        raise _fail(_describe_failure(error), EXIT_FAILURE) from None
    out.print(sources_bench_table(result))
    if json_path:
        _write_stats(json_path, result.to_dict())


register_build_engine(app)


def main() -> None:
    sys.argv[1:] = _bare_ray_flag(sys.argv[1:])
    # A process started in the background by a shell without job control inherits SIGINT ignored, and
    # Python then leaves it ignored: Ctrl-C (or kill -INT) would be lost while a pipeline is built, yet
    # honoured once it runs (the runner installs its own handlers). One rule for every command.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before a command could install its own handling
        err.print("[bold red]error:[/] interrupted", highlight=False)
        sys.exit(SIGNAL_EXIT["SIGINT"])


def _bare_ray_flag(args: list[str]) -> list[str]:
    """`--ray` without an address (last, or before an option or the config file) means `--ray local`."""
    result = list(args)
    for at, arg in enumerate(result):
        if arg != "--ray":
            continue
        following = result[at + 1] if at + 1 < len(result) else None
        if following is None or following.startswith("-") or following.endswith((".yaml", ".yml")):
            result.insert(at + 1, "local")
        break
    return result


if __name__ == "__main__":
    main()
