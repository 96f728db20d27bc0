"""`medseg validate WORKFLOW.yaml` (check a workflow and the files it names) and `medseg run WORKFLOW.yaml`."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["file_problems", "run", "validate"]


def file_problems(workflow) -> tuple[list[str], list[str]]:
    """(errors, warnings) about files the workflow names: inputs, models, configs, QC ranges, labels."""
    errors: list[str] = []
    warnings: list[str] = []
    inputs = workflow.inputs
    if inputs is not None:
        source = inputs.path or inputs.manifest
        if not source.exists():
            errors.append(f"inputs: {source} does not exist")
        elif inputs.manifest is not None and not source.is_file():
            errors.append(f"inputs.manifest: {source} is not a file")
    trains = [step for step in workflow.steps if step.kind == "train"]
    for index, step in enumerate(workflow.steps):
        for key in ("model", "config", "qc"):
            path = getattr(step, key, None)
            if path is None or Path(path).is_file():
                continue
            if key == "model" and any(workflow.steps.index(t) < index for t in trains):
                warnings.append(f"steps[{index}] {step.kind}.model: {path} does not exist yet (an earlier train "
                                "step must produce it)")
            else:
                errors.append(f"steps[{index}] {step.kind}.{key}: no such file {path}")
        report = getattr(step, "auc_report", None)
        if report is not None and not Path(report.labels).is_file():
            errors.append(f"steps[{index}] export.auc_report.labels: no such file {report.labels}")
    return errors, warnings


@click.command()
@click.argument("workflow_path", metavar="WORKFLOW", type=click.Path(path_type=Path))
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a value, e.g. --set inputs.path=/data --set steps.1.tta=true (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the validated workflow as JSON.")
def validate(workflow_path: Path, settings: tuple[str, ...], as_json: bool) -> None:
    """Check a workflow file: schema (with the YAML line of each problem) and the files it names."""
    from medseg.cli_train import _parse_overrides
    from medseg.errors import ConfigError
    from medseg.workflow import load_workflow

    workflow = load_workflow(workflow_path, _parse_overrides(settings))
    errors, warnings = file_problems(workflow)
    if as_json:
        click.echo(json.dumps({"workflow": workflow.model_dump(mode="json"), "errors": errors,
                               "warnings": warnings}, indent=2))
    else:
        click.echo(f"{workflow_path}: workflow '{workflow.name}', {len(workflow.steps)} steps: "
                   + " -> ".join(step.kind for step in workflow.steps))
        if workflow.inputs is not None:
            source = workflow.inputs.path or workflow.inputs.manifest
            click.echo(f"  inputs: {source}" + (f" ({workflow.inputs.glob})" if workflow.inputs.glob else ""))
        click.echo(f"  output: {workflow.output.dir}/{workflow.output.layout}  executor: {workflow.executor.kind} "
                   f"x{workflow.executor.workers}  device: {workflow.device}")
        for warning in warnings:
            click.echo(f"  warning: {warning}")
    if errors:
        raise ConfigError(f"{len(errors)} problem(s): " + "; ".join(errors), workflow_path)
    if not as_json:
        click.echo("  valid")


@click.command("run")
@click.argument("workflow_path", metavar="WORKFLOW", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="Process this folder tree (or manifest .yaml) instead of the workflow's inputs.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Run folder (output.dir).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a value, e.g. --set executor.workers=2 --set steps.1.tta=true (repeatable).")
@click.option("--force", is_flag=True, help="Redo cases finished by an earlier run.")
@click.pass_context
def run(ctx: click.Context, workflow_path: Path, input_path: Path | None, output: Path | None,
        settings: tuple[str, ...], force: bool) -> None:
    """Run a workflow: every case of its inputs through its steps, with a run.json record and a summary.

    Finished cases are skipped on a rerun (resumable); a failing case is recorded and the batch goes on.
    """
    from medseg.cli_train import _parse_overrides
    from medseg.errors import ConfigError
    from medseg.workflow import load_workflow
    from medseg.workflow.runner import run_workflow

    overrides = _parse_overrides(settings)
    if input_path is not None:
        manifest = input_path.is_file() and input_path.suffix.lower() in (".yaml", ".yml", ".json")
        overrides.update({"inputs.path": None if manifest else str(input_path),
                          "inputs.manifest": str(input_path) if manifest else None, "inputs.glob": None})
    if output is not None:
        overrides["output.dir"] = str(output)
    workflow = load_workflow(workflow_path, overrides)
    errors, warnings = file_problems(workflow)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if errors:
        raise ConfigError(f"{len(errors)} problem(s): " + "; ".join(errors), workflow_path)
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    summary = run_workflow(workflow, force=force, progress=not quiet)
    counts = ", ".join(f"{summary.count(s)} {s.replace('_', ' ')}" for s in ("done", "skipped", "failed",
                                                                           "input_problem") if summary.count(s))
    click.echo(f"{workflow.name}: {counts or 'nothing to do'} in {summary.seconds:.1f} s -> {summary.output}")
    for outcome in summary.failed:
        label = "FAILED" if outcome.status == "failed" else "NOT A CASE"
        click.echo(f"  {label} {outcome.case_id or outcome.source}: {outcome.reason}")
    flagged = [o for o in summary.outcomes if o.flags]
    for outcome in flagged[:20]:
        click.echo(f"  flags {outcome.case_id}: {', '.join(outcome.flags)}")
    click.echo(f"record: {summary.output / 'run.json'}")
    if (summary.output / "index.html").is_file():
        click.echo(f"review: {summary.output / 'index.html'} (sheet: {summary.output / 'review.csv'})")
    if summary.failed and workflow.fail_on_error:
        raise SystemExit(1)
