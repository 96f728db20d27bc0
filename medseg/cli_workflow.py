"""`medseg validate WORKFLOW.yaml`: check a workflow file and the files it names, without running it."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["file_problems", "validate"]


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
