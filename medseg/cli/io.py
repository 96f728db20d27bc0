"""`medseg convert` and `medseg info`: read an image as medseg sees it (thin layers over `medseg.io`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from medseg.cli.options import json_option, read_options, rules_and_options

__all__ = ["convert", "info"]


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--label", is_flag=True, help="Store as a uint8 label map (for masks).")
@read_options
def convert(input_path: Path, output: Path, label: bool, modality: str, gantry_tilt: str,
            uneven_spacing: str, non_finite: str, max_voxels: int) -> None:
    """Convert a DICOM folder/file or a NIfTI/NRRD/MHA volume to NIfTI (exact geometry)."""
    from medseg.io import load_volume, write_nifti

    rules, options = rules_and_options(modality, gantry_tilt, uneven_spacing, non_finite, max_voxels)
    started = time.perf_counter()
    volume = load_volume(input_path, rules=rules, options=options)
    write_nifti(volume, output, label=label)
    click.echo(f"wrote {output}  {'x'.join(map(str, volume.shape))} voxels, spacing "
               f"{', '.join(f'{s:.3g}' for s in volume.spacing)} mm, {volume.orientation}, "
               f"{time.perf_counter() - started:.1f} s")


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@json_option("Print a JSON document instead of tables.")
@read_options
def info(input_path: Path, as_json: bool, modality: str, gantry_tilt: str, uneven_spacing: str, non_finite: str,
         max_voxels: int) -> None:
    """Show the series found, which one is selected and why, its geometry, HU range and warnings."""
    from medseg.info import describe_input, print_report
    from medseg.jsonable import dumps_json

    rules, options = rules_and_options(modality, gantry_tilt, uneven_spacing, non_finite, max_voxels)
    report = describe_input(input_path, rules=rules, options=options)
    if as_json:
        click.echo(dumps_json(report))
    else:
        print_report(report)
    if report.get("error"):
        click.echo(f"medseg: error: {report['error']}", err=True)
        sys.exit(2)
