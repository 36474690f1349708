"""Cheap checks that run before any stage sets up: files read and written, devices.

`check_pipeline_files()` resolves every local path a stage declares (`Stage.input_paths()` /
`output_paths()`, plus extra inputs such as the config file) with symlinks and `./` spellings
followed, and refuses:

- an output that is also an input (writing would destroy it) or another stage's output,
- an input that is not a regular file (`/dev/zero`, `/dev/urandom`) or a kernel pseudo-file
  (`/proc/...`, `/sys/...`): no video can be read from those,
- an output folder that can't be created, or a folder or file that can't be written.

Missing output folders are created (`create_folders=True`, what `run` does) or only checked to be
creatable (`validate`). Every problem is a `PreflightError` with one line naming the stage and the
path(s). Nothing here opens a file for writing, so a refused run leaves every file as it was.

Example:
    >>> import tempfile, pathlib
    >>> from streamflow.testing import ListSource
    >>> from stages.jsonl import JsonlSink
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> sink = JsonlSink(path=str(folder / "new" / "d.jsonl"), name="sink")
    >>> check_pipeline_files([ListSource([]), sink])
    >>> (folder / "new").is_dir()
    True
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from streamflow.stage import Stage, resolve_device

__all__ = ["PreflightError", "check_pipeline_files", "ensure_output_folder", "file_kind", "is_kernel_pseudo_file"]

# Kernel pseudo-filesystems: their files look regular (often 0 bytes) but hold no media.
_PSEUDO_ROOTS = ("/proc/", "/sys/")


class PreflightError(ValueError):
    """A path or device problem found before anything runs (exit code 2 from the CLI)."""


def _resolved(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def file_kind(mode: int) -> str:
    """What a non-regular file is, from its `st_mode`, for messages ("a character device")."""
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def is_kernel_pseudo_file(path: str | os.PathLike[str]) -> bool:
    """True for files under /proc and /sys: they look regular (often 0 bytes) but hold no media."""
    return _resolved(str(path)).startswith(_PSEUDO_ROOTS)


def _check_input(owner: str, path: str, resolved: str) -> None:
    try:
        info = os.stat(resolved)
    except OSError:
        return  # missing inputs are reported by the stage's own config validation, with its field
    if not stat.S_ISREG(info.st_mode):
        raise PreflightError(f"{owner}: input {path!r} is {file_kind(info.st_mode)}, not a file that can be read")
    if is_kernel_pseudo_file(resolved):
        raise PreflightError(f"{owner}: input {path!r} is a kernel pseudo-file ({resolved}), not a media file")


def ensure_output_folder(path: str | os.PathLike[str], *, create: bool = True, owner: str | None = None) -> None:
    """Make sure `path` can be written: its folder exists (created when `create`) and is writable.

    Raises `PreflightError` with one line when it can't (read-only folder, a file in the way...).
    """
    shown = str(path)
    where = f"{owner}: " if owner else ""
    target = Path(_resolved(shown))
    if target.exists():
        if target.is_dir():
            raise PreflightError(f"{where}cannot write {shown!r}: it is a directory")
        if not os.access(target, os.W_OK):
            raise PreflightError(f"{where}cannot write {shown!r}: permission denied")
    folder = target.parent
    # The nearest existing ancestor decides whether the missing part can be created.
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PreflightError(f"{where}cannot create the folder of {shown!r}: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "write into" if existing == folder else "create folders in"
        raise PreflightError(f"{where}cannot {verb} {str(existing)!r} for {shown!r}: permission denied")
    if create and existing != folder:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PreflightError(
                f"{where}cannot create the folder {str(folder)!r} for {shown!r}: {error.strerror or error}"
            ) from None


def check_pipeline_files(
    stages: Sequence[Stage],
    *,
    extra_inputs: Iterable[str] = (),
    extra_outputs: Iterable[tuple[str, str]] = (),
    create_folders: bool = True,
    source_ids: Sequence[str] = (),
) -> None:
    """Refuse outputs that clash with inputs or each other; check inputs; prepare output folders.

    `extra_inputs` are files read besides the stages' own (the config file); `extra_outputs` are
    (owner, path) pairs written besides theirs (a statistics file). An output path holding
    `{source}` is checked as each of `source_ids` fills it (a source added later has its folders
    made when its file opens); the placeholder itself never becomes a folder."""
    # Imported here: streamflow.per_source uses ensure_output_folder from this module.
    from streamflow.per_source import PerSourceOutputs

    def per_source(path: str) -> list[str]:
        outputs = PerSourceOutputs[None](path, open_writer=lambda _: None, close_writer=lambda _: None)
        return [outputs.path_for(source_id) for source_id in source_ids] if outputs.per_source else [path]

    for stage in stages:
        if stage.device_spec not in (None, "auto"):
            try:
                resolve_device(stage.device_spec)
            except ValueError as error:
                raise PreflightError(f"stage {stage.name!r}: {error}") from None
    inputs: dict[str, tuple[str, str]] = {}  # resolved -> (owner, as written)
    for path in extra_inputs:
        inputs.setdefault(_resolved(path), ("config", path))
    for stage in stages:
        for path in stage.input_paths():
            resolved = _resolved(path)
            _check_input(f"stage {stage.name!r}", path, resolved)
            inputs.setdefault(resolved, (f"stage {stage.name!r}", path))
    outputs: dict[str, tuple[str, str]] = {}
    declared = [
        (f"stage {stage.name!r}", each)
        for stage in stages
        for path in stage.output_paths()
        for each in per_source(path)
    ]
    for owner, path in [*declared, *extra_outputs]:
        resolved = _resolved(path)
        clash = inputs.get(resolved)
        if clash is not None:
            raise PreflightError(
                f"{owner}: output {path!r} is the input {clash[1]!r} of {clash[0]} ({resolved}); "
                "writing it would destroy the input"
            )
        clash = outputs.get(resolved)
        if clash is not None:
            raise PreflightError(f"{owner}: output {path!r} is also the output {clash[1]!r} of {clash[0]}")
        outputs[resolved] = (owner, path)
        ensure_output_folder(path, create=create_folders, owner=owner)
