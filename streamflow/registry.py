"""Finding stage classes by type name.

Built-in stages register exactly as a third-party package would: an entry point in the
`streamflow.stages` group (see pyproject.toml), so the core never imports `stages/`. A config may
also name any class directly as `package.module:ClassName`.

Example:
    >>> resolve_stage_type("streamflow.testing:ListSink").__name__
    'ListSink'
"""

from __future__ import annotations

import difflib
import importlib
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from streamflow.stage import Stage

__all__ = ["ENTRY_POINT_GROUP", "UnknownStageType", "registered_types", "resolve_stage_type"]

ENTRY_POINT_GROUP = "streamflow.stages"


class UnknownStageType(LookupError):
    """No stage type of that name; the message suggests the closest registered ones."""


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def registered_types() -> list[str]:
    """Names of all registered stage types, sorted."""
    return sorted(_entry_points())


def resolve_stage_type(type_name: str) -> type[Stage]:
    """The stage class for a registered type name or a `module:Class` path."""
    if ":" in type_name:
        module_name, _, attr = type_name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UnknownStageType(
                f"cannot import module {module_name!r} for stage type {type_name!r}: {error}"
            ) from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise UnknownStageType(f"module {module_name!r} has no attribute {attr!r}")
    else:
        ep = _entry_points().get(type_name)
        if ep is None:
            close = difflib.get_close_matches(type_name, registered_types(), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(registered_types()) or "none (is the package installed?)"
            raise UnknownStageType(f"unknown stage type {type_name!r}{hint} (registered: {known})")
        cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise UnknownStageType(f"{type_name!r} is not a streamflow Stage subclass")
    return cls
