"""Source specs: many inputs through one pipeline, each built from the config's source stage as a template.

A `SourceSpec` names one input: `id` (unique; it becomes every frame's `source_id` and fills
`{source}` in sink paths), `uri`, an optional stage `type` and that type's options (loop, start,
end, max_frames, realtime, transport...). The type comes from the uri when not given: `rtsp://` and
`rtsps://` are live cameras (`rtsp`), anything else a file or stream for `decode`. The pipeline's
first stage is the template: its options that the chosen type also has (format, emit_batch,
backend...) apply to every source, and a spec's own options override them.

Example:
    >>> spec = parse_source_arg("cam1=rtsp://user:pw@10.0.0.7/live")
    >>> spec.id, source_type_for(spec.uri)
    ('cam1', 'rtsp')
    >>> SourceSpec(id="a", uri="clip.mp4", loop=True).options
    {'loop': True}
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamflow.frame import Item
from streamflow.registry import resolve_stage_type
from streamflow.stage import Source, Stage
from streamflow.uri import redact_uri

__all__ = [
    "SOURCE_ID_PATTERN",
    "SourceSpec",
    "SourceSpecError",
    "SourceTemplate",
    "build_source",
    "parse_source_arg",
    "read_sources_file",
    "source_id_of",
    "source_type_for",
]

#: Ids fill `{source}` in output paths: no separators, nothing a shell or file system treats specially.
SOURCE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_LIVE_SCHEMES = ("rtsp://", "rtsps://")
# Keys a spec sets itself; a template's value for them never carries over.
_OWN_KEYS = ("uri", "source_id")


class SourceSpec(BaseModel):
    """One input: id, uri, optional stage type, and that type's options beside them."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(pattern=SOURCE_ID_PATTERN)
    uri: str = Field(min_length=1, repr=False)
    type: str | None = Field(default=None, description="default: rtsp for rtsp(s):// uris, else decode")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def display_uri(self) -> str:
        return redact_uri(self.uri)

    def __repr_args__(self) -> Any:
        yield "id", self.id
        yield "uri", self.display_uri


def source_type_for(uri: str) -> str:
    """The stage type that reads `uri`: `rtsp` for live cameras, else `decode`."""
    return "rtsp" if uri.lower().startswith(_LIVE_SCHEMES) else "decode"


def source_id_of(stage: Source) -> str:
    """The id a source stage stamps on its frames (its `source_id` option, else its name)."""
    configured = getattr(stage.config, "source_id", None)
    return str(configured) if configured else stage.name


class SourceTemplate(Source):
    """The config's source stage when a `sources:` list supplies the inputs: options kept, never run.

    Its options are checked only against the type each source turns out to have (a template that
    names no uri is fine), so they stay a plain mapping here.
    """

    def __init__(self, type_name: str, options: Mapping[str, Any], **runner: Any) -> None:
        super().__init__(**runner)
        self.type_name = type_name
        self.options = dict(options)

    def generate(self) -> Iterator[Item]:
        raise TypeError(f"source template {self.name!r} only describes sources; it does not run")

    def __repr__(self) -> str:
        return f"SourceTemplate(name={self.name!r}, type={self.type_name!r})"


def _template_options(template: Stage) -> dict[str, Any]:
    if isinstance(template, SourceTemplate):
        return dict(template.options)
    # JSON mode: plain values, so an option of one type's enum (decode's format) validates as another's.
    return template.config.model_dump(mode="json", exclude_unset=True)


def build_source(spec: SourceSpec, template: Stage) -> Source:
    """A source stage for `spec`, with the template's options that its type shares.

    Raises `pydantic.ValidationError` (bad option), `TypeError`/`ValueError` (the stage refused
    it) or `LookupError` (unknown type), each naming the problem; nothing is opened here.
    """
    cls = resolve_stage_type(spec.type or source_type_for(spec.uri))
    if not issubclass(cls, Source):
        raise TypeError(f"source {spec.id!r}: stage type {spec.type!r} is not a source")
    fields = cls.Config.model_fields
    shared = _template_options(template).items()
    options = {key: value for key, value in shared if key in fields and key not in _OWN_KEYS}
    options.update(spec.options)
    options["uri"] = spec.uri
    if "source_id" in fields:
        options["source_id"] = spec.id
    # Runner settings of the template (queue bound, overflow, device) apply to every source.
    try:
        return cls(
            name=f"{template.name}[{spec.id}]",
            queue_size=template.queue_size,
            overflow=template.overflow,
            device=template.device_spec,
            **options,
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(root)"
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(first["loc"][-1]), list(fields), n=1)
            message = "unknown option" + (f"; did you mean {close[0]!r}?" if close else "")
        raise SourceSpecError(spec.id, field, message) from None


class SourceSpecError(ValueError):
    """A spec the source's type refuses: `field` names the option (`uri` for an input that is missing)."""

    def __init__(self, source_id: str, field: str, message: str) -> None:
        self.source_id, self.field, self.reason = source_id, field, message
        super().__init__(f"source {source_id!r}: field {field!r}: {message}")


def parse_source_arg(text: str, *, default_id: str | None = None) -> SourceSpec:
    """`ID=URI` (or a bare `URI` when `default_id` is given) as a spec.

    A bare uri that holds `=` (a query string) needs the `ID=` prefix; `://` before the first `=`
    marks a bare uri.
    """
    text = text.strip()
    key, sep, rest = text.partition("=")
    if sep and "://" not in key and "/" not in key:
        return SourceSpec(id=key.strip(), uri=rest.strip())
    if default_id is None:
        raise ValueError(f"source {redact_uri(text)!r} must look like ID=URI")
    return SourceSpec(id=default_id, uri=text)


def read_sources_file(path: str | os.PathLike[str]) -> list[SourceSpec]:
    """One source a line: `URI` or `ID=URI`; blank lines and `#` comments skipped; bare uris get `s<line>`."""
    file = Path(path)
    specs: list[SourceSpec] = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            specs.append(parse_source_arg(line, default_id=f"s{number}"))
        except (ValueError, ValidationError) as error:
            raise ValueError(f"{file}: line {number}: {_one_line(error)}") from None
    return specs


def _one_line(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        return f"field {field!r}: {first['msg']}"
    return str(error)
