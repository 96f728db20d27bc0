"""`medseg classify`: probabilities and yes/no calls per finding for chest radiographs (CSV), optional Grad-CAM."""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path

import click

__all__ = ["classify"]

log = logging.getLogger("medseg")


def _write_predictions(path: Path, classes: list[str], rows: list[tuple[str, list[float], list[int]]]) -> None:
    from medseg.io.atomic import atomic_path

    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *classes, *(f"{name}_call" for name in classes)])
        for image_id, probs, calls in rows:
            writer.writerow([image_id, *(f"{p:.6f}" for p in probs), *calls])


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
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: bfloat16 autocast (about 2x faster on CPUs with AMX / AVX512-BF16 and on GPUs; "
                   "probabilities differ by ~1e-3).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (counts, failures, timings).")
def classify(inputs: tuple[Path, ...], checkpoint: Path, output: Path, splits: tuple[str, ...], cam_dir: Path | None,
             cam_classes: str, device: str, precision: str, batch_size: int, threads: int | None,
             as_json: bool) -> None:
    """Classify chest radiographs for findings: probabilities and calls at the model's operating points.

    INPUT may be PNG/JPEG files, CR/DX DICOM files, folders of them (searched recursively; other files are
    skipped), or a dataset manifest (image ids as in the manifest, so the CSV matches its labels.csv).
    A file that cannot be read is reported and skipped; the exit code is then 1.
    """
    import numpy as np
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medseg.errors import InputError
    from medseg.infer.classify import RadiographClassifier, collect_radiographs

    if output.suffix.lower() != ".csv":
        raise InputError("--out must be a .csv file", output)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    classifier = RadiographClassifier(checkpoint, device=device, batch_size=batch_size, precision=precision)
    found = collect_radiographs(inputs, splits=splits or None)
    for path, reason in found.skipped[:5]:
        log.info("skipped %s: %s", path, reason)
    rows: list[tuple[str, list[float], list[int]]] = []
    failures: list[tuple[str, str]] = []
    cams_written = 0
    cam_names: set[str] = set()
    quiet = not sys.stderr.isatty() or as_json
    with Progress(TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True, disable=quiet) as bar:
        task = bar.add_task("classify", total=len(found.items))
        for result in classifier.classify(found.items, keep_images=cam_dir is not None,
                                          progress=lambda n: bar.advance(task, n)):
            if result.error is not None:
                failures.append((result.item.image_id, result.error))
                log.error("%s", result.error)
                continue
            rows.append((result.item.image_id, result.probabilities.tolist(), result.calls.tolist()))
            if cam_dir is not None:
                _save_cams(classifier, result, cam_dir, cam_classes, cam_names)
                cams_written += 1
    if rows:
        _write_predictions(output, classifier.classes, rows)
    seconds = time.perf_counter() - started
    calls = np.array([r[2] for r in rows]) if rows else np.zeros((0, len(classifier.classes)))
    positives = {name: int(calls[:, n].sum()) for n, name in enumerate(classifier.classes)}
    summary = {"output": str(output) if rows else None, "classified": len(rows), "failed": len(failures),
               "skipped_files": len(found.skipped), "positives": positives, "seconds": round(seconds, 2),
               "operating_point": classifier.operating_point,
               "failures": [{"image": image, "error": error} for image, error in failures],
               "cams": str(cam_dir) if cam_dir is not None and cams_written else None}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"classified {len(rows)} radiographs in {seconds:.1f} s -> {output if rows else '(nothing written)'}"
                   + (f"; {len(found.skipped)} non-radiograph files skipped" if found.skipped else ""))
        click.echo("positive calls (" + classifier.operating_point + "): "
                   + ", ".join(f"{name} {count}" for name, count in positives.items()))
        if cams_written:
            click.echo(f"Grad-CAM overlays: {cam_dir} ({cams_written} images)")
        for image, error in failures:
            click.echo(f"FAILED {image}: {error}", err=True)
    if failures:
        raise SystemExit(1)


def _save_cams(classifier, result, cam_dir: Path, which: str, used: set[str]) -> None:
    import numpy as np

    from medseg.infer.explain import cam_filename, grad_cam, save_cam_panel

    probs = result.probabilities
    if which == "all":
        chosen = list(range(len(probs)))
    elif which == "called":
        chosen = [int(i) for i in np.flatnonzero(result.calls)] or [int(np.argmax(probs))]
    else:
        chosen = [int(np.argmax(probs))]
    image = result.image[None, None]
    panels = [(classifier.classes[k], float(probs[k]), grad_cam(classifier.model, image, k)[0]) for k in chosen]
    name = cam_filename(result.item.image_id)
    stem, number = name[:-4], 2
    while name in used:   # a.png and a.dcm, say, must not overwrite each other
        name, number = f"{stem}_{number}.png", number + 1
    used.add(name)
    save_cam_panel(cam_dir / name, result.image, panels, title=Path(result.item.image_id).name)
