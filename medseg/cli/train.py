"""`medseg train` and `medseg segment`: thin layers over `medseg.train` and `medseg.infer`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click
import yaml

__all__ = ["segment", "train"]

log = logging.getLogger("medseg")


def _parse_overrides(values: tuple[str, ...]) -> dict[str, object]:
    overrides = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--data", "manifest", type=click.Path(path_type=Path), help="Dataset manifest (overrides data.manifest).")
@click.option("--output", type=click.Path(path_type=Path), help="Run folder (overrides output).")
@click.option("--resume", is_flag=True, help="Continue the run in the output folder from its last checkpoint.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set schedule.epochs=3 (repeatable).")
@click.pass_context
def train(ctx: click.Context, config: Path, manifest: Path | None, output: Path | None, resume: bool,
          settings: tuple[str, ...]) -> None:
    """Train a lobe segmentation or radiograph classification model from a YAML config (see configs/train/)."""
    from medseg.train.config import load_train_config

    overrides = _parse_overrides(settings)
    if manifest is not None:
        overrides["data.manifest"] = str(manifest)
    if output is not None:
        overrides["output"] = str(output)
    train_config = load_train_config(config, overrides)
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    if train_config.task == "classification":
        from medseg.train.classification import train_classification as run
        monitor = "val_macro_auc"
    else:
        from medseg.train.segmentation import train_segmentation as run
        monitor = "val_dice"
    summary = run(train_config, resume=resume, progress=not quiet, config_path=config)
    click.echo(f"trained {summary.epochs_run} epochs in {summary.seconds / 60:.1f} min; best {monitor} "
               f"{summary.best_metric:.4f} at epoch {summary.best_epoch}"
               f"{' (stopped early)' if summary.stopped_early else ''}")
    click.echo(f"best model: {summary.run_dir / 'best.safetensors'}  metrics: {summary.run_dir / 'metrics.csv'}")


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--model", "checkpoint", type=click.Path(path_type=Path),
              help="Lobe model checkpoint (.safetensors from `medseg train`); needed for --task lobes.")
@click.option("--task", type=click.Choice(["lobes", "lungs"]), default="lobes", show_default=True,
              help="lobes: 1 LUL, 2 LLL, 3 RUL, 4 RML, 5 RLL (model); lungs: 1 right, 2 left (classical, no model).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--tta", is_flag=True, help="Average with the left-right mirrored prediction (labels matched).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Slices per batch.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print stage timings and label volumes as JSON.")
def segment(input_path: Path, output: Path, checkpoint: Path | None, task: str, device: str, tta: bool,
            batch_size: int, threads: int | None, as_json: bool) -> None:
    """Segment lung lobes (or lungs) of a chest CT; writes a label NIfTI on the exact source grid.

    INPUT is a DICOM folder or file, or a NIfTI/NRRD/MHA volume.
    """
    import numpy as np
    import torch

    from medseg.errors import ConfigError, InputError
    from medseg.infer.segment import LobeSegmenter, segment_lungs
    from medseg.io import load_volume, require_ct, write_nifti

    if not str(output).endswith((".nii", ".nii.gz")):
        raise InputError("output must end in .nii or .nii.gz", output)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    segmenter = None
    if task == "lobes":
        if checkpoint is None:
            raise ConfigError("--task lobes needs --model CHECKPOINT (train one with `medseg train "
                              "configs/train/lobes.yaml`, see README), or use --task lungs")
        segmenter = LobeSegmenter(checkpoint, device=device, batch_size=batch_size, tta=tta)
    model_seconds = time.perf_counter() - started
    started = time.perf_counter()
    volume = load_volume(input_path)
    require_ct(volume, "lung segmentation")
    read_seconds = time.perf_counter() - started
    result = segmenter(volume) if segmenter else segment_lungs(volume)
    started = time.perf_counter()
    write_nifti(result.labels, output, label=True)
    timings = {"load_model": model_seconds, "read": read_seconds, **result.timings,
               "write": time.perf_counter() - started}
    voxel_ml = float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    counts = np.bincount(result.labels.array.ravel(), minlength=max(result.label_names, default=0) + 1)
    volumes = {name: round(float(counts[value]) * voxel_ml, 1) for value, name in result.label_names.items()
               if value}
    if as_json:
        click.echo(json.dumps({"output": str(output), "timings_s": {k: round(v, 3) for k, v in timings.items()},
                               "volumes_ml": volumes}, indent=2))
        return
    stages = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items())
    click.echo(f"wrote {output} ({sum(timings.values()):.1f} s: {stages})")
    for name, ml in volumes.items():
        click.echo(f"  {name:<20} {ml:8.1f} ml")
