"""Typed errors: every user-facing failure names the file and the problem."""

from __future__ import annotations

import errno
from os import PathLike

__all__ = [
    "INTERNAL_ERROR",
    "ConfigError",
    "DicomError",
    "GeometryError",
    "InputError",
    "MedsegError",
    "one_line_reason",
]


class MedsegError(Exception):
    """Base class for errors medseg reports to the user as one clear line."""

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InputError(MedsegError):
    """The input cannot be used: missing, unreadable, wrong kind of data."""


class DicomError(InputError):
    """A DICOM file or series is malformed or cannot be decoded."""


class GeometryError(InputError):
    """Slices do not form a valid volume (gaps, duplicates, tilt, mixed sizes)."""


class ConfigError(MedsegError):
    """A configuration file or option is invalid."""


INTERNAL_ERROR = "internal error"
"""Prefix of the one-line message for an unexpected exception (a bug to report, not a user error)."""


def _first_line(text: str, limit: int = 500) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[-1] if lines and lines[0].startswith("Traceback") else (lines[0] if lines else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def one_line_reason(exc: BaseException) -> str:
    """A single line saying what went wrong, for the CLI and for a failed case in run.json."""
    if isinstance(exc, MedsegError):
        text = str(exc)
        return text if "\n" not in text else _first_line(text)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        if exc.errno == errno.ENOSPC:
            return f"{where}no space left on device"
        return f"{where}{_first_line(exc.strerror or str(exc) or type(exc).__name__)}"
    if isinstance(exc, MemoryError):
        return "out of memory (the input is larger than this machine can hold; see --debug)"
    detail = _first_line(str(exc))
    return f"{INTERNAL_ERROR}: {type(exc).__name__}" + (f": {detail}" if detail else "")
