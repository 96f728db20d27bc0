"""`medseg synth cxr`: the click command; register it with `synth.add_command(cxr)`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

__all__ = ["cxr"]


@click.command("cxr")
@click.option("--cases", "-n", type=click.IntRange(min=1), required=True, help="Number of radiographs.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (images/, dicom/, labels.csv, metadata.csv, manifest.yaml).")
@click.option("--seed", type=int, default=0, show_default=True, help="Dataset seed; same seed, same bytes.")
@click.option("--size", type=click.IntRange(min=64), default=1024, show_default=True, help="Image size (square).")
@click.option("--prevalence", "prevalence", multiple=True, metavar="FINDING=P",
              help="Override a finding's prevalence, e.g. --prevalence effusion=0.2 (repeatable). Defaults: "
                   "nodule 0.10, effusion 0.15, cardiomegaly 0.08, pneumothorax 0.06, consolidation 0.07, "
                   "emphysema 0.05.")
@click.option("--monochrome1", "monochrome1_fraction", type=click.FloatRange(0.0, 1.0), default=0.25,
              show_default=True, help="Share of DICOM files written as MONOCHROME1.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel worker processes.")
@click.option("--preview", is_flag=True, help="Also write preview.png, a contact sheet of the first 12 cases.")
def cxr(cases: int, out: Path, seed: int, size: int, prevalence: tuple[str, ...], monochrome1_fraction: float,
        workers: int, preview: bool) -> None:
    """Synthetic PA chest radiographs projected from phantom volumes, with multi-label findings.

    Writes 8-bit PNGs, 12-bit DICOM DX files, labels.csv (image + one 0/1 column per finding),
    metadata.csv (patient, split, cardiothoracic ratio, photometric, DICOM path, seed) and manifest.yaml.
    """
    from medseg.data.manifest import progress as progress_bar
    from medseg.data.radiograph.dataset import synthesize_cxr_dataset
    from medseg.data.radiograph.labels import parse_prevalence
    from medseg.errors import ConfigError

    try:
        shares = parse_prevalence(prevalence)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--prevalence") from None
    ctx = click.get_current_context()
    argv = sys.argv[1:]
    command = (shlex.join([ctx.command_path, *argv[argv.index(ctx.info_name) + 1:]])
               if ctx.info_name in argv else None)
    with progress_bar(cases, "synthesising radiographs", min_items=2) as advance:
        result = synthesize_cxr_dataset(out, cases, seed, size=size, prevalence=shares,
                                        monochrome1_fraction=monochrome1_fraction,
                                        progress=lambda done, total: advance(), preview=preview, workers=workers,
                                        command=command)
    counts = ", ".join(f"{name} {n}" for name, n in result.positives.items())
    click.echo(f"{result.cases} radiographs in {result.out_dir} ({result.seconds:.1f} s); positives: {counts}")
    click.echo(f"labels: {result.labels_csv}  manifest: {result.manifest}")
    if result.preview is not None:
        click.echo(f"preview: {result.preview}")
