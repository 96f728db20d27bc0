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

from medseg.errors import ConfigError, InputError, MedsegError

__all__ = ["MAX_CONFIG_BYTES", "MAX_MANIFEST_BYTES", "MAX_YAML_NODES", "ConfigSchemaError", "format_validation_error",
           "key_lines", "load_config", "load_json_text", "load_yaml_text", "read_mapping", "validate_config"]

M = TypeVar("M", bound=BaseModel)

#: Config files larger than this are refused before reading.
MAX_CONFIG_BYTES = 10 * 1024 * 1024
#: Manifests (`read_mapping(..., "manifest")`) are data and may be larger.
MAX_MANIFEST_BYTES = 2 * 1024**3
#: YAML whose aliases add more nodes than this (beyond those written) is refused before objects are built.
MAX_YAML_NODES = 100_000


class ConfigSchemaError(ConfigError):
    """A config does not match its schema; `errors` holds one line per problem."""

    def __init__(self, errors: list[str], path: str | os.PathLike[str] | None = None) -> None:
        self.errors = errors
        message = errors[0] if len(errors) == 1 else f"{len(errors)} schema errors:\n  " + "\n  ".join(errors)
        super().__init__(message, path)


def read_mapping(path: str | os.PathLike[str], what: str = "config", *, max_bytes: int | None = None) -> dict[str, Any]:
    """Parse a YAML (or `.json`) file that must hold a mapping; errors give line and column.

    Files over `max_bytes` are refused (default `MAX_CONFIG_BYTES`, or `MAX_MANIFEST_BYTES` when `what` is
    "manifest": a manifest is data and grows with the dataset), and so is YAML whose aliases add more than
    `MAX_YAML_NODES` nodes (an "alias bomb"), before any Python object is built.
    """
    return _parse_mapping(Path(path), what, max_bytes)[0]


def _parse_mapping(path: Path, what: str, max_bytes: int | None = None,
                   lines: bool = False) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """The mapping in `path` and, with `lines`, its `key_lines` (from the same parse; empty for JSON)."""
    text = _read_text(path, what, max_bytes)
    found: dict[tuple[Any, ...], int] = {}
    if path.suffix.lower() == ".json":
        data = load_json_text(text, path)
    else:
        data, found = _load_yaml(text, path, lines)
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} must be a mapping at the top level, found {type(data).__name__}", path)
    return data, found


def _read_text(path: Path, what: str = "config", max_bytes: int | None = None) -> str:
    if max_bytes is None:
        max_bytes = MAX_MANIFEST_BYTES if what == "manifest" else MAX_CONFIG_BYTES
    try:
        size = path.stat().st_size
        if path.is_file() and size > max_bytes:
            raise ConfigError(f"{what} file is {size / 2**20:,.1f} MB; {what} files over "
                              f"{max_bytes / 2**20:,.0f} MB are refused", path)
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError("no such file", path) from exc
    except IsADirectoryError as exc:
        raise InputError(f"is a folder, not a {what} file", path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", path) from exc


def load_json_text(text: str, path: str | os.PathLike[str] | None = None, what: str = "") -> Any:
    """`json.loads(text)`; syntax errors and over-deep nesting are a `ConfigError` naming `path` (and `what`)."""
    prefix = f"{what} is not valid JSON" if what else "invalid JSON"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{prefix} at line {exc.lineno}, column {exc.colno}: {exc.msg}", path) from None
    except RecursionError:
        raise ConfigError(f"{prefix}: nested too deeply", path) from None


def load_yaml_text(text: str, path: str | os.PathLike[str] | None = None) -> Any:
    """`yaml.safe_load(text)` with the alias-expansion budget; `ConfigError` (naming `path`) when bad."""
    return _load_yaml(text, path)[0]


def _yaml_error(exc: Exception, path: str | os.PathLike[str] | None) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    if not mark and isinstance(getattr(exc, "position", None), int):
        where = f" at character {exc.position + 1}"
    return ConfigError(f"invalid YAML{where}: {problem}", path)


def _loader(text: str, path: str | os.PathLike[str] | None) -> Any:
    import yaml

    try:
        return yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters up front
        raise _yaml_error(exc, path) from exc


def _compose(loader: Any, path: str | os.PathLike[str] | None) -> Any:
    """The single document's node graph (aliases are the anchor's node object); None for an empty file."""
    import yaml

    try:
        return loader.get_single_node()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path) from exc
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", path) from None


