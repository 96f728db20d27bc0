"""The one device resolver: "auto" picks CUDA when available, an explicit CUDA request without CUDA is an error."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` (or `cuda:N`) without CUDA raises a ConfigError."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available (this torch build: "
                          f"{torch.__version__})")
    return device
