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
    synthesized = [(index, Path(step.out)) for index, step in enumerate(workflow.steps) if step.kind == "synthesize"]

    def made_by(path: Path) -> str | None:
        """'steps[i] synthesize' when a synthesize step writes `path` (or a folder holding it)."""
        for index, folder in synthesized:
            if path == folder or folder in path.parents or path in folder.parents:
                return f"steps[{index}] synthesize"
        return None

    inputs = workflow.inputs
    if inputs is not None:
        source = inputs.path or inputs.manifest
        if not source.exists() and made_by(source):
            warnings.append(f"inputs: {source} does not exist yet ({made_by(source)} writes it)")
        elif not source.exists():
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
        if report is not None and not Path(report.labels).is_file() and made_by(Path(report.labels)):
            warnings.append(f"steps[{index}] export.auc_report.labels: {report.labels} does not exist yet "
                            f"({made_by(Path(report.labels))} writes it)")
        elif report is not None and not Path(report.labels).is_file():
            errors.append(f"steps[{index}] export.auc_report.labels: no such file {report.labels}")
    return errors, warnings


_LATER = "does not exist yet"


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
        if _LATER not in warning:   # files the workflow's own synthesize/train steps write
            click.echo(f"warning: {warning}", err=True)
    if errors:
        raise ConfigError(f"{len(errors)} problem(s): " + "; ".join(errors), workflow_path)
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    summary = run_workflow(workflow, force=force, progress=not quiet)
    _print_summary(workflow.name, summary)
    click.echo(f"record: {summary.output / 'run.json'}")
    if (summary.output / "index.html").is_file():
        click.echo(f"review: {summary.output / 'index.html'} (sheet: {summary.output / 'review.csv'})")
    if summary.failed and workflow.fail_on_error:
        raise SystemExit(1)


_SHOWN_ROWS = 30


def _print_summary(name: str, summary) -> None:
    """Counts per status with time per case, then the cases that need a look (failed, not a case, flagged)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False)
    counts = Table(title=f"{name}: {len(summary.outcomes)} input(s) in {summary.seconds:.1f} s -> {summary.output}",
                   title_justify="left")
    for column in ("status", "cases", "s/case (mean)", "s/case (max)"):
        counts.add_column(column, justify="left" if column == "status" else "right")
    for status in ("done", "skipped", "failed", "input_problem"):
        seconds = [o.seconds for o in summary.outcomes if o.status == status]
        if seconds:
            counts.add_row(status.replace("_", " "), str(len(seconds)),
                           f"{sum(seconds) / len(seconds):.1f}" if status == "done" else "",
                           f"{max(seconds):.1f}" if status == "done" else "")
    if not summary.outcomes:
        counts.add_row("nothing to do", "0", "", "")
    console.print(counts)
    attention = [o for o in summary.outcomes if o.status in ("failed", "input_problem")]
    attention += [o for o in summary.outcomes if o.status in ("done", "skipped") and o.flags]
    if not attention:
        return
    table = Table(title="needs a look", title_justify="left")
    for column in ("case", "status", "reason / QC flags"):
        table.add_column(column, overflow="fold")
    for outcome in attention[:_SHOWN_ROWS]:
        label = {"failed": "FAILED", "input_problem": "NOT A CASE"}.get(outcome.status, "flagged")
        table.add_row(outcome.case_id or outcome.source, label, outcome.reason or ", ".join(outcome.flags))
    console.print(table)
    if len(attention) > _SHOWN_ROWS:
        console.print(f"... and {len(attention) - _SHOWN_ROWS} more (run.json has every case)")
