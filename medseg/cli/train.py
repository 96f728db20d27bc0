"""`medseg train`: a thin layer over `medseg.train`."""

from __future__ import annotations

from pathlib import Path

import click

from medseg.cli.options import parse_overrides, settings_option

__all__ = ["train"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--data", "manifest", type=click.Path(path_type=Path), help="Dataset manifest (overrides data.manifest).")
@click.option("--output", type=click.Path(path_type=Path), help="Run folder (overrides output).")
@click.option("--resume", is_flag=True, help="Continue the run in the output folder from its last checkpoint.")
@settings_option
@click.pass_context
def train(ctx: click.Context, config: Path, manifest: Path | None, output: Path | None, resume: bool,
          settings: tuple[str, ...]) -> None:
    """Train a lobe segmentation or radiograph classification model from a YAML config (see configs/train/)."""
    from medseg.api.train import monitored_metric, run_config
    from medseg.train.config import load_train_config

    overrides = parse_overrides(settings)
    if manifest is not None:
        overrides["data.manifest"] = str(manifest)
    if output is not None:
        overrides["output"] = str(output)
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    train_config = load_train_config(config, overrides)
    summary = run_config(train_config, resume=resume, progress=not quiet, config_path=config)
    click.echo(f"trained {summary.epochs_run} epochs in {summary.seconds / 60:.1f} min; best "
               f"{monitored_metric(train_config)} {summary.best_metric:.4f} at epoch {summary.best_epoch}"
               f"{' (stopped early)' if summary.stopped_early else ''}")
    click.echo(f"best model: {summary.run_dir / 'best.safetensors'}  metrics: {summary.run_dir / 'metrics.csv'}")
