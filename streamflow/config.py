"""YAML pipeline configs: load, expand `${VAR}`, validate every stage, build a `Pipeline`.

Shape::

    name: face_detect
    device: auto          # auto | cpu | cuda | cuda:N
    queue_size: 4         # default bound of every edge
    watchdog_s: 10        # optional: warn when one hook call takes longer (per stage too)
    stop_timeout_s: 60    # optional: after a stop (signal, error), abandon stages still busy this long
    strict_frames: false  # true: a source that delivers fewer frames than it states fails the run
    serial: false         # true: one item at a time through every stage, no overlap (one source only)
    stages:
      - name: source      # unique
        type: decode      # a registered stage type, or "package.module:ClassName"
        uri: input.mp4    # options sit beside name/type and are validated by the stage's Config
      - name: infer
        type: infer
        queue_size: 8     # per-stage: queue_size, overflow, batch_size, batch_timeout_ms, device, watchdog_s
    sources:              # optional: many inputs, each built from the first stage as a template
      - {id: cam1, uri: rtsp://10.0.0.7/live}     # type from the scheme: rtsp
      - {id: lobby, uri: lobby.mp4, loop: true}   # else decode; options of that type beside id/uri
    max_sources: 64       # limit for sources added at run time too
    feeder_threads: 8     # optional: sources share 8 threads instead of one each

Every problem is a `ConfigError` whose message is one line naming the file, the stage and the
field, with the closest valid name for a typo. Duplicate keys are errors, and a file may not exceed
`MAX_CONFIG_BYTES`, `MAX_STAGES`, `MAX_CONFIG_DEPTH` or `MAX_CONFIG_NODES` (after aliases expand).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.yaml"
    >>> _ = path.write_text("name: t\\nstages:\\n  - {name: src, type: 'streamflow.testing:ListSource'}\\n")
    >>> load_config(path).stages[0].name
    'src'
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamflow.cluster.config import ClusterConfig
from streamflow.observers import Observer
from streamflow.pipeline import DEFAULT_STOP_TIMEOUT_S, Pipeline
from streamflow.registry import UnknownStageType, resolve_stage_type
from streamflow.sources import SourceSpec, SourceTemplate
from streamflow.stage import Overflow, Source, Stage

__all__ = ["ConfigError", "PipelineConfig", "StageSpec", "build_pipeline", "load_config", "parse_override"]

# Keys of a stage entry that belong to the runner; everything else is a stage option.
RUNNER_KEYS = ("name", "type", "queue_size", "overflow", "batch_size", "batch_timeout_ms", "device", "watchdog_s")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Bounds on what a config may be or expand to. Real pipelines are a few kB, a few hundred YAML
# nodes and well under a hundred stages; the bounds are far above that and far below what would
# take seconds or gigabytes (nested aliases can otherwise expand exponentially: "billion laughs").
MAX_CONFIG_BYTES = 256 << 10
MAX_CONFIG_NODES = 100_000  # after aliases are expanded
MAX_CONFIG_DEPTH = 64
MAX_STAGES = 1000
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _config_error_at(message: str, mark: yaml.Mark | None) -> ConfigError:
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return ConfigError(f"{where}{message}")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse recursive aliases and trees that expand past the bounds, without recursing."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in children)
            depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
            if size[key] > MAX_CONFIG_NODES:
                raise _config_error_at(
                    f"the config expands to more than {MAX_CONFIG_NODES} values (nested aliases?)", node.start_mark
                )
            if depth[key] > MAX_CONFIG_DEPTH:
                raise _config_error_at(f"nested more than {MAX_CONFIG_DEPTH} levels deep", node.start_mark)
            continue
        if key in size:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise _config_error_at("recursive alias: a node contains itself", child.start_mark)
            if id(child) not in size:
                stack.append((child, False))


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and alias bombs (see the bounds above)."""

    def compose_document(self) -> yaml.Node | None:
        node: yaml.Node | None = super().compose_document()  # type: ignore[no-untyped-call]
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise _config_error_at(f"duplicate key {key_node.value!r} in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-untyped-call,no-any-return]


class ConfigError(ValueError):
    """An invalid pipeline config. `str()` is one line: file, stage, field and what is wrong."""

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike[str] | None = None,
        stage: str | None = None,
        stage_type: str | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.stage = stage
        self.field = field
        parts = [p for p in (self.file,) if p]
        if stage is not None:
            parts.append(f"stage {stage!r}" + (f" ({stage_type})" if stage_type else ""))
        if field is not None:
            parts.append(f"field {field!r}")
        super().__init__(": ".join([*parts, message]))


class StageSpec(BaseModel):
    """One entry of `stages:`: runner settings plus the stage's own options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    queue_size: int | None = Field(default=None, ge=1)
    overflow: Overflow | None = None
    batch_size: int = Field(default=1, ge=1)
    batch_timeout_ms: float | None = Field(default=None, ge=0)
    device: str | None = None
    watchdog_s: float | None = Field(default=None, gt=0)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PipelineConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "pipeline"
    device: str = "auto"
    queue_size: int = Field(default=4, ge=1)
    overflow: Overflow | None = None
    max_frames: int | None = Field(default=None, ge=1)
    watchdog_s: float | None = Field(default=None, gt=0)
    stop_timeout_s: float | None = Field(default=DEFAULT_STOP_TIMEOUT_S, gt=0)
    strict_frames: bool = False
    # Concurrency off: the same runner, one item at a time through every stage (Pipeline(serial=True)).
    serial: bool = False
    stages: list[StageSpec] = Field(min_length=1)
    # Many inputs: each entry instantiates the first stage (the template) for one source.
    sources: list[SourceSpec] | None = None
    max_sources: int | None = Field(default=None, ge=1)
    feeder_threads: int | None = Field(default=None, ge=1)
    # Sources spread over Ray actors (`streamflow run --ray` also turns it on); see streamflow.cluster.
    cluster: ClusterConfig | None = None
    source_file: str | None = Field(default=None, exclude=True)


def expand_env(value: Any, *, where: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable ${{{name}}} is not set and has no default ({where})")

        return _VAR.sub(substitute, value)
    if isinstance(value, list):
        return [expand_env(v, where=where) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, where=f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    return value


def parse_override(text: str) -> tuple[str, list[str], Any]:
    """`STAGE.FIELD[.SUB]=VALUE` -> (stage, [field, sub...], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {text!r} must look like STAGE.FIELD=VALUE")
    try:
        value = yaml.load(raw, Loader=_ConfigLoader) if raw.strip() else ""  # same bounds as a file
    except (ConfigError, yaml.YAMLError, RecursionError) as error:
        raise ConfigError(f"override {text!r}: invalid value ({str(error).splitlines()[0]})") from None
    return parts[0], parts[1:], value


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _first_validation_error(error: ValidationError, choices: Sequence[str]) -> tuple[str, str]:
    """(field path, message) for the first pydantic error, with a typo suggestion."""
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(root)"
    if first["type"] == "extra_forbidden":
        leaf = str(first["loc"][-1])
        return field, "unknown option" + _suggest(leaf, choices)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] not in ("missing", "value_error") and "input" in first:
        message += f" (got {first['input']!r})"
    return field, message


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read, expand and validate a config file (top level and runner keys; options in `build`)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("config file not found", file=file)
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config is {file.stat().st_size} bytes; the limit is {MAX_CONFIG_BYTES}", file=file)
    try:
        raw = yaml.load(file.read_text(), Loader=_ConfigLoader)  # a SafeLoader subclass: no tags run code
    except ConfigError as error:
        raise ConfigError(str(error), file=file) from None
    except RecursionError:
        raise ConfigError(f"nested more than {MAX_CONFIG_DEPTH} levels deep", file=file) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"not UTF-8 text: byte 0x{error.object[error.start]:02x} at offset {error.start}", file=file
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"invalid YAML: {where}{problem}", file=file) from None
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping with 'name' and 'stages'", file=file)
    try:
        raw = expand_env(raw)
    except ConfigError as error:
        raise ConfigError(str(error), file=file) from None
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError("'stages' must be a non-empty list", file=file, field="stages")
    for index, entry in enumerate(stages_raw):
        if not isinstance(entry, dict):
            raise ConfigError(f"stage #{index + 1} must be a mapping with 'name' and 'type'", file=file)
        for key in ("name", "type"):
            if key not in entry:
                label = entry.get("name", f"#{index + 1}")
                raise ConfigError(f"missing required key {key!r}", file=file, stage=str(label), field=key)
        if entry["type"] is None:
            raise ConfigError(
                "no type: YAML reads an unquoted null as no value; the discarding sink is `type: discard`",
                file=file,
                stage=str(entry["name"]),
                field="type",
            )
    if len(stages_raw) > MAX_STAGES:
        raise ConfigError(f"{len(stages_raw)} stages; the limit is {MAX_STAGES}", file=file, field="stages")
    names = [str(entry["name"]) for entry in stages_raw]
    seen_names: set[str] = set()
    for name in names:
        if name in seen_names:
            raise ConfigError("duplicate stage name: stage names must be unique", file=file, stage=name, field="name")
        seen_names.add(name)
    for override in overrides:
        stage_name, keys, value = parse_override(override)
        if stage_name not in names:
            raise ConfigError(f"--set names unknown stage {stage_name!r}" + _suggest(stage_name, names), file=file)
        target = stages_raw[names.index(stage_name)]
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {override!r}: {key!r} is not a mapping", file=file, stage=stage_name)
        target[keys[-1]] = value
    try:
        return PipelineConfig(**raw, source_file=str(file))
    except ValidationError as error:
        first = error.errors()[0]
        loc = list(first["loc"])
        if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int):
            stage = names[loc[1]]
            field, message = _first_validation_error(error, RUNNER_KEYS)
            field = ".".join(str(p) for p in loc[2:]) or field
            raise ConfigError(message, file=file, stage=stage, field=field) from None
        field, message = _first_validation_error(error, list(PipelineConfig.model_fields))
        raise ConfigError(message, file=file, field=field) from None
    except TypeError as error:
        raise ConfigError(str(error), file=file) from None


