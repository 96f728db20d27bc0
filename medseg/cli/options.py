"""Click options and small helpers shared by several command groups."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from medseg.io import ReadOptions, SelectionRules

__all__ = ["device_option", "json_option", "parse_overrides", "read_options", "rules_and_options",
           "set_threads", "settings_option", "table_console", "threads_option"]

_MAX_VOXELS = 1024**3

_tilt = click.option("--gantry-tilt", type=click.Choice(["resample", "error"]), default="resample",
                     show_default=True, help="Resample a tilted (sheared) stack to an orthogonal grid, or refuse it.")
_spacing = click.option("--uneven-spacing", type=click.Choice(["error", "resample"]), default="error",
                        show_default=True, help="Refuse missing slices / uneven gaps, or interpolate to even "
                        "spacing.")
_modality = click.option("--modality", default="CT", show_default=True,
                         help="Series modality to select ('any' to accept every modality).")
_non_finite = click.option("--non-finite", type=click.Choice(["air", "error"]), default="air", show_default=True,
                           help="NaN/inf voxels: replace by air (-1024 HU, noted and warned), or refuse the image.")
_max_voxels = click.option("--max-voxels", type=click.IntRange(min=1), default=_MAX_VOXELS, show_default=True,
                           help="Largest image to read, checked from the header before any pixel is read.")


def read_options(command: Any) -> Any:
    """Decorate a command with --modality, --gantry-tilt, --uneven-spacing, --non-finite and --max-voxels."""
    for option in (_max_voxels, _non_finite, _spacing, _tilt, _modality):
        command = option(command)
    return command


def rules_and_options(modality: str, gantry_tilt: str, uneven_spacing: str, non_finite: str = "air",
                      max_voxels: int = _MAX_VOXELS) -> tuple[SelectionRules, ReadOptions]:
    """The series selection rules and read options that `read_options` collected."""
    from medseg.io import ReadOptions, SelectionRules

    modalities = None if modality.lower() == "any" else tuple(m.strip().upper() for m in modality.split(","))
    return SelectionRules(modalities=modalities), ReadOptions(on_gantry_tilt=gantry_tilt,
                                                              on_uneven_spacing=uneven_spacing,
                                                              on_non_finite=non_finite, max_voxels=max_voxels)


device_option = click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu",
                             show_default=True, help="auto: CUDA when available, else CPU.")
threads_option = click.option("--threads", type=click.IntRange(min=1),
                              help="CPU threads for torch (default: all cores).")
settings_option = click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
                               help="Override a config value, e.g. --set schedule.epochs=3 (repeatable).")


def json_option(help: str) -> Any:
    """`--json` flag stored as `as_json`."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def parse_overrides(values: Iterable[str]) -> dict[str, object]:
    """`KEY=VALUE` strings -> {dotted key: YAML-parsed value}; a malformed item is a usage error (--set)."""
    import yaml

    overrides: dict[str, object] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads when asked."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def table_console() -> Any:
    """Console for stdout tables; 120 columns when piped (rich would use 80) unless COLUMNS is set."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console
