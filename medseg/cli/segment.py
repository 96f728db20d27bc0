"""`medseg segment`: a thin layer over `medseg.segment`."""

from __future__ import annotations

from pathlib import Path

import click

from medseg.cli.options import device_option, json_option, set_threads, threads_option

__all__ = ["segment"]


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--model", "checkpoint", type=click.Path(path_type=Path),
              help="Lobe model checkpoint (.safetensors from `medseg train`); needed for --task lobes.")
@click.option("--task", type=click.Choice(["lobes", "lungs"]), default="lobes", show_default=True,
              help="lobes: the model's lobes (label map in its card; configs/labels/lobes.yaml); lungs: right and left "
                   "lung (classical, no model; configs/labels/lungs.yaml).")
@device_option
@click.option("--tta", is_flag=True, help="Average with the left-right mirrored prediction (labels matched).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Slices per batch.")
@threads_option
@json_option("Print stage timings and label volumes as JSON.")
def segment(input_path: Path, output: Path, checkpoint: Path | None, task: str, device: str, tta: bool,
            batch_size: int, threads: int | None, as_json: bool) -> None:
    """Segment lung lobes (or lungs) of a chest CT; writes a label NIfTI on the exact source grid.

    INPUT is a DICOM folder or file, or a NIfTI/NRRD/MHA volume.
    """
    from medseg.api.segment import SegmentOptions
    from medseg.api.segment import segment as run_segment
    from medseg.errors import ConfigError
    from medseg.jsonable import dumps_json

    if task == "lobes" and checkpoint is None:
        raise ConfigError("--task lobes needs --model CHECKPOINT (train one with `medseg train "
                          "configs/train/lobes.yaml`, see README), or use --task lungs")
    set_threads(threads)
    result = run_segment(input_path, output, model=checkpoint, task=task, device=device,  # type: ignore[arg-type]
                         options=SegmentOptions(batch_size=batch_size, tta=tta))
    if as_json:
        click.echo(dumps_json({"output": str(output),
                               "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
                               "volumes_ml": result.volumes}))
        return
    stages = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.timings.items())
    click.echo(f"wrote {output} ({sum(result.timings.values()):.1f} s: {stages})")
    for name, ml in result.volumes.items():
        click.echo(f"  {name:<20} {ml:8.1f} ml")