def build_stage(spec: StageSpec, *, file: str | None = None) -> Stage:
    """Instantiate and validate one stage from its spec (no GPU memory is touched)."""
    # `module:Class` types are also looked for beside the config file and in the working directory.
    search = [Path(file).parent] if file else []
    try:
        cls = resolve_stage_type(spec.type, [*search, Path.cwd()])
    except UnknownStageType as error:
        raise ConfigError(str(error), file=file, stage=spec.name, field="type") from None
    try:
        return cls(
            name=spec.name,
            queue_size=spec.queue_size,
            overflow=spec.overflow,
            batch_size=spec.batch_size,
            batch_timeout_ms=spec.batch_timeout_ms,
            device=spec.device,
            watchdog_s=spec.watchdog_s,
            **spec.options,
        )
    except ValidationError as error:
        field, message = _first_validation_error(error, [*cls.Config.model_fields, *RUNNER_KEYS[2:]])
        raise ConfigError(message, file=file, stage=spec.name, stage_type=spec.type, field=field) from None
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error), file=file, stage=spec.name, stage_type=spec.type) from None


def _source_template(spec: StageSpec, *, file: str | None) -> SourceTemplate:
    """The first stage as the template of a `sources:` list: its options apply to every source.

    Its options are checked when each source is built (against that source's type), so the
    template itself needs no uri.
    """
    try:
        cls = resolve_stage_type(spec.type)
    except UnknownStageType as error:
        raise ConfigError(str(error), file=file, stage=spec.name, field="type") from None
    if not issubclass(cls, Source):
        raise ConfigError("the first stage must be a source (decode, rtsp...)", file=file, stage=spec.name)
    return SourceTemplate(
        spec.type,
        spec.options,
        name=spec.name,
        queue_size=spec.queue_size,
        overflow=spec.overflow,
        device=spec.device,
    )


