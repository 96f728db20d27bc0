"""`medseg synth`: generate synthetic chest CT phantoms and chest radiographs."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["synth"]

_COMPONENT_NAMES = ("bones", "vessels", "airways", "fissures", "texture", "findings", "partial_volume", "noise",
                    "blur", "pose", "contrast", "surroundings", "artifacts")
"""`medseg.data.phantom.model.COMPONENTS`, spelled out so the CLI starts without importing the generator (a test
keeps the two equal)."""


@click.group()
def synth() -> None:
    """Generate synthetic data (the project's own training and test data)."""


def _parse_findings(value: str) -> list[str] | str | None:
    from medseg.data.phantom.findings import parse_finding_kinds

    try:
        return parse_finding_kinds(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--findings") from None


@synth.command("ct")
@click.option("--cases", type=click.IntRange(min=1), default=1, show_default=True, help="Number of cases.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (created).")
@click.option("--seed", type=int, default=0, show_default=True, help="Dataset seed; same seed, same data.")
@click.option("--size", type=click.IntRange(32, 1024), default=512, show_default=True,
              help="Matrix size (pixel spacing scales so the field of view stays realistic).")
@click.option("--slices", type=click.IntRange(min=2), default=None,
              help="Slices per case [default: varies with the sampled slice spacing, 0.625-5 mm].")
@click.option("--findings", default="random", show_default=True,
              help="'random' (each kind at its default rate), 'balanced' (random, then every kind topped up to "
                   "its expected share of cases: training sets), 'none', or a comma list for every case "
                   "(nodule,effusion,pneumothorax,emphysema,consolidation,cardiomegaly).")
@click.option("--without", "without", multiple=True, type=click.Choice(_COMPONENT_NAMES),
              help="Switch a realism component off (repeatable).")
@click.option("--preview", is_flag=True, help="Also write case_XXX/preview.png (lobe overlay montage).")
def ct(cases: int, out: Path, seed: int, size: int, slices: int | None, findings: str, without: tuple[str, ...],
       preview: bool) -> None:
    """Synthetic chest CT phantoms: DICOM series, lobes.nii.gz, lungs.nii.gz, findings.json, manifest.yaml."""
    from rich.console import Console
    from rich.table import Table

    from medseg.data.phantom import Components
    from medseg.data.phantom.ct_case import synth_ct_dataset
    from medseg.progress import progress_bar

    kinds = _parse_findings(findings)
    components = Components.without(without)
    rows = []
    with progress_bar(cases, "cases") as advance:

        def on_slice(done: int, total: int) -> None:
            advance(0, info=f"case_{len(rows):03d} slice {done}/{total}")

        def on_case(result) -> None:
            advance(1, info=f"{result.case_id} done")
            a = result.acquisition
            rows.append((result.case_id, f"{a.size}x{a.size}x{a.slices}", f"{a.pixel_spacing:.2f}",
                         f"{a.slice_spacing:.2f}/{a.slice_thickness:.2f}", a.patient_position, a.truncation or "-",
                         f"{a.noise_sd:.0f}", ", ".join(result.findings) or "-"))

        manifest = synth_ct_dataset(out, cases, seed, size=size, slices=slices, findings=kinds,
                                    components=components, preview=preview, on_case=on_case, progress=on_slice)
    table = Table(title=f"{cases} synthetic CT case(s) in {out}")
    for column in ("case", "matrix", "pixel mm", "spacing/thick mm", "position", "truncated", "noise HU",
                   "findings"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    click.echo(f"manifest: {manifest}")


def _register_radiographs() -> None:
    from medseg.data.radiograph.cli import cxr

    synth.add_command(cxr)


_register_radiographs()
