"""Per-source outputs for sinks: `out/{source}.mp4` opens one writer per source id.

A sink whose path holds `{source}` keeps one writer per source, opened with that source's first
frame and closed on that source's end of stream (`end_source`), so a source that ends, fails or
is removed has its file finalized while the others go on. A path without the placeholder is one
writer for everything.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> outputs = PerSourceOutputs(folder + "/{source}.jsonl", open_writer=lambda p: [p], close_writer=list.clear)
    >>> outputs.writer("cam1") == [folder + "/cam1.jsonl"]
    True
    >>> outputs.close("cam1"); outputs.open_ids
    []
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["PLACEHOLDER", "PerSourceOutputs", "check_path_template", "is_per_source"]

PLACEHOLDER = "{source}"
W = TypeVar("W")


def is_per_source(path: str) -> bool:
    return PLACEHOLDER in path


def check_path_template(path: str) -> str:
    """`path` if its only `{...}` field is `{source}` (for a config validator), else ValueError."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(path) if name is not None}
    except ValueError as error:
        raise ValueError(f"path {path!r}: {error} (write a literal brace as {{{{ or }}}})") from None
    unknown = fields - {"source"}
    if unknown:
        raise ValueError(f"path {path!r}: unknown placeholder {{{sorted(unknown)[0]}}}; only {PLACEHOLDER} exists")
    return path


class PerSourceOutputs(Generic[W]):
    """Writers keyed by source id (or one shared writer when the path has no `{source}`)."""

    def __init__(self, path: str, *, open_writer: Callable[[str], W], close_writer: Callable[[W], object]) -> None:
        self.path = path
        self.per_source = is_per_source(path)
        self._open = open_writer
        self._close = close_writer
        self._writers: dict[str, W] = {}

    def path_for(self, source_id: str) -> str:
        return self.path.replace(PLACEHOLDER, source_id) if self.per_source else self.path

    def writer(self, source_id: str, opener: Callable[[str], W] | None = None) -> W:
        """The writer for `source_id`, opened on first use (with `opener` when given)."""
        key = source_id if self.per_source else ""
        writer = self._writers.get(key)
        if writer is None:
            path = self.path_for(source_id)
            parent = Path(path).parent
            if not parent.is_dir():
                raise FileNotFoundError(f"cannot write {path!r}: directory {str(parent)!r} does not exist")
            writer = self._writers[key] = (opener or self._open)(path)
        return writer

    @property
    def open_ids(self) -> list[str]:
        return list(self._writers)

    def close(self, source_id: str) -> None:
        """Finalize one source's writer (nothing for a shared one: other sources still write)."""
        if self.per_source:
            writer = self._writers.pop(source_id, None)
            if writer is not None:
                self._close(writer)

    def close_all(self) -> None:
        """Finalize every writer; all are tried, the first failure is raised after."""
        first: BaseException | None = None
        while self._writers:
            _, writer = self._writers.popitem()
            try:
                self._close(writer)
            except Exception as error:
                first = first or error
        if first is not None:
            raise first