def build_pipeline(
    config: PipelineConfig | str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    observers: Sequence[Observer] = (),
    max_frames: int | None = None,
    sources: Sequence[SourceSpec] | None = None,
) -> Pipeline:
    """A ready-to-run `Pipeline` from a config (object or path); every stage validated first.

    `sources` (from the command line) replaces the config's own `sources:` list.
    """
    if not isinstance(config, PipelineConfig):
        config = load_config(config, overrides)
    specs = list(sources) if sources else config.sources
    first, *rest = config.stages
    head = _source_template(first, file=config.source_file) if specs else build_stage(first, file=config.source_file)
    stages = [head, *(build_stage(spec, file=config.source_file) for spec in rest)]
    try:
        pipeline = Pipeline(
            stages,
            name=config.name,
            device=config.device,
            queue_size=config.queue_size,
            overflow=config.overflow,
            observers=observers,
            max_frames=max_frames if max_frames is not None else config.max_frames,
            watchdog_s=config.watchdog_s,
            stop_timeout_s=config.stop_timeout_s,
            strict_frames=config.strict_frames,
            sources=specs,
            max_sources=config.max_sources,
            feeder_threads=config.feeder_threads,
            serial=config.serial,
        )
    except ValueError as error:
        raise ConfigError(str(error), file=config.source_file) from None
    if config.source_file is not None:
        pipeline.input_files.append(config.source_file)
    return pipeline


def stage_options(cls: type[Stage]) -> Mapping[str, tuple[Any, Any, str]]:
    """Option name -> (annotation, default or `REQUIRED`, description) for `streamflow stages`."""
    result: dict[str, tuple[Any, Any, str]] = {}
    for name, info in cls.Config.model_fields.items():
        default = REQUIRED if info.is_required() else info.get_default(call_default_factory=True)
        result[name] = (info.annotation, default, info.description or "")
    return result


#: The default of an option that has none: the config must set it.
REQUIRED = object()
