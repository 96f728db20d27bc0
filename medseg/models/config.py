"""Model config files (`configs/models/*.yaml`): an architecture name plus its builder's arguments.

Flat YAML: `architecture` (required), optional `description`, and any argument of that builder
(`pretrained` included). Arguments are validated against the builder's signature (pydantic), so an
unknown key is an error naming the key with a close-match suggestion.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from medseg.errors import ConfigError, InputError
from medseg.models.registry import create_model, get_model_entry, validate_model_args

__all__ = ["create_model_from_config", "load_model_config", "validate_model_config"]

_RESERVED = ("architecture", "description")


def validate_model_config(data: Mapping[str, Any], source: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check a config mapping; returns `{"architecture", "architecture_args", "pretrained", "description"}`.

    `architecture_args` holds the given builder arguments (coerced, defaults not filled in; `pretrained`
    split off), i.e. what `ModelCard.architecture_args` holds for a checkpoint.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a model config must be a mapping, found {type(data).__name__}", source)
    name = data.get("architecture")
    if not isinstance(name, str) or not name:
        raise ConfigError("missing required key 'architecture' (a registered model name)", source)
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError("'description' must be a string", source)
    try:
        entry = get_model_entry(name)
    except ConfigError as exc:
        raise ConfigError(f"architecture: {exc}", source) from None
    kwargs = {str(k): v for k, v in data.items() if k not in _RESERVED}
    if not entry.accepts_any_keyword:
        allowed = [*_RESERVED, *entry.schema.model_fields]
        for key in kwargs:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"
                raise ConfigError(f"unknown key '{key}'{hint}", source)
    try:
        args = validate_model_args(name, kwargs, only_given=True)
    except ConfigError as exc:
        raise ConfigError(str(exc), source) from None
    pretrained = args.pop("pretrained", None)
    return {"architecture": name, "architecture_args": args, "pretrained": pretrained, "description": description}


def load_model_config(path: str | os.PathLike[str], *, derived: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read and validate a YAML model config (see `validate_model_config` for the result).

    `derived` supplies arguments the file leaves to its user (training sets `in_channels` / `out_channels`
    from the preprocessing and the labels); values in the file take precedence.
    """
    from medseg.configfile import MAX_CONFIG_BYTES, load_yaml_text

    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"model config is over {MAX_CONFIG_BYTES // 2**20} MB; refused", path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("model config not found", path) from None
    except IsADirectoryError:
        raise InputError("is a folder, not a model config file", path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", path) from None
    data = load_yaml_text(text, path)  # alias bombs and syntax errors: ConfigError naming the file
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"a model config must be a mapping, found {type(data).__name__}", path)
    return validate_model_config({**(derived or {}), **(data or {})}, source=path)


def create_model_from_config(config: str | os.PathLike[str] | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Build a model from a config file or a `load_model_config` result; `overrides` replace arguments."""
    if not isinstance(config, Mapping):
        config = load_model_config(config)
    elif "architecture_args" not in config:
        config = validate_model_config(config)
    kwargs = {**config["architecture_args"], "pretrained": config.get("pretrained"), **overrides}
    if kwargs["pretrained"] is None:
        del kwargs["pretrained"]
    return create_model(config["architecture"], **kwargs)
