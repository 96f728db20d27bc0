"""`medseg.run`: a workflow file over a batch of cases, and the checks of the files a workflow names."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError

if TYPE_CHECKING:
    from medseg.workflow import Workflow
    from medseg.workflow.runner import RunSummary

__all__ = ["CheckedWorkflow", "check_workflow", "file_problems", "run", "run_checked", "workflow_overrides"]

log = logging.getLogger("medseg")

NOT_YET = "does not exist yet"
"""Marks a warning about a file that the workflow's own synthesize/train steps write."""


def file_problems(workflow: Workflow) -> tuple[list[str], list[str]]:
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


@dataclass(frozen=True)
class CheckedWorkflow:
    """A validated workflow with the problems of the files it names (errors make it unrunnable)."""

    path: Path
    workflow: Workflow
    errors: list[str]
    warnings: list[str]


def workflow_overrides(*, input: str | os.PathLike[str] | None = None, output: str | os.PathLike[str] | None = None,
                       settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Dotted-key overrides: `settings`, plus `input` (a folder tree, or a manifest .yaml/.json) and `output`
    (output.dir)."""
    overrides = dict(settings or {})
    if input is not None:
        path = Path(input)
        manifest = path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json")
        overrides.update({"inputs.path": None if manifest else str(path),
                          "inputs.manifest": str(path) if manifest else None, "inputs.glob": None})
    if output is not None:
        overrides["output.dir"] = str(output)
    return overrides


def check_workflow(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> CheckedWorkflow:
    """Load and validate a workflow file (schema errors raise ConfigError) and check the files it names."""
    from medseg.workflow import load_workflow

    workflow = load_workflow(path, dict(overrides or {}))
    errors, warnings = file_problems(workflow)
    return CheckedWorkflow(Path(path), workflow, errors, warnings)


def run(workflow: str | os.PathLike[str], *, input: str | os.PathLike[str] | None = None,
        output: str | os.PathLike[str] | None = None, force: bool = False, progress: bool = False,
        **overrides: Any) -> RunSummary:
    """Run a workflow file over its inputs (or `input`) into its output folder (or `output`).

    `overrides` set workflow values by dotted key, e.g. `medseg.run(path, device="cpu",
    **{"executor.workers": 2})`. `force` redoes finished cases. Returns the run summary (`.output`,
    `.outcomes`, `.failed`, `.seconds`); the full record is `summary.output / "run.json"`. A workflow naming
    missing files raises ConfigError before anything runs.
    """
    checked = check_workflow(workflow, workflow_overrides(input=input, output=output, settings=overrides))
    for warning in checked.warnings:
        if NOT_YET not in warning:
            log.warning("%s", warning)
    return run_checked(checked, force=force, progress=progress)


def run_checked(checked: CheckedWorkflow, *, force: bool = False, progress: bool = False) -> RunSummary:
    """Run a checked workflow; its file errors raise ConfigError (naming the workflow file) first."""
    from medseg.workflow.runner import run_workflow

    if checked.errors:
        raise ConfigError(f"{len(checked.errors)} problem(s): " + "; ".join(checked.errors), checked.path)
    return run_workflow(checked.workflow, force=force, progress=progress)