def _load_yaml(text: str, path: str | os.PathLike[str] | None,
               lines: bool = False) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Compose `text` once, check its alias expansion, then construct Python objects from the same nodes.

    With `lines`, also the `key_lines` of the document (taken before construction, which rewrites merge keys).
    """
    import yaml

    loader = _loader(text, path)
    try:
        root = _compose(loader, path)
        if root is None:
            return None, {}
        _check_expansion(root, path)
        found = _node_lines(root) if lines else {}
        try:
            return loader.construct_document(root), found
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, path) from exc
        except RecursionError:
            raise ConfigError("invalid YAML: nested too deeply", path) from None
    finally:
        loader.dispose()


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: Any, path: str | os.PathLike[str] | None, limit: int | None = None) -> None:
    """Refuse a composed YAML graph that refers to itself, or whose aliases add more than `limit` nodes.

    An alias is the same node object as its anchor, so the graph stays small while its expansion (what
    Python objects and schema validation walk) can be exponential. Expanded sizes are summed per distinct
    node (linear in the document) and capped, so the numbers stay small; a document without aliases
    expands to itself and is never refused here, however long.
    """
    limit = MAX_YAML_NODES if limit is None else limit
    distinct: set[int] = set()
    repeated = False
    pending = [root]
    while pending:
        node = pending.pop()
        if id(node) in distinct:
            repeated = True  # reached twice: an alias (or a cycle)
            continue
        distinct.add(id(node))
        pending.extend(_children(node))
    if not repeated:
        return
    cap = len(distinct) + limit
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = min(cap + 1, 1 + sum(sizes[id(child)] for child in _children(node)))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ConfigError("YAML refers to itself (recursive alias)", path)
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise ConfigError("YAML refers to itself (recursive alias)", path)
            if id(child) not in sizes:
                stack.append((child, False))
    if sizes[id(root)] > cap:
        raise ConfigError(f"YAML expands to more than {cap:,} nodes through its aliases ({len(distinct):,} written; "
                          f"at most {limit:,} more are allowed): alias bomb? refused", path)


def validate_config(model: type[M], data: Mapping[str, Any], path: str | os.PathLike[str] | None = None,
                    lines: Mapping[tuple[Any, ...], int] | None = None) -> M:
    """`model.model_validate(data)` with errors as `ConfigSchemaError` lines (`line N: ...` given `lines`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigSchemaError([_with_line(format_validation_error(error, model), error["loc"], lines)
                                 for error in exc.errors()], path) from None


def load_config(model: type[M], path: str | os.PathLike[str], what: str = "config") -> M:
    """Read and validate a config file (parsed once); schema errors name the YAML line."""
    data, lines = _parse_mapping(Path(path), what, lines=True)
    return validate_config(model, data, path, lines)


def key_lines(path: str | os.PathLike[str]) -> dict[tuple[Any, ...], int]:
    """1-based line of every key / list item in a YAML file, by its path (`("steps", 1, "model")`).

    Empty for JSON or unreadable files (line numbers are a convenience, never a new error). Linear in the
    document: a node reached again through an alias gets its own line but is not walked again.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return {}
    try:
        loader = _loader(_read_text(path), path)
        try:
            root = _compose(loader, path)  # no alias expansion here, so no budget is needed
        finally:
            loader.dispose()
    except (OSError, MedsegError):
        return {}
    return _node_lines(root)


def _node_lines(root: Any) -> dict[tuple[Any, ...], int]:
    """Lines of a composed YAML graph; each node is entered once, so aliases cost one entry, not a subtree."""
    import yaml

    lines: dict[tuple[Any, ...], int] = {}
    seen: set[int] = set()
    stack: list[tuple[Any, tuple[Any, ...]]] = [] if root is None else [(root, ())]
    while stack:
        node, where = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            items = [(key.value, key, value) for key, value in node.value]
        elif isinstance(node, yaml.SequenceNode):
            items = [(index, item, item) for index, item in enumerate(node.value)]
        else:
            continue
        for part, marked, child in reversed(items):
            here = (*where, part)
            lines[here] = marked.start_mark.line + 1
            stack.append((child, here))
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
