"""Finding stage classes by type name.

Built-in stages register exactly as a third-party package would: an entry point in the
`streamflow.stages` group (see pyproject.toml), so the core never imports `stages/`. A config may
also name any class directly as `package.module:ClassName`. Such a module is imported as Python
would (installed packages, PYTHONPATH) and, when that finds nothing, from the config file's folder
and then the working directory: `type: mymodule:Brighten` next to the config just works.

Example:
    >>> resolve_stage_type("streamflow.testing:ListSink").__name__
    'ListSink'
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

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


def _import_module(module_name: str, search_paths: Sequence[Path]) -> ModuleType:
    """Import `module_name`; if Python's own path has no such module, look in `search_paths` too."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        top = module_name.partition(".")[0]
        if error.name != top or not search_paths:
            raise  # found, but something it imports is missing: that error is the one to show
    folders = [str(Path(p).resolve()) for p in search_paths]
    added = [folder for folder in dict.fromkeys(folders) if folder not in sys.path]
    # Only for this import: the folders are not left on sys.path for unrelated imports to find.
    sys.path[len(sys.path) : len(sys.path)] = added
    try:
        return importlib.import_module(module_name)
    finally:
        for folder in added:
            sys.path.remove(folder)


def resolve_stage_type(type_name: str, search_paths: Sequence[Path] = ()) -> type[Stage]:
    """The stage class for a registered type name or a `module:Class` path.

    `search_paths`: folders where a `module:Class` module is looked for when Python's path has no
    such module (the config's folder and the working directory, as `build_pipeline` passes them).
    """
    if ":" in type_name:
        module_name, _, attr = type_name.partition(":")
        try:
            module = _import_module(module_name, search_paths)
        except ImportError as error:
            where = ", ".join(str(p) for p in dict.fromkeys(search_paths))
            looked = f" (looked on the Python path and in {where})" if where else ""
            raise UnknownStageType(
                f"cannot import module {module_name!r} for stage type {type_name!r}: {error}{looked}"
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
