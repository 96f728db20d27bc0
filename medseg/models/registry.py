"""Model registry (timm-style): builders registered by name, created with validated keyword arguments.

A builder is any callable taking keyword arguments and returning an `nn.Module`. Its signature is the
schema: unknown arguments and wrong types are reported as `ConfigError` naming the argument (with a
close-match suggestion); type hints are checked by pydantic (lax mode: "3" -> 3, lists -> tuples).

`create_model` records `model.medseg_architecture` (the name) and `model.medseg_architecture_args`
(all arguments with defaults applied, JSON types, `pretrained` left out) so a checkpoint can rebuild it.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic import create_model as create_pydantic_model

from medseg.errors import ConfigError
from medseg.jsonable import to_json_types

if typing.TYPE_CHECKING:
    from torch import nn

__all__ = [
    "NOT_RECORDED",
    "ModelEntry",
    "create_model",
    "get_model_entry",
    "list_models",
    "register_model",
    "validate_model_args",
]

log = logging.getLogger(__name__)

#: Builder arguments that are not part of the architecture (not recorded in checkpoints).
NOT_RECORDED = frozenset({"pretrained"})

Builder = Callable[..., "nn.Module"]


@dataclass(frozen=True)
class ModelEntry:
    """One registered builder."""

    name: str
    builder: Builder

    @property
    def description(self) -> str:
        """First line of the builder's docstring."""
        return (inspect.getdoc(self.builder) or "").split("\n", 1)[0]

    @cached_property
    def parameters(self) -> dict[str, inspect.Parameter]:
        """Keyword parameters of the builder (no *args; **kwargs shows up as VAR_KEYWORD)."""
        return dict(inspect.signature(self.builder).parameters)

    @property
    def accepts_any_keyword(self) -> bool:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self.parameters.values())

    @cached_property
    def schema(self) -> type[BaseModel]:
        """A pydantic model built from the builder's signature (type hints; missing hints mean Any)."""
        fields: dict[str, Any] = {}
        for pname, param in self.parameters.items():
            if param.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (self._hint(pname, param.annotation), default)
        extra = "allow" if self.accepts_any_keyword else "forbid"
        config = ConfigDict(extra=extra, arbitrary_types_allowed=True, protected_namespaces=())
        return create_pydantic_model(f"{self.name}_arguments", __config__=config, **fields)


    def _hint(self, name: str, annotation: Any) -> Any:
        """The resolved type hint of one argument (each on its own, so that an unresolvable return annotation
        such as a `TYPE_CHECKING`-only `nn.Module` does not switch off checking). An argument whose hint cannot
        be resolved is accepted unchecked, with a warning naming it."""
        if annotation is inspect.Parameter.empty:
            return Any
        namespace = getattr(inspect.unwrap(self.builder), "__globals__", {})
        try:
            return typing.get_type_hints(_Annotated({name: annotation}), globalns=namespace)[name]
        except (NameError, TypeError, SyntaxError, AttributeError) as exc:
            log.warning("model '%s': the type hint %r of argument '%s' cannot be resolved (%s: %s); the argument "
                        "is passed to the builder unchecked", self.name, annotation, name, type(exc).__name__, exc)
            return Any


class _Annotated:
    """An object holding just `__annotations__`, for `typing.get_type_hints` of single annotations."""

    def __init__(self, annotations: dict[str, Any]) -> None:
        self.__annotations__ = annotations


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str | Builder | None = None, *, overwrite: bool = False) -> Any:
    """Register a builder: `@register_model("unet_resnet18")`, or bare `@register_model` (uses `__name__`).

    Re-registering a name raises `ConfigError` unless `overwrite=True`.
    """

    def decorate(builder: Builder) -> Builder:
        key = name if isinstance(name, str) else builder.__name__
        if not callable(builder):
            raise TypeError(f"register_model('{key}'): builder must be callable, got {type(builder).__name__}")
        if key in _REGISTRY and not overwrite and _REGISTRY[key].builder is not builder:
            raise ConfigError(f"model '{key}' is already registered (by {_REGISTRY[key].builder.__module__}); "
                              "pass overwrite=True to replace it")
        _REGISTRY[key] = ModelEntry(key, builder)
        return builder

    if callable(name) and not isinstance(name, str):
        builder, name = name, None
        return decorate(builder)
    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching an fnmatch `pattern` (e.g. "unet_*")."""
    return sorted(key for key in _REGISTRY if fnmatch.fnmatchcase(key, pattern))


def get_model_entry(name: str) -> ModelEntry:
    """The registered entry for `name`; `ConfigError` with close matches when unknown."""
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown model '{name}'{hint} (available: {', '.join(list_models()) or 'none'})")


def _format_error(entry: ModelEntry, error: Mapping[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][0])
        known = [p for p in entry.parameters if entry.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (arguments: {', '.join(known)})"
        return f"unknown argument '{key}'{hint}"
    if error["type"] == "missing":
        return f"missing required argument '{loc}'"
    value = error.get("input")
    return f"argument '{loc}': {error['msg']} (got {value!r:.60})"


def validate_model_args(name: str, kwargs: Mapping[str, Any], *, only_given: bool = False) -> dict[str, Any]:
    """Check `kwargs` against the builder's signature and return them coerced.

    All arguments with defaults applied, or with `only_given=True` just the keys in `kwargs`.
    Raises `ConfigError` naming the offending argument (unknown names get a close-match suggestion).
    """
    entry = get_model_entry(name)
    try:
        parsed = entry.schema.model_validate(dict(kwargs))
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        messages = [_format_error(entry, e) for e in errors] or [str(exc)]
        raise ConfigError(f"model '{name}': " + "; ".join(messages)) from None
    values = {key: getattr(parsed, key) for key in type(parsed).model_fields}
    values.update(parsed.model_extra or {})
    return {key: values[key] for key in kwargs} if only_given else values


def create_model(name: str, /, **kwargs: Any) -> nn.Module:
    """Build the registered model `name` with keyword arguments checked against its builder.

    Raises `ConfigError` for an unknown name (with suggestions), unknown/invalid arguments, or when the
    builder rejects the values.
    """
    entry = get_model_entry(name)
    args = validate_model_args(name, kwargs)
    try:
        model = entry.builder(**args)
    except ConfigError:
        raise
    except (ValueError, TypeError, AssertionError, KeyError, IndexError) as exc:
        raise ConfigError(f"cannot build model '{name}' with {args}: {type(exc).__name__}: {exc}") from exc
    recorded = {key: to_json_types(value) for key, value in args.items() if key not in NOT_RECORDED}
    object.__setattr__(model, "medseg_architecture", name)
    object.__setattr__(model, "medseg_architecture_args", recorded)
    log.debug("created model %s with %s", name, recorded)
    return model
