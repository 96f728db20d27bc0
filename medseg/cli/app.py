"""`medseg` command line: a thin layer over the Python API.

Heavy libraries (torch, MONAI) are imported only inside the commands that need them.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from medseg import __version__
from medseg.cli_errors import ErrorReportingGroup

log = logging.getLogger("medseg")


def _configure_logging(verbose: int, quiet: bool) -> None:
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    handler = RichHandler(show_time=False, show_path=False, markup=False,
                          console=_stderr_console())
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """medseg: chest CT and chest X-ray pipeline with exact geometry."""
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, quiet=quiet)
    _configure_logging(verbose, quiet)


_tilt_option = click.option("--gantry-tilt", type=click.Choice(["resample", "error"]), default="resample",
                             show_default=True, help="Resample a tilted (sheared) stack to an orthogonal grid, "
                             "or refuse it.")
_spacing_option = click.option("--uneven-spacing", type=click.Choice(["error", "resample"]), default="error",
                               show_default=True, help="Refuse missing slices / uneven gaps, or interpolate "
                               "to even spacing.")
_modality_option = click.option("--modality", default="CT", show_default=True,
                                help="Series modality to select ('any' to accept every modality).")
_non_finite_option = click.option("--non-finite", type=click.Choice(["air", "error"]), default="air",
                                  show_default=True, help="NaN/inf voxels: replace by air (-1024 HU, noted and "
                                  "warned), or refuse the image.")
_max_voxels_option = click.option("--max-voxels", type=click.IntRange(min=1), default=1024**3, show_default=True,
                                  help="Largest image to read, checked from the header before any pixel is read.")


def _rules_and_options(modality: str, gantry_tilt: str, uneven_spacing: str, non_finite: str = "air",
                       max_voxels: int = 1024**3):
    from medseg.io import ReadOptions, SelectionRules

    modalities = None if modality.lower() == "any" else tuple(m.strip().upper() for m in modality.split(","))
    return SelectionRules(modalities=modalities), ReadOptions(on_gantry_tilt=gantry_tilt,
                                                              on_uneven_spacing=uneven_spacing,
                                                              on_non_finite=non_finite, max_voxels=max_voxels)


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--label", is_flag=True, help="Store as a uint8 label map (for masks).")
@_modality_option
@_tilt_option
@_spacing_option
@_non_finite_option
@_max_voxels_option
def convert(input_path: Path, output: Path, label: bool, modality: str, gantry_tilt: str,
            uneven_spacing: str, non_finite: str, max_voxels: int) -> None:
    """Convert a DICOM folder/file or a NIfTI/NRRD/MHA volume to NIfTI (exact geometry)."""
    from medseg.io import load_volume, write_nifti

    rules, options = _rules_and_options(modality, gantry_tilt, uneven_spacing, non_finite, max_voxels)
    started = time.perf_counter()
    volume = load_volume(input_path, rules=rules, options=options)
    write_nifti(volume, output, label=label)
    click.echo(f"wrote {output}  {'x'.join(map(str, volume.shape))} voxels, spacing "
               f"{', '.join(f'{s:.3g}' for s in volume.spacing)} mm, {volume.orientation}, "
               f"{time.perf_counter() - started:.1f} s")


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of tables.")
@_modality_option
@_tilt_option
@_spacing_option
@_non_finite_option
@_max_voxels_option
def info(input_path: Path, as_json: bool, modality: str, gantry_tilt: str, uneven_spacing: str, non_finite: str,
         max_voxels: int) -> None:
    """Show the series found, which one is selected and why, its geometry, HU range and warnings."""
    from medseg.info import describe_input, print_report
    from medseg.jsonable import dumps_json

    rules, options = _rules_and_options(modality, gantry_tilt, uneven_spacing, non_finite, max_voxels)
    report = describe_input(input_path, rules=rules, options=options)
    if as_json:
        click.echo(dumps_json(report))
    else:
        print_report(report)
    if report.get("error"):
        click.echo(f"medseg: error: {report['error']}", err=True)
        sys.exit(2)


def _register_subcommands() -> None:
    from medseg.cli_classify import classify
    from medseg.cli_data import data
    from medseg.cli_evaluate import evaluate
    from medseg.cli_review import review
    from medseg.cli_synth import synth
    from medseg.cli_train import segment, train
    from medseg.cli_workflow import run, validate

    main.add_command(synth)
    main.add_command(data)
    main.add_command(evaluate)
    main.add_command(train)
    main.add_command(segment)
    main.add_command(classify)
    main.add_command(validate)
    main.add_command(run)
    main.add_command(review)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main()
