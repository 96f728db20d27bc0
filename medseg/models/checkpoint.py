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
import math
import os
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from medseg.configfile import load_json_text
from medseg.errors import ConfigError, InputError
from medseg.io.atomic import atomic_path
from medseg.jsonable import to_json_types
from medseg.models.pretrained import torch_load_refusal
from medseg.models.registry import create_model, get_model_entry, validate_model_args

__all__ = ["CHECKPOINT_FORMAT", "MAX_PARAMETERS", "ModelCard", "load_checkpoint", "read_model_card", "save_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "1"
CARD_KEY = "medseg_card"
_MAX_HEADER = 100 * 1024 * 1024
_TORCH_SUFFIXES = (".pt", ".pth")

# Sanity bounds for what a model card may ask for; checked before anything is allocated.
#: Most parameters (plus buffers) a checkpoint's model may have.
MAX_PARAMETERS = 500_000_000
_MAX_CHANNELS = 4096          # in_channels / out_channels
_MAX_ARCHITECTURE_INT = 16384  # any integer builder argument (feature widths, depths, sizes)
_MAX_IMAGE_SIDE = 8192        # preprocessing.image_size, pixels per side
_MIN_SPACING_MM = 0.05        # card / preprocessing spacing: finer grids would be absurdly large
#: Tasks whose inference code reads one label name per output channel (0..out_channels-1).
_LABELLED_TASKS = ("classification", "lobes", "lungs")


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
    in_channels: int = Field(ge=1, le=_MAX_CHANNELS)
    out_channels: int = Field(ge=1, le=_MAX_CHANNELS)
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

    @field_validator("labels", mode="before")
    @classmethod
    def _plain_label_keys(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for key in value:
                if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.isdigit()
                                                                          and str(int(key)) == key)):
                    raise ValueError(f"label values must be plain non-negative integers, got {key!r}")
            numbers = [int(key) for key in value]
            if len(set(numbers)) != len(numbers):
                raise ValueError(f"label values are repeated: {sorted(value, key=str)}")
        return value

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) not in (2, 3) or not all(_MIN_SPACING_MM <= v < math.inf for v in value)):
            raise ValueError(f"spacing must be 2 or 3 finite sizes of at least {_MIN_SPACING_MM} mm, got {value}")
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
        empty = [k for k, name in self.labels.items() if not name.strip()]
        if empty:
            raise ValueError(f"labels {empty} have empty names")
        names = list(self.labels.values())
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"label names are repeated: {repeated}")
        if self.task in _LABELLED_TASKS and sorted(self.labels) != list(range(self.out_channels)):
            missing = [k for k in range(self.out_channels) if k not in self.labels]
            raise ValueError(f"a {self.task!r} model needs a label name for each of its {self.out_channels} output "
                             f"channels (0..{self.out_channels - 1}); the card names {len(self.labels)}, "
                             f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if self.task == "classification":
            self._check_classification_extra()
        self._check_preprocessing_sizes()
        return self

    def _check_classification_extra(self) -> None:
        """`extra.classes` / `thresholds` / `multilabel`, as `medseg.infer.classify` reads them."""
        classes = [self.labels[i] for i in range(self.out_channels)]
        stored = self.extra.get("classes")
        if stored is not None and stored != classes:
            shown = stored if not isinstance(stored, list) or len(stored) <= 10 else [*stored[:10], "..."]
            raise ValueError(f"extra.classes {shown} differ from the labels (one class per output channel: "
                             f"{classes if len(classes) <= 10 else [*classes[:10], '...']})")
        thresholds = self.extra.get("thresholds")
        if thresholds:
            if not isinstance(thresholds, Mapping):
                raise ValueError(f"extra.thresholds must map class names to numbers, found {type(thresholds).__name__}")
            absent = [name for name in classes if name not in thresholds]
            if absent:
                raise ValueError(f"extra.thresholds has no threshold for {absent[:10]}")
            odd = [name for name in classes if isinstance(thresholds[name], bool)
                   or not isinstance(thresholds[name], (int, float)) or not math.isfinite(thresholds[name])]
            if odd:
                raise ValueError(f"extra.thresholds for {odd[:10]} are not finite numbers")
        if "multilabel" in self.extra and not isinstance(self.extra["multilabel"], bool):
            raise ValueError(f"extra.multilabel must be true or false, got {self.extra['multilabel']!r:.40}")

    def _check_preprocessing_sizes(self) -> None:
        """Sizes in `preprocessing` that inference allocates from (image size, resampling spacing)."""
        size = self.preprocessing.get("image_size")
        if isinstance(size, list) and any(isinstance(v, (int, float)) and v > _MAX_IMAGE_SIDE for v in size):
            raise ValueError(f"preprocessing.image_size {size} is above {_MAX_IMAGE_SIDE} pixels per side")
        spacing = self.preprocessing.get("spacing")
        if isinstance(spacing, list) and any(isinstance(v, (int, float)) and not _MIN_SPACING_MM <= v < math.inf
                                             for v in spacing):
            raise ValueError(f"preprocessing.spacing {spacing} must be finite sizes of at least {_MIN_SPACING_MM} mm")

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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ConfigError("not a safetensors file (header is not JSON)", path) from None
    if not isinstance(header, dict):
        raise ConfigError("not a safetensors file (header is not a JSON object)", path)
    return header


def _card_from_metadata(path: Path, metadata: Mapping[str, Any]) -> ModelCard:
    text = metadata.get(CARD_KEY)
    if text is None:
        raise ConfigError("safetensors file has no medseg model card (metadata key 'medseg_card'); "
                          "it was not written by medseg.models.save_checkpoint", path)
    if not isinstance(text, str):
        raise ConfigError(f"model card (metadata 'medseg_card') must be a JSON string, found {type(text).__name__}",
                          path)
    return ModelCard.from_dict(load_json_text(text, path, "model card"), source=path)


def _load_torch(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects, zip or format errors of all kinds
        raise ConfigError(torch_load_refusal(exc, "a torch checkpoint"), path) from None
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
    """Rebuild the model from its card, load the weights strictly, move to `device`, set eval mode.

    Before anything is allocated, the card is checked against sane bounds (at most `MAX_PARAMETERS`,
    counted on a model built on torch's "meta" device) and the stored tensor shapes against that model;
    problems are `ConfigError`s naming the file.
    """
    path = Path(path)
    _check_file(path)
    if _is_torch_file(path):
        card, state = _load_torch(path)
        planned = _plan_model(card, path)
        if planned is not None:
            _check_shapes(path, planned, {key: tuple(value.shape) for key, value in state.items()})
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        header = _read_header(path)
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, Mapping):
            raise ConfigError("not a safetensors file (__metadata__ is not a JSON object)", path)
        card = _card_from_metadata(path, metadata)
        aliases = _aliases(path, metadata)
        planned = _plan_model(card, path)
        if planned is not None:
            shapes = {key: tuple(info["shape"]) for key, info in header.items()
                      if key != "__metadata__" and isinstance(info, Mapping) and isinstance(info.get("shape"), list)}
            shapes |= {alias: shapes[stored] for alias, stored in aliases.items() if stored in shapes}
            _check_shapes(path, planned, shapes)
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the safetensors tensors: {exc}", path) from None
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


def _aliases(path: Path, metadata: Mapping[str, Any]) -> dict[str, str]:
    try:
        aliases = json.loads(metadata.get("medseg_aliases") or "{}")
    except (TypeError, json.JSONDecodeError):
        raise ConfigError("metadata 'medseg_aliases' is not valid JSON", path) from None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ConfigError("metadata 'medseg_aliases' must be a JSON object {name: stored name}", path)
    return aliases


def _large_ints(value: Any, where: str) -> list[str]:
    """`where=value` for integers above the architecture bound inside an argument (lists included)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [f"{where}={value}"] if abs(value) > _MAX_ARCHITECTURE_INT else []
    if isinstance(value, (list, tuple)):
        return [found for i, item in enumerate(value) for found in _large_ints(item, f"{where}[{i}]")]
    if isinstance(value, Mapping):
        return [found for key, item in value.items() for found in _large_ints(item, f"{where}.{key}")]
    return []


def _plan_model(card: ModelCard, path: Path) -> nn.Module | None:
    """The card's model built on the "meta" device (no memory), after bounds checks; None if it cannot be.

    Refuses a card naming pretrained weights (the checkpoint holds them), channels that differ from what
    the builder makes, integer arguments above the sanity bound, and more than `MAX_PARAMETERS`.
    """
    name, args = card.architecture, card.architecture_args
    try:
        full = validate_model_args(name, args)
    except ConfigError as exc:
        raise ConfigError(f"cannot rebuild the model from its card: {exc}", path) from None
    if args.get("pretrained"):
        raise ConfigError("model card names pretrained weights (architecture_args.pretrained); a checkpoint "
                          "holds its own weights", path)
    for key in ("in_channels", "out_channels"):
        if key in full and full[key] != getattr(card, key):
            raise ConfigError(f"model card says {key}={getattr(card, key)} but '{name}' with its architecture_args "
                              f"builds {key}={full[key]}", path)
    large = _large_ints(args, "architecture_args")
    if large:
        raise ConfigError(f"model card asks for an absurd architecture: {', '.join(large[:5])} (integer arguments "
                          f"are limited to {_MAX_ARCHITECTURE_INT}); refused before building it", path)
    try:
        with torch.device("meta"):
            planned = create_model(name, **args)
    except ConfigError as exc:
        raise ConfigError(f"cannot rebuild the model from its card: {exc}", path) from None
    except Exception as exc:  # a builder that cannot run on the meta device: checked after the real build
        log.debug("%s: cannot build '%s' on the meta device (%s: %s); skipping the size pre-check",
                  path, name, type(exc).__name__, exc)
        return None
    count = sum(p.numel() for p in planned.parameters()) + sum(b.numel() for b in planned.buffers())
    if count > MAX_PARAMETERS:
        raise ConfigError(f"model card describes a '{name}' with {count / 1e6:,.0f} M parameters (limit "
                          f"{MAX_PARAMETERS / 1e6:,.0f} M); refused before allocating it", path)
    return planned


def _check_shapes(path: Path, model: nn.Module, found: Mapping[str, tuple[int, ...]]) -> None:
    """`ConfigError` when the file's tensor names or shapes differ from `model`'s state dict."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(found[k]) != expected[k]]
    problems = []
    if wrong:
        first = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors of the wrong shape)" if len(wrong) > 1 else ""
        problems.append(f"{first} has shape {tuple(found[first])}, the card's model expects {expected[first]}{more}")
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}")
    if problems:
        raise ConfigError(f"checkpoint weights do not match its model card: {'; '.join(problems)}", path)


def _load_strict(path: Path, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    _check_shapes(path, model, {key: tuple(value.shape) for key, value in state.items()})
    model.load_state_dict(state, strict=True)
