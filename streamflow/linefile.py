"""An append-only file of whole lines: what it holds always ends at a complete line.

A write can fail half-way (disk full, file-size limit, quota, I/O error). `LineFile` then cuts the
file back to the end of the last complete line before it raises, so a reader never sees half a
record, and the error says how many complete lines were kept.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "l.jsonl"
    >>> with LineFile(path) as lines:
    ...     lines.write_line(b'{"a": 1}\\n')
    >>> path.read_bytes()
    b'{"a": 1}\\n'
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType

__all__ = ["LineFile", "LineWriteError"]


class LineWriteError(OSError):
    """A line could not be written; the file was cut back to its last complete line."""


class LineFile:
    """Create (or truncate) `path`; `write_line()` appends one complete line or nothing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        self.size = 0  # bytes of complete lines
        self.lines = 0

    def write_line(self, data: bytes) -> None:
        """Append `data` (one line, ending in a newline) with unbuffered writes: readers see it at once."""
        if self._fd is None:
            raise ValueError(f"{self.path!r} is closed")
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                written = os.write(self._fd, view[done:])
                if written <= 0:
                    raise OSError(f"the system accepted no bytes after {done} of {len(data)}")
                done += written
        except OSError as error:
            if done:
                # Half a line reached the file: take it back, so the file ends at a complete line.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)
                    os.lseek(self._fd, self.size, os.SEEK_SET)
            reason = error.strerror or str(error)
            failure = LineWriteError(f"cannot write {self.path!r}: {reason} (kept {self.lines} complete lines)")
            failure.errno = error.errno
            raise failure from None
        self.size += len(data)
        self.lines += 1

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> LineFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
