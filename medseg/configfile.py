"""YAML/JSON config files validated by pydantic, with one-line errors that name the file and the key.

Unknown keys are errors with a close-match suggestion (`windos` -> did you mean 'windows'?).
"""

from __future__ import annotations

import difflib
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from medseg.errors import ConfigError, InputError

__all__ = ["ConfigSchemaError", "format_validation_error", "load_config", "read_mapping", "validate_config"]

M = TypeVar("M", bound=BaseModel)


class ConfigSchemaError(ConfigError):
    """A config does not match its schema; `errors` holds one line per problem."""

    def __init__(self, errors: list[str], path: str | os.PathLike[str] | None = None) -> None:
        self.errors = errors
        message = errors[0] if len(errors) == 1 else f"{len(errors)} schema errors:\n  " + "\n  ".join(errors)
        super().__init__(message, path)


def read_mapping(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """Parse a YAML (or `.json`) file that must hold a mapping; errors give line and column."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError("no such file", path) from exc
    except IsADirectoryError as exc:
        raise InputError(f"is a folder, not a {what} file", path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", path) from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{where}: {problem}", path) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} must be a mapping at the top level, found {type(data).__name__}", path)
    return data


def validate_config(model: type[M], data: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> M:
    """`model.model_validate(data)` with errors as `ConfigSchemaError` lines."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigSchemaError([format_validation_error(error, model) for error in exc.errors()], path) from None


def load_config(model: type[M], path: str | os.PathLike[str], what: str = "config") -> M:
    """Read and validate a config file."""
    return validate_config(model, read_mapping(path, what), path)


def _format_loc(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _model_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model found by following `loc` from `root` (None when it leaves models)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _unwrap_model(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, dict, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def format_validation_error(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One line for one pydantic error: location, problem, and a suggestion for unknown keys."""
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(root, loc[:-1])
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(model.model_fields)})"
        return f"{_format_loc(loc[:-1])}: unknown key '{key}'{hint}"
    if kind == "missing":
        return f"{_format_loc(loc[:-1])}: missing required key '{loc[-1]}'"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if kind.startswith("value_error") or isinstance(value, (dict, list)) else f" (got {value!r:.60})"
    return f"{_format_loc(loc)}: {message}{shown}"
