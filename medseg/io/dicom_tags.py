"""DICOM element values as plain, JSON-friendly Python values."""

from __future__ import annotations

from typing import Any

from pydicom.multival import MultiValue

__all__ = ["plain_tag_value"]


def plain_tag_value(value: Any) -> Any:
    """None for absent/empty, int/float for numbers, lists for multi-values, str for everything else."""
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        return [plain_tag_value(v) for v in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)
