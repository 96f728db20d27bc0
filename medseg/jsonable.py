"""Plain JSON types from nested Python/numpy/torch values (manifests, model cards, recorded arguments)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["dumps_json", "finite_json", "to_json_types"]


def to_json_types(value: Any, where: str = "value", *, strict: bool = False) -> Any:
    """`value` with str keys, lists for tuples, POSIX strings for paths, numbers for numpy/torch scalars and
    lists for arrays. Other types are returned as they are, or refused (`ValueError` naming `where`) when
    `strict`."""
    if isinstance(value, Mapping):
        return {str(k): to_json_types(v, f"{where}.{k}", strict=strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_types(v, f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return Path(value).as_posix()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays/scalars (np.float64 is a float), torch
        return to_json_types(value.tolist(), where, strict=strict)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if strict:
        raise ValueError(f"{where}: {type(value).__name__} is not JSON-serialisable")
    return value


def finite_json(value: Any) -> Any:
    """`value` with every NaN / Infinity float replaced by None (JSON has no such numbers; `json.dumps` would
    write bare `NaN`, which strict readers refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps_json(value: Any, *, indent: int | None = 2, default: Any = str) -> str:
    """Strict JSON text of `value`: numpy/torch/path values made plain, non-finite numbers written as null."""
    return json.dumps(finite_json(to_json_types(value)), indent=indent, default=default, allow_nan=False)
