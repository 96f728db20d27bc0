"""`medseg validate WORKFLOW.yaml` (check a workflow and the files it names) and `medseg run WORKFLOW.yaml`:
thin layers over `medseg.api.workflow` (`medseg.run`)."""

from __future__ import annotations

from pathlib import Path

import click

from medseg.cli.options import parse_overrides

__all__ = ["run", "validate"]

_SET_HELP = "Override a value, e.g. {example} (repeatable)."


@click.command()
@click.argument("workflow_path", metavar="WORKFLOW", type=click.Path(path_type=Path))
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help=_SET_HELP.format(example="--set inputs.path=/data --set steps.1.tta=true"))
@click.option("--json", "as_json", is_flag=True, help="Print the validated workflow as JSON.")
def validate(workflow_path: Path, settings: tuple[str, ...], as_json: bool) -> None:
    """Check a workflow file: schema (with the YAML line of each problem) and the files it names."""
    from medseg.api.workflow import check_workflow
    from medseg.errors import ConfigError
    from medseg.jsonable import dumps_json

    checked = check_workflow(workflow_path, parse_overrides(settings))
    workflow, errors, warnings = checked.workflow, checked.errors, checked.warnings
    if as_json:
        click.echo(dumps_json({"workflow": workflow.model_dump(mode="json"), "errors": errors,
                               "warnings": warnings}))
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
              help=_SET_HELP.format(example="--set executor.workers=2 --set steps.1.tta=true"))
@click.option("--force", is_flag=True, help="Redo cases finished by an earlier run.")
@click.pass_context
def run(ctx: click.Context, workflow_path: Path, input_path: Path | None, output: Path | None,
        settings: tuple[str, ...], force: bool) -> None:
    """Run a workflow: every case of its inputs through its steps, with a run.json record and a summary.

    Finished cases are skipped on a rerun (resumable); a failing case is recorded and the batch goes on.
    """
    from medseg.api.workflow import NOT_YET, check_workflow, run_checked, workflow_overrides

    overrides = workflow_overrides(input=input_path, output=output, settings=parse_overrides(settings))
    checked = check_workflow(workflow_path, overrides)
    for warning in checked.warnings:
        if NOT_YET not in warning:   # files the workflow's own synthesize/train steps write
            click.echo(f"warning: {warning}", err=True)
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    summary = run_checked(checked, force=force, progress=not quiet)
    workflow = checked.workflow
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
