"""`medseg classify`: a thin layer over `medseg.classify` and `medseg.write_predictions` (CSV, Grad-CAM)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from medseg.cli.options import device_option, json_option, set_threads, threads_option

__all__ = ["classify"]


@click.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="Classification checkpoint (.safetensors from `medseg train configs/train/cxr.yaml`).")
@click.option("--out", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Predictions CSV: image, one probability column per class, then <class>_call (0/1).")
@click.option("--split", "splits", multiple=True, help="Manifest inputs: only cases of this split (repeatable).")
@click.option("--cam", "cam_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write Grad-CAM overlays (one PNG per image) into this folder.")
@click.option("--cam-classes", type=click.Choice(["called", "top", "all"]), default="called", show_default=True,
              help="Grad-CAM for the classes called positive (the top class when none), the top class, or all.")
@device_option
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: bfloat16 autocast (about 2x faster on CPUs with AMX / AVX512-BF16 and on GPUs; "
                   "probabilities differ by ~1e-3).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@threads_option
@json_option("Print a JSON summary (counts, failures, timings).")
def classify(inputs: tuple[Path, ...], checkpoint: Path, output: Path, splits: tuple[str, ...], cam_dir: Path | None,
             cam_classes: str, device: str, precision: str, batch_size: int, threads: int | None,
             as_json: bool) -> None:
    """Classify chest radiographs for findings: probabilities and calls at the model's operating points.

    INPUT may be PNG/JPEG files, CR/DX DICOM files, folders of them (searched recursively; other files are
    skipped), or a dataset manifest (image ids as in the manifest, so the CSV matches its labels.csv).
    A file that cannot be read is reported and skipped; the exit code is then 1.
    """
    from medseg.api.classify import CamOptions, ClassifyOptions, classify_radiographs
    from medseg.errors import InputError
    from medseg.evaluate.predictions import write_predictions
    from medseg.jsonable import dumps_json

    if output.suffix.lower() != ".csv":
        raise InputError("--out must be a .csv file", output)
    set_threads(threads)
    started = time.perf_counter()
    options = ClassifyOptions(batch_size=batch_size, precision=precision, splits=splits)  # type: ignore[arg-type]
    cam = None if cam_dir is None else CamOptions(cam_dir, cam_classes)  # type: ignore[arg-type]
    done = classify_radiographs(inputs, checkpoint, device=device, options=options, cam=cam, progress=not as_json)
    good = [row for row in done.rows if row.ok]
    if good:
        write_predictions(done.rows, output)
    seconds = time.perf_counter() - started
    positives = {name: sum(int(row.calls[name]) for row in good if row.calls) for name in done.classes}
    failures = done.failures
    if as_json:
        click.echo(dumps_json({
            "output": str(output) if good else None, "classified": len(good), "failed": len(failures),
            "skipped_files": len(done.skipped), "positives": positives, "seconds": round(seconds, 2),
            "operating_point": done.operating_point,
            "failures": [{"image": row.image, "error": row.error} for row in failures],
            "cams": str(cam_dir) if cam_dir is not None and done.cams else None}))
    else:
        click.echo(f"classified {len(good)} radiographs in {seconds:.1f} s -> {output if good else '(nothing written)'}"
                   + (f"; {len(done.skipped)} non-radiograph files skipped" if done.skipped else ""))
        click.echo("positive calls (" + done.operating_point + "): "
                   + ", ".join(f"{name} {count}" for name, count in positives.items()))
        if done.cams:
            click.echo(f"Grad-CAM overlays: {cam_dir} ({done.cams} images)")
        for row in failures:
            click.echo(f"FAILED {row.image}: {row.error}", err=True)
    if failures:
        raise SystemExit(1)
