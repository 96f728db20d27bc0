"""ImageNet ResNet weights from a local torchvision-format file, mapped into a UNet's ResNet encoder.

Key mapping: MONAI's `ResNet`/`ResNetFeatures` uses torchvision's module names (`conv1`, `bn1`,
`layerX.Y.convK` / `bnK`, `layerX.0.downsample.0` (1x1 conv) / `downsample.1` (BN)); its `act` and
pooling modules hold no parameters. So the mapping is by name: `fc.*` (the ImageNet classifier) is
dropped and everything else must match in shape. The UNets in `medseg.models.unet` build their encoder
with torchvision's projection shortcuts (MONAI's own resnet18/34 use parameter-free "type A" shortcuts,
which would leave torchvision's `downsample` weights without a home).

The first convolution is adapted to the model's input channels like timm's `adapt_input_conv`:
1 channel -> the sum over the RGB filters; N != 3 channels -> RGB filters repeated cyclically
(channel i gets RGB filter i % 3) and scaled by 3/N, so a grey image repeated N times gives the
same activations as the RGB original.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.errors import ConfigError, InputError

__all__ = ["LoadReport", "adapt_input_conv", "load_torchvision_resnet", "read_torchvision_state_dict"]

log = logging.getLogger(__name__)

_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")
FIRST_CONV = "conv1.weight"
_PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass
class LoadReport:
    """What `load_torchvision_resnet` did: key lists in the encoder's naming."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the encoder, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the encoder
    adapted: list[str] = field(default_factory=list)  # loaded after adapting (first conv)
    skipped: list[str] = field(default_factory=list)  # deliberately dropped (fc.*)

    def summary(self) -> str:
        return (f"{len(self.loaded)} tensors loaded ({len(self.adapted)} adapted), {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.skipped)} skipped")


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv weights (out, 3, *k) adapted to `in_channels` (see the module docstring)."""
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"can only adapt a 3-channel (RGB) first conv, got {weight.shape[1]} channels")
    dtype = weight.dtype
    weight = weight.float()
    if in_channels == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeat = math.ceil(in_channels / 3)
        adapted = weight.repeat(1, repeat, *([1] * (weight.ndim - 2)))[:, :in_channels] * (3.0 / in_channels)
    return adapted.to(dtype)


def _layout(keys: Any) -> tuple[str, list[int]]:
    """("basic"|"bottleneck", blocks per stage) of a torchvision-named ResNet key set."""
    blocks = [0, 0, 0, 0]
    bottleneck = False
    for key in keys:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
            bottleneck = bottleneck or ".conv3." in key
    return ("bottleneck" if bottleneck else "basic"), blocks


def _describe(layout: tuple[str, list[int]]) -> str:
    names = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
             ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
             ("bottleneck", (3, 8, 36, 3)): "resnet152"}
    kind, blocks = layout
    name = names.get((kind, tuple(blocks)))
    text = f"{'Bottleneck' if kind == 'bottleneck' else 'BasicBlock'} blocks {blocks}"
    return f"{name} ({text})" if name else text


def torch_load_refusal(exc: BaseException, what: str = "torch file") -> str:
    """Why `torch.load(weights_only=True)` failed, as one line that never advises unpickling.

    torch's own message for a pickled object suggests loading with weights_only off (which can run
    arbitrary code); medseg says plainly that it refuses such files instead.
    """
    text = str(exc)
    found = _PICKLED_GLOBAL.search(text)
    if found:
        return (f"holds pickled Python objects ({found.group(1)}), not only tensors; medseg refuses to load such a "
                "file for safety (unpickling can run arbitrary code). Save the weights as .safetensors or as a "
                "plain state dict of tensors")
    if isinstance(exc, pickle.UnpicklingError) or "weights only" in text.lower() or "weights_only" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
        detail = next((line.strip() for line in detail.splitlines() if line.strip()), "")
        return (f"cannot read as {what}: not a tensor-only torch file ({detail or 'unpickling refused'}); medseg "
                "refuses to unpickle anything but tensors, for safety")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"cannot read as {what}: {lines[0][:200] if lines else type(exc).__name__}"


def read_torch_state_dict(path: str | os.PathLike[str], kind: str = "model") -> dict[str, torch.Tensor]:
    """Tensors of a weights file (`torch.load(weights_only=True)`), unwrapped and with `module.` prefixes removed.

    Accepts a plain state dict, `{"state_dict": ...}` or `{"model": ...}`. Raises `InputError` for a missing
    file and `ConfigError` (naming `kind`, e.g. "ResNet") for anything that is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("pretrained weights file not found" if not path.exists() else "not a file", path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip/format errors of all kinds
        raise ConfigError(torch_load_refusal(exc, "torch weights"), path) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"not a {kind} state dict (found {type(data).__name__}"
                          f"{' (empty)' if isinstance(data, Mapping) else ''})", path)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in data.items():
        name = str(key)
        while name.startswith("module."):
            name = name[len("module."):]
        if isinstance(value, torch.Tensor):
            tensors[name] = value
    return tensors


