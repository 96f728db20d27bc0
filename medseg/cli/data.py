"""`medseg data`: validate dataset manifests, export their schema, import public datasets.

Register with `main.add_command(data)`; the group also works on its own (errors -> one line, exit 2).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from medseg.cli.errors import ErrorReportingGroup

__all__ = ["data"]

_MAX_WARNINGS_SHOWN = 10


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
def data() -> None:
    """Dataset manifests: validate them, export their schema, import public datasets."""


@data.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--no-checksums", is_flag=True, help="Skip sha256 verification (fast).")
@click.option("--no-label-values", is_flag=True, help="Skip reading segmentation label files.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of a table.")
def validate(manifest: Path, no_checksums: bool, no_label_values: bool, as_json: bool) -> None:
    """Check a manifest: schema, files present, checksums, label values, duplicate ids, patient leakage.

    Exit code 0 when all is well, 1 when problems were found, 2 when the manifest cannot be read or is invalid.
    """
    from medseg.data.manifest import validate_manifest
    from medseg.jsonable import dumps_json

    report = validate_manifest(manifest, check_checksums=not no_checksums, check_label_values=not no_label_values)
    if as_json:
        click.echo(dumps_json(report.to_dict()))
    elif report.ok:
        click.echo(f"{manifest}: {report.summary()}")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{manifest}: {len(report.problems)} problem(s)", title_justify="left")
        for column in ("case", "path", "problem"):
            table.add_column(column, overflow="fold")
        for problem in report.problems:
            table.add_row(problem.case_id or "-", problem.path or "-", f"{problem.kind}: {problem.message}")
        console = Console()
        console.print(table)
        console.print(report.summary(), markup=False, highlight=False)
    sys.exit(0 if report.ok else 1)


@data.command()
@click.option("--out", type=click.Path(path_type=Path), help="Write the schema here instead of printing it.")
def schema(out: Path | None) -> None:
    """Print (or write) the manifest JSON Schema."""
    from medseg.data.manifest import manifest_json_schema, write_json_schema
    from medseg.jsonable import dumps_json

    if out is None:
        click.echo(dumps_json(manifest_json_schema()))
    else:
        click.echo(f"wrote {write_json_schema(out)}")


@data.group(name="import")
def import_() -> None:
    """Write a manifest for a public dataset on disk (images are referenced, never copied)."""


def _command_line(ctx: click.Context) -> str:
    """The import command as typed, for the manifest's provenance (options left at their default omitted)."""
    parts = ["medseg", "data", "import", str(ctx.info_name), shlex.quote(str(ctx.params["root"]))]
    for name, value in ctx.params.items():
        given = ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
        if name != "root" and given and value not in (None, False):
            flag = "--" + name.replace("_", "-")
            parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _report(result: Any) -> None:
    click.echo(result.summary())
    for warning in result.warnings[:_MAX_WARNINGS_SHOWN]:
        click.echo(f"warning: {warning}", err=True)
    if len(result.warnings) > _MAX_WARNINGS_SHOWN:
        click.echo(f"warning: ... and {len(result.warnings) - _MAX_WARNINGS_SHOWN} more (-vv lists them)", err=True)


def _classes(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


_root_argument = click.argument("root", type=click.Path(path_type=Path, exists=True, file_okay=False))
_checksum_option = click.option("--no-checksums", is_flag=True, help="Do not hash the files (fast, less safe).")
_seed_option = click.option("--split-seed", type=int, default=0, show_default=True,
                            help="Seed of the patient-level split assignment.")
_classes_option = click.option("--classes", help="Comma-separated subset of the classes to keep.")


@import_.command()
@_root_argument
@click.option("--out", type=click.Path(path_type=Path), default=Path("totalsegmentator/manifest.yaml"),
              show_default=True, help="Manifest to write.")
@click.option("--labels-dir", type=click.Path(path_type=Path),
              help="Folder for the merged lobe label maps [default: labels/ beside the manifest].")
@_seed_option
@_checksum_option
@click.pass_context
def totalsegmentator(ctx: click.Context, root: Path, out: Path, labels_dir: Path | None, split_seed: int,
                     no_checksums: bool) -> None:
    """TotalSegmentator CT dataset: merge the five lobe masks per subject into labels 1-5."""
    from medseg.data.importers import import_totalsegmentator

    _report(import_totalsegmentator(root, out, labels_dir=labels_dir, split_seed=split_seed,
                                    checksums=not no_checksums, command=_command_line(ctx)))


@import_.command()
@_root_argument
@click.option("--out", type=click.Path(path_type=Path), default=Path("chestxray14/manifest.yaml"),
              show_default=True, help="Manifest to write.")
@_classes_option
@click.option("--val-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of train_val_list.txt patients that go to val.")
@_seed_option
@_checksum_option
@click.pass_context
def chestxray14(ctx: click.Context, root: Path, out: Path, classes: str | None, val_fraction: float,
                split_seed: int, no_checksums: bool) -> None:
    """NIH ChestX-ray14: Data_Entry_2017.csv findings, official split lists when present."""
    from medseg.data.importers import import_chestxray14

    _report(import_chestxray14(root, out, classes=_classes(classes), split_seed=split_seed,
                               val_fraction=val_fraction, checksums=not no_checksums, command=_command_line(ctx)))


@import_.command()
@_root_argument
@click.option("--out", type=click.Path(path_type=Path), default=Path("chexpert/manifest.yaml"),
              show_default=True, help="Manifest to write.")
@click.option("--uncertain", type=click.Choice(["ones", "zeros", "ignore"]), required=True,
              help="Uncertain (-1) labels become 1, 0, or null (ignored in training). Blank is always 0.")
@click.option("--frontal-only", is_flag=True, help="Keep frontal views only.")
@_classes_option
@click.option("--valid-split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="Split for valid.csv; with 'test', val is carved from train.csv per patient.")
@click.option("--val-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of train.csv patients that go to val (with --valid-split test).")
@_seed_option
@_checksum_option
@click.pass_context
def chexpert(ctx: click.Context, root: Path, out: Path, uncertain: str, frontal_only: bool, classes: str | None,
             valid_split: str, val_fraction: float, split_seed: int, no_checksums: bool) -> None:
    """CheXpert: train.csv / valid.csv with an explicit uncertain-label policy."""
    from medseg.data.importers import import_chexpert

    _report(import_chexpert(root, out, uncertain=uncertain, frontal_only=frontal_only,  # type: ignore[arg-type]
                            classes=_classes(classes), valid_split=valid_split,  # type: ignore[arg-type]
                            val_fraction=val_fraction, split_seed=split_seed, checksums=not no_checksums,
                            command=_command_line(ctx)))
