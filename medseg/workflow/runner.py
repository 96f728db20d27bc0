"""Run a workflow over its cases (`medseg run`).

Preparation steps (synthesize, train) run first. Then the cases are found and handed to the executor
(`medseg.workflow.executors`: local, or Ray), which loads each model once per process and yields each case's
outcome. A failing case is recorded with its reason and the batch goes on. Each case is built in a hidden
work folder and renamed into place when complete, so an interrupted run (even `kill -9`) never leaves a
partial case folder; `run.json` is rewritten atomically after every case. A rerun skips cases whose folder holds a
completed `case.json` made by the same steps and models (unless `force`); other cases are redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.workflow.cases import Case, CaseList, discover_cases, relative_source, relative_text
from medseg.workflow.layout import plan_case_folders
from medseg.workflow.lock import LOCK_FILE, OutputLock
from medseg.workflow.processing import CASE_FILE, PARTIAL_DIR, CaseOutcome, RunContext, write_json
from medseg.workflow.schema import PREPARATION_STEPS, Workflow

__all__ = ["RunSummary", "run_workflow"]

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


@dataclass
class RunSummary:
    output: Path
    outcomes: list[CaseOutcome]
    seconds: float

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "input_problem")]


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("medseg", "torch", "monai", "numpy", "pydicom", "highdicom", "SimpleITK", "nibabel"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _config_hash(workflow: Workflow) -> str:
    text = json.dumps(workflow.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _processing_fingerprint(workflow: Workflow) -> str:
    """Hash of everything that shapes a case's outputs: the per-case steps, the series rules and the model
    cards of the checkpoints (a retrained model has a new card). Output folder, executor, seed and
    fail_on_error are left out: changing them does not change a case."""
    from medseg.models.checkpoint import read_model_card

    steps = [step.model_dump(mode="json") for step in workflow.steps if step.kind not in PREPARATION_STEPS]
    cards = {}
    for step in workflow.steps:
        model = getattr(step, "model", None)
        if model is not None and Path(model).is_file():
            cards[step.kind] = read_model_card(model).model_dump(mode="json")
    rules = workflow.inputs.series.model_dump(mode="json") if workflow.inputs else None
    text = json.dumps({"steps": steps, "series": rules, "models": cards}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished(folder: Path, fingerprint: str, case: Case) -> CaseOutcome | None:
    """The earlier outcome of a case folder when it is complete, is this case's, and was made the same way."""
    if not folder.is_dir() or folder.is_symlink():
        return None
    try:
        data = json.loads((folder / CASE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("status") != "done":
        return None
    if data.get("case_id") != case.case_id or data.get("source") not in (case.shown_source, str(case.source)):
        log.info("%s: holds another case (%s); redone", folder.name, data.get("source"))
        return None
    if data.get("fingerprint") != fingerprint:
        log.info("%s: made by other steps or models than this run's; redone", folder.name)
        return None
    known = {f.name for f in fields(CaseOutcome)}
    try:   # a case.json from another medseg version: keep the fields this one knows
        return CaseOutcome(**{k: v for k, v in data.items() if k in known} | {"status": "skipped"})
    except TypeError:
        return None


RUN_MARKER = ".medseg-run"
"""File in every run folder medseg created; a non-empty folder without it (or run.json) is not used."""


def _claim_output(out: Path) -> None:
    """Create the run folder, or accept an existing one that is empty or an earlier medseg run's."""
    if out.exists() and not out.is_dir():
        raise InputError("output.dir exists and is not a folder", out)
    if out.is_dir() and not (out / RUN_MARKER).is_file() and not (out / RUN_FILE).is_file():
        present = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
        if present:
            shown = ", ".join(present[:3]) + (" ..." if len(present) > 3 else "")
            raise InputError(f"output.dir is not empty and was not made by medseg run ({shown}); choose a new or "
                             "empty folder", out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).write_text("medseg run folder\n", encoding="utf-8")


def _clear_partial(out: Path) -> None:
    """Remove the work folders of interrupted runs (only under the lock, and only medseg's own folder)."""
    partial = out / PARTIAL_DIR
    if partial.is_symlink():
        raise InputError(f"{PARTIAL_DIR} is a symbolic link; refusing to delete through it", out)
    if partial.is_dir():
        shutil.rmtree(partial, ignore_errors=True)


def _portable(value: Any, out: Path, root: Path | None) -> Any:
    """Absolute paths in a recorded config made relative: `${output}/...`, `${input}/...`, else to the run."""
    if isinstance(value, dict):
        return {k: _portable(v, out, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, out, root) for v in value]
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    for placeholder, base in (("${output}", out), ("${input}", root)):
        if base is not None:
            relative = relative_source(value, base)
            if relative != value:
                return placeholder if relative == "." else f"{placeholder}/{relative}"
    return Path(os.path.relpath(value, out.resolve())).as_posix()


def run_workflow(workflow: Workflow, *, force: bool = False, progress: bool = True,
                 on_case: Callable[[CaseOutcome], None] | None = None) -> RunSummary:
    """Run every case of `workflow`; see the module docstring for the guarantees.

    The output folder is locked for the whole run: a second run on it fails at once (`InputError`) naming the
    holder.
    """
    out = Path(workflow.output.dir)
    _claim_output(out)
    with OutputLock(out):
        return _run_locked(workflow, out, force=force, progress=progress, on_case=on_case)


def _run_locked(workflow: Workflow, out: Path, *, force: bool, progress: bool,
                on_case: Callable[[CaseOutcome], None] | None) -> RunSummary:
    from medseg.workflow.synthesize import run_synthesize_steps
    from medseg.workflow.training import run_training_steps

    started = time.perf_counter()
    _clear_partial(out)   # work folders of an interrupted run (we hold the lock: nobody else is writing)
    run_synthesize_steps(workflow, progress=progress)
    run_training_steps(workflow, progress=progress)
    inputs = workflow.inputs
    record: dict[str, Any] = {
        "medseg_run": 1, "workflow": workflow.name, "config_hash": _config_hash(workflow), "seed": workflow.seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
        "python": platform.python_version(), "packages": _package_versions(),
        "inputs": {"path": str(inputs.path) if inputs and inputs.path else None,
                   "manifest": str(inputs.manifest) if inputs and inputs.manifest else None,
                   "output": str(out.resolve()),
                   "models": {step.kind: str(step.model) for step in workflow.steps if getattr(step, "model", None)}},
        "cases": []}
    outcomes: list[CaseOutcome] = []
    if inputs is None:
        record["workflow_config"] = _portable(workflow.model_dump(mode="json"), out, None)
        write_json(out / RUN_FILE, record)
        return RunSummary(out, outcomes, time.perf_counter() - started)

    found: CaseList = discover_cases(inputs)
    root = found.root
    record["workflow_config"] = _portable(workflow.model_dump(mode="json"), out, root)
    outcomes.extend(CaseOutcome("", "", relative_source(problem.source, root), "input_problem",
                                relative_text(problem.reason, root)) for problem in found.problems)
    plan = plan_case_folders(((case.case_id, str(case.source), {
        "case_id": case.case_id, "patient_id": case.patient_id, "study_uid": case.study_uid,
        "series_uid": case.series_uid}) for case in found.cases), workflow.output.layout, out,
        workflow.output.on_collision)
    for line in plan.renamed:
        log.warning("%s", line)
    if plan.renamed:
        record["renamed_case_folders"] = plan.renamed
    fingerprint = _processing_fingerprint(workflow)
    todo: list[Case] = []
    for case in found.cases:
        case.folder = plan.folders[case.case_id]
        case.shown_source = relative_source(case.source, root)
        previous = None if force else _finished(out / case.folder, fingerprint, case)
        if previous is not None:
            outcomes.append(previous)
        else:
            todo.append(case)

    def save() -> None:
        record["cases"] = [asdict(o) for o in outcomes]
        record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record["counts"] = {s: sum(o.status == s for o in outcomes)
                            for s in ("done", "skipped", "failed", "input_problem")}
        write_json(out / RUN_FILE, record)

    save()
    from medseg.progress import eta_progress
    from medseg.workflow.executors import make_executor

    context = RunContext(out=out, work_root=out / PARTIAL_DIR / f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                         fingerprint=fingerprint, input_root=str(os.path.abspath(root)) if root else "")
    executor = make_executor(workflow, context) if todo else None
    try:
        with eta_progress(enabled=progress) as bar:
            task = bar.add_task(workflow.name, total=len(todo), info="")
            for outcome in executor.outcomes(todo) if executor else ():
                outcomes.append(outcome)
                save()
                if on_case is not None:
                    on_case(outcome)
                bar.update(task, advance=1, info=f"{outcome.case_id}: {outcome.status}")
    finally:
        if executor is not None:
            executor.close()
    _clear_partial(out)
    sources = {case.case_id: str(case.source) for case in found.cases}
    if workflow.step("classify_cxr") is not None:
        _batch_predictions(workflow, outcomes, out, record, sources)
        save()
    export = workflow.step("export")
    if export is not None and export.review_html:
        from medseg.export.review import write_review_package

        written = write_review_package(out)
        record["review"] = {"index": "index.html", "sheet": Path(written["review_csv"]).name}
        save()
    return RunSummary(out, outcomes, time.perf_counter() - started)


def _batch_predictions(workflow: Workflow, outcomes: list[CaseOutcome], out: Path, record: dict[str, Any],
                       sources: dict[str, str]) -> None:
    """predictions.csv for every classified radiograph (the `medseg classify` layout) and the AUC report."""
    from medseg.evaluate.predictions import PredictionRow, write_predictions

    done = [o for o in outcomes if o.kind == "xray" and o.status in ("done", "skipped") and o.summary]
    if not done:
        return
    rows = [PredictionRow(o.case_id if workflow.inputs.manifest is None
                          else _manifest_image(workflow, sources.get(o.case_id, o.source)),
                          o.summary["probabilities"], o.summary["calls"]) for o in done]
    path = write_predictions(rows, out / "predictions.csv")
    record["predictions"] = path.name
    export = workflow.step("export")
    if export is not None and export.auc_report is not None:
        from medseg.evaluate.classification import evaluate_classification, read_prediction_table, write_report

        report = export.auc_report
        labels = read_prediction_table(report.labels, "labels")
        preds = read_prediction_table(path, "predictions", classes=labels.classes)
        preds = replace(preds, images=_label_keys(Path(report.labels), labels.images,
                                                  [(image, sources.get(o.case_id, o.source))
                                                   for image, o in zip(preds.images, done, strict=True)]))
        result = evaluate_classification(labels, preds, operating_point=report.operating_point,
                                         n_resamples=report.resamples, seed=workflow.seed)
        write_report(result, out / "auc_report")
        record["auc_report"] = "auc_report/report.html"


def _label_keys(labels_csv: Path, label_images: list[str], predicted: list[tuple[str, str]]) -> list[str]:
    """For each (predictions.csv image, source file): the labels.csv `image` it is, else the image unchanged
    (`medseg.evaluate.matching` pairs them)."""
    from medseg.evaluate.matching import label_keys

    images = [image for image, _ in predicted]
    keys = label_keys(label_images, labels_csv, images, labels_csv, pred_files=[source for _, source in predicted])
    return [key if key is not None else image for key, image in zip(keys, images, strict=True)]


def _manifest_image(workflow: Workflow, source: str) -> str:
    """The manifest's `image` entry of a case (what labels.csv uses), from its resolved source path."""
    base = Path(workflow.inputs.manifest).parent
    try:
        return Path(source).relative_to(base).as_posix()
    except ValueError:
        return source