def read_torchvision_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a torchvision ResNet file (see `read_torch_state_dict`); `ConfigError` if it is no ResNet."""
    tensors = read_torch_state_dict(path, "ResNet")
    if FIRST_CONV not in tensors or not any(_BLOCK_KEY.match(k) for k in tensors):
        shown = ", ".join(list(tensors)[:5])
        raise ConfigError("not a torchvision ResNet state dict (expected keys 'conv1.weight', 'bn1.*', "
                          f"'layer1.0.conv1.weight', ...; found {len(tensors)} tensors such as: {shown})", path)
    return tensors


def load_torchvision_resnet(encoder: nn.Module, path: str | os.PathLike[str], in_channels: int) -> LoadReport:
    """Copy a torchvision ImageNet ResNet state dict at `path` into a MONAI ResNet `encoder`.

    `encoder` may also be a model with an `.encoder` attribute (e.g. `FlexibleUNet`). The first conv is
    adapted to `in_channels`; `fc.*` is dropped. Shape or block-layout mismatches raise `ConfigError`
    naming the file and the key; missing/unexpected keys are logged and returned in the report.
    """
    if not hasattr(encoder, "conv1") and isinstance(getattr(encoder, "encoder", None), nn.Module):
        encoder = encoder.encoder
    source = read_torchvision_state_dict(path)
    target = encoder.state_dict()
    if FIRST_CONV in target and target[FIRST_CONV].shape[1] != in_channels:
        raise ConfigError(f"in_channels={in_channels} but the encoder's first conv takes "
                          f"{target[FIRST_CONV].shape[1]} channels", path)

    have, want = _layout(source), _layout(target)
    if have != want:
        raise ConfigError(f"holds a {_describe(have)} but the model's encoder is a {_describe(want)}", path)

    return copy_imagenet_weights(encoder, source, path=path, in_channels=in_channels, first_conv=FIRST_CONV,
                                 head_prefix="fc.", kind="ResNet")


def copy_imagenet_weights(module: nn.Module, source: Mapping[str, torch.Tensor], *, path: str | os.PathLike[str],
                          in_channels: int, first_conv: str, head_prefix: str, kind: str,
                          ignore_missing: tuple[str, ...] = ()) -> LoadReport:
    """Copy `source` tensors (torchvision names mapped to `module`'s) into `module`, strict about shapes.

    The ImageNet head (`head_prefix*`) is skipped; the 3-channel `first_conv` is adapted to `in_channels`
    (`adapt_input_conv`). Shape mismatches raise `ConfigError` naming the file and the key; missing (other
    than `ignore_missing` prefixes and BatchNorm counters) and unexpected keys are logged and reported.
    """
    target = module.state_dict()
    report = LoadReport(path=str(path))
    new_state: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if key.startswith(head_prefix):
            report.skipped.append(key)
            continue
        if key not in target:
            report.unexpected.append(key)
            continue
        expected = target[key].shape
        if key == first_conv and tensor.shape != expected and tensor.ndim == len(expected) \
                and tensor.shape[0] == expected[0] and tensor.shape[2:] == expected[2:] and tensor.shape[1] == 3:
            tensor = adapt_input_conv(tensor, in_channels)
            report.adapted.append(key)
        if tensor.shape != expected:
            raise ConfigError(f"key '{key}': the file has shape {tuple(tensor.shape)}, the model expects "
                              f"{tuple(expected)} (in_channels={in_channels}); is it a torchvision {kind}?", path)
        new_state[key] = tensor.to(dtype=target[key].dtype)
        report.loaded.append(key)
    # BatchNorm's num_batches_tracked is absent from older torchvision files and irrelevant to eval.
    report.missing = [k for k in target if k not in new_state and not k.endswith("num_batches_tracked")
                      and not k.startswith(ignore_missing or ("\0",))]
    module.load_state_dict(new_state, strict=False)
    if report.missing:
        log.warning("%s: %d %s tensors not in the file (left as initialised): %s",
                    path, len(report.missing), kind, ", ".join(report.missing[:8]))
    if report.unexpected:
        log.warning("%s: %d tensors in the file not used by the model: %s",
                    path, len(report.unexpected), ", ".join(report.unexpected[:8]))
    log.info("%s: ImageNet %s weights: %s", path, kind, report.summary())
    return report
