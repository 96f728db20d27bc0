"""Typed errors: every user-facing failure names the file and the problem."""

from __future__ import annotations

from os import PathLike

__all__ = [
    "ConfigError",
    "DicomError",
    "GeometryError",
    "InputError",
    "MedsegError",
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
