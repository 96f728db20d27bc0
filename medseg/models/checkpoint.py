"""Self-describing checkpoints: weights + a `ModelCard` in one `.safetensors` file (no pickle).

Layout: a standard safetensors file whose header metadata holds
  `medseg_format` ("1"), `medseg_card` (the card as JSON) and `medseg_aliases` (JSON {name: stored name}
  for tensors shared between several state-dict names, which safetensors cannot store twice).
`load_checkpoint` rebuilds the model with `create_model(card.architecture, **card.architecture_args)` and
loads the weights strictly. `read_model_card` parses only the header.

Also read (not written): a torch file `{"card": dict, "state_dict": {...}}` (`.pt`/`.pth`, or any torch
zip file), loaded with `torch.load(weights_only=True)`; reading its card loads the whole file.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from medseg.errors import ConfigError, InputError
from medseg.io.atomic import atomic_path
from medseg.jsonable import to_json_types
from medseg.models.registry import create_model, get_model_entry

__all__ = ["CHECKPOINT_FORMAT", "ModelCard", "load_checkpoint", "read_model_card", "save_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "1"
CARD_KEY = "medseg_card"
_MAX_HEADER = 100 * 1024 * 1024
_TORCH_SUFFIXES = (".pt", ".pth")


def _medseg_version() -> str:
    try:
        from medseg import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - only in odd installs
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("medseg")
        except PackageNotFoundError:
            return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelCard(BaseModel):
    """What a checkpoint is: how to rebuild the model, what its outputs mean, how to feed it.

    Opaque dicts (`architecture_args`, `preprocessing`, `metrics`, `extra`) are normalised to JSON types
    on construction (tuples -> lists, keys -> str), so a save/load round trip returns equal cards.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str = Field(min_length=1)
    architecture_args: dict[str, Any] = Field(default_factory=dict)
    in_channels: int = Field(ge=1)
    out_channels: int = Field(ge=1)
    task: str
    labels: dict[int, str] = Field(default_factory=dict)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    spacing: list[float] | None = None
    medseg_version: str = Field(default_factory=_medseg_version)
    created: str = Field(default_factory=_now)
    metrics: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("architecture_args", "preprocessing", "metrics", "extra", mode="before")
    @classmethod
    def _json_types(cls, value: Any, info: Any) -> Any:
        return to_json_types(value, info.field_name, strict=True) if isinstance(value, Mapping) else value

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) not in (2, 3) or any(v <= 0 for v in value)):
            raise ValueError(f"spacing must be 2 or 3 positive numbers, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        for key in ("in_channels", "out_channels"):
            if key in self.architecture_args and self.architecture_args[key] != getattr(self, key):
                raise ValueError(f"{key}={getattr(self, key)} but architecture_args.{key}="
                                 f"{self.architecture_args[key]}")
        bad = [k for k in self.labels if not 0 <= k < self.out_channels]
        if bad:
            raise ValueError(f"label indices {bad} are outside 0..{self.out_channels - 1} (out_channels)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | os.PathLike[str] | None = None) -> ModelCard:
        """Validate a stored card; unknown keys (a newer medseg) are logged and ignored. `ConfigError` if bad."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"model card must be a mapping, found {type(data).__name__}", source)
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            log.warning("%s: ignoring unknown model-card keys %s", source or "model card", unknown)
        try:
            return cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'card'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid model card: {problems}", source) from None

    @classmethod
    def from_model(cls, model: nn.Module, **fields: Any) -> ModelCard:
        """A card for a model made by `create_model`: architecture, its args and channels filled in."""
        model = _unwrap(model)
        name = getattr(model, "medseg_architecture", None)
        args = getattr(model, "medseg_architecture_args", None)
        if name is None or args is None:
            raise ConfigError("model was not made by medseg.models.create_model; build the ModelCard by hand")
        base: dict[str, Any] = {"architecture": name, "architecture_args": args}
        for key in ("in_channels", "out_channels"):
            if key in args:
                base[key] = args[key]
        return cls(**(base | fields))


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside torch.compile / DataParallel / DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# ---------------------------------------------------------------------------------------- saving


def _tensors_for_file(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous, non-sharing tensors plus {alias: stored name} for identical shared views."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: dict[tuple, int] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
               tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        storages[storage] = storages.get(storage, 0) + (1 if tensor.numel() else 0)
    for name, tensor in tensors.items():
        shared = storages.get((tensor.device, tensor.untyped_storage().data_ptr()), 0) > 1
        tensor = tensor.to("cpu")
        tensors[name] = tensor.contiguous().clone() if shared else tensor.contiguous()
    return tensors, aliases


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, card: ModelCard | Mapping[str, Any]) -> Path:
    """Write `model`'s weights and `card` to a `.safetensors` file, atomically (temp file + rename).

    For a model made by `create_model`, the card's architecture must match it (empty `architecture_args`
    are filled in from the model). Returns the path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError("a checkpoint path must end in .safetensors", path)
    if not isinstance(card, ModelCard):
        card = ModelCard.from_dict(card)
    model = _unwrap(model)
    get_model_entry(card.architecture)  # unknown architecture: fail now, not at load time
    built_as = getattr(model, "medseg_architecture", None)
    built_args = getattr(model, "medseg_architecture_args", None)
    if built_as is not None and built_as != card.architecture:
        raise ConfigError(f"card.architecture is '{card.architecture}' but the model was built as '{built_as}'", path)
    if built_args is not None:
        if not card.architecture_args:
            card = card.model_copy(update={"architecture_args": built_args})
        elif card.architecture_args != built_args:
            diff = {k: (card.architecture_args.get(k), built_args.get(k))
                    for k in set(card.architecture_args) | set(built_args)
                    if card.architecture_args.get(k) != built_args.get(k)}
            raise ConfigError(f"card.architecture_args differ from the model's (key: (card, model)): {diff}", path)

    tensors, aliases = _tensors_for_file(model.state_dict())
    metadata = {"medseg_format": CHECKPOINT_FORMAT, CARD_KEY: card.to_json(), "medseg_aliases": json.dumps(aliases)}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    log.info("saved checkpoint %s (%s, %d tensors)", path, card.architecture, len(tensors))
    return path


# ---------------------------------------------------------------------------------------- reading


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError("checkpoint not found", path)
    if not path.is_file():
        raise InputError("checkpoint path is not a file", path)


def _is_torch_file(path: Path) -> bool:
    return path.suffix.lower() in _TORCH_SUFFIXES or zipfile.is_zipfile(path)


def _read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file; `ConfigError` if the file is not one."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length <= 1 or length > _MAX_HEADER or length + 8 > size:
            raise ConfigError("not a safetensors file (no valid header)", path)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError("not a safetensors file (header is not JSON)", path) from None
    if not isinstance(header, dict):
        raise ConfigError("not a safetensors file (header is not a JSON object)", path)
    return header


def _card_from_metadata(path: Path, metadata: Mapping[str, Any]) -> ModelCard:
    text = metadata.get(CARD_KEY)
    if text is None:
        raise ConfigError("safetensors file has no medseg model card (metadata key 'medseg_card'); "
                          "it was not written by medseg.models.save_checkpoint", path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model card is not valid JSON: {exc.msg}", path) from None
    return ModelCard.from_dict(data, source=path)


def _load_torch(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"cannot read torch checkpoint (weights_only=True): {reason}", path) from None
    if not isinstance(data, Mapping) or "card" not in data or not isinstance(data.get("state_dict"), Mapping):
        raise ConfigError("torch checkpoint must be a dict {'card': {...}, 'state_dict': {...}}", path)
    state = {str(k): v for k, v in data["state_dict"].items() if isinstance(v, torch.Tensor)}
    return ModelCard.from_dict(data["card"], source=path), state


def read_model_card(path: str | os.PathLike[str]) -> ModelCard:
    """The `ModelCard` of a checkpoint without building the model (safetensors: reads the header only)."""
    path = Path(path)
    _check_file(path)
    if _is_torch_file(path):
        return _load_torch(path)[0]
    return _card_from_metadata(path, _read_header(path).get("__metadata__") or {})


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from its card, load the weights strictly, move to `device`, set eval mode."""
    path = Path(path)
    _check_file(path)
    if _is_torch_file(path):
        card, state = _load_torch(path)
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        metadata = _read_header(path).get("__metadata__") or {}
        card = _card_from_metadata(path, metadata)
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the safetensors tensors: {exc}", path) from None
        try:
            aliases = json.loads(metadata.get("medseg_aliases") or "{}")
        except json.JSONDecodeError:
            raise ConfigError("metadata 'medseg_aliases' is not valid JSON", path) from None
        for alias, stored in aliases.items():
            if stored not in state:
                raise ConfigError(f"alias '{alias}' points to '{stored}', which is not in the file", path)
            state[alias] = state[stored]
    try:
        model = create_model(card.architecture, **card.architecture_args)
    except ConfigError as exc:
        raise ConfigError(f"cannot rebuild the model from its card: {exc}", path) from None
    _load_strict(path, model, state)
    model.to(device)
    model.eval()
    log.info("loaded checkpoint %s (%s, task %s)", path, card.architecture, card.task)
    return model, card


def _load_strict(path: Path, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}")
    if problems:
        raise ConfigError(f"weights do not fit the model described by the card: {'; '.join(problems)}", path)
    model.load_state_dict(state, strict=True)
