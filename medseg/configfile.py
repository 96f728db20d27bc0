"""YAML/JSON config files validated by pydantic, with one-line errors that name the file and the key.

Unknown keys are errors with a close-match suggestion (`windos` -> did you mean 'windows'?).
"""

from __future__ import annotations

import difflib
import json
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from medseg.errors import ConfigError, InputError

__all__ = ["ConfigSchemaError", "format_validation_error", "key_lines", "load_config", "read_mapping",
           "validate_config"]

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


def validate_config(model: type[M], data: Mapping[str, Any], path: str | os.PathLike[str] | None = None,
                    lines: Mapping[tuple[Any, ...], int] | None = None) -> M:
    """`model.model_validate(data)` with errors as `ConfigSchemaError` lines (`line N: ...` given `lines`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigSchemaError([_with_line(format_validation_error(error, model), error["loc"], lines)
                                 for error in exc.errors()], path) from None


def load_config(model: type[M], path: str | os.PathLike[str], what: str = "config") -> M:
    """Read and validate a config file; schema errors name the YAML line."""
    return validate_config(model, read_mapping(path, what), path, key_lines(path))


def key_lines(path: str | os.PathLike[str]) -> dict[tuple[Any, ...], int]:
    """1-based line of every key / list item in a YAML file, by its path (`("steps", 1, "model")`).

    Empty for JSON or unreadable files (line numbers are a convenience, never a new error).
    """
    import yaml

    path = Path(path)
    if path.suffix.lower() == ".json":
        return {}
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: Any, where: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*where, key.value)
                lines[here] = key.start_mark.line + 1
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*where, index)] = item.start_mark.line + 1
                walk(item, (*where, index))

    if root is not None:
        walk(root, ())
    return lines


def _with_line(message: str, loc: Sequence[Any], lines: Mapping[tuple[Any, ...], int] | None) -> str:
    """Prefix `line N: ` from the longest prefix of `loc` found in the file (tags of unions may be absent)."""
    if not lines:
        return message
    parts = tuple(loc)
    for end in range(len(parts), 0, -1):
        line = lines.get(parts[:end])
        if line is not None:
            return f"line {line}: {message}"
    return message


def _format_loc(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _model_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model found by following `loc` from `root` (None when it leaves models).

    Union members are all followed; a tagged-union tag in `loc` (e.g. `segment_lobes`) picks the member
    whose field default equals it.
    """
    candidates: list[type[BaseModel]] = [root]
    for part in loc:
        if isinstance(part, int):
            continue
        owner = next((m for m in candidates if part in m.model_fields), None)
        if owner is not None:
            candidates = _models_in(owner.model_fields[part].annotation)
            continue
        tagged = [m for m in candidates if any(f.default == part for f in m.model_fields.values())]
        if not tagged:
            return None
        candidates = tagged[:1]
    return candidates[0] if candidates else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model inside an annotation (through Optional, Union, list, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


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
