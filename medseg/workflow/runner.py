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
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medseg.workflow.cases import Case, CaseList, discover_cases
from medseg.workflow.processing import CASE_FILE, PARTIAL_DIR, CaseOutcome, case_folder, write_json
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


def _finished(folder: Path, fingerprint: str) -> CaseOutcome | None:
    """The earlier outcome of a case folder when it is complete and was made the same way, else None."""
    try:
        data = json.loads((folder / CASE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("status") != "done":
        return None
    if data.get("fingerprint") != fingerprint:
        log.info("%s: made by other steps or models than this run's; redone", folder.name)
        return None
    known = {f.name for f in fields(CaseOutcome)}
    try:   # a case.json from another medseg version: keep the fields this one knows
        return CaseOutcome(**{k: v for k, v in data.items() if k in known} | {"status": "skipped"})
    except TypeError:
        return None


def run_workflow(workflow: Workflow, *, force: bool = False, progress: bool = True,
                 on_case: Callable[[CaseOutcome], None] | None = None) -> RunSummary:
    """Run every case of `workflow`; see the module docstring for the guarantees."""
    from medseg.workflow.synthesize import run_synthesize_steps
    from medseg.workflow.training import run_training_steps

    started = time.perf_counter()
    out = Path(workflow.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)   # work folders of an interrupted run
    run_synthesize_steps(workflow, progress=progress)
    run_training_steps(workflow, progress=progress)
    record: dict[str, Any] = {
        "medseg_run": 1, "workflow": workflow.name, "config_hash": _config_hash(workflow), "seed": workflow.seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
        "python": platform.python_version(), "packages": _package_versions(),
        "workflow_config": workflow.model_dump(mode="json"), "cases": []}
    outcomes: list[CaseOutcome] = []
    if workflow.inputs is None:
        write_json(out / RUN_FILE, record)
        return RunSummary(out, outcomes, time.perf_counter() - started)

    found: CaseList = discover_cases(workflow.inputs)
    outcomes.extend(CaseOutcome("", "", problem.source, "input_problem", problem.reason)
                    for problem in found.problems)
    fingerprint = _processing_fingerprint(workflow)
    todo: list[Case] = []
    for case in found.cases:
        previous = None if force else _finished(out / case_folder(workflow, case), fingerprint)
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

    executor = make_executor(workflow, out, fingerprint) if todo else None
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
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    if workflow.step("classify_cxr") is not None:
        _batch_predictions(workflow, outcomes, out, record)
        save()
    export = workflow.step("export")
    if export is not None and export.review_html:
        from medseg.export.review import write_review_package

        written = write_review_package(out)
        record["review"] = {"index": "index.html", "sheet": Path(written["review_csv"]).name}
        save()
    return RunSummary(out, outcomes, time.perf_counter() - started)


def _batch_predictions(workflow: Workflow, outcomes: list[CaseOutcome], out: Path, record: dict[str, Any]) -> None:
    """predictions.csv for every classified radiograph (the `medseg classify` layout) and the AUC report."""
    import csv

    from medseg.io.atomic import atomic_path

    rows = [o for o in outcomes if o.kind == "xray" and o.status in ("done", "skipped") and o.summary]
    if not rows:
        return
    classes = list(rows[0].summary["probabilities"])   # the model's class order
    path = out / "predictions.csv"
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *classes, *(f"{name}_call" for name in classes)])
        for o in rows:
            image = o.case_id if workflow.inputs.manifest is None else _manifest_image(workflow, o)
            writer.writerow([image, *(o.summary["probabilities"][n] for n in classes),
                             *(o.summary["calls"][n] for n in classes)])
    record["predictions"] = path.name
    export = workflow.step("export")
    if export is not None and export.auc_report is not None:
        from medseg.evaluate.classification import evaluate_classification, read_prediction_table, write_report

        report = export.auc_report
        labels = read_prediction_table(report.labels, "labels")
        preds = read_prediction_table(path, "predictions", classes=labels.classes)
        preds = replace(preds, images=_label_keys(Path(report.labels), labels.images,
                                                  [(image, o.source) for image, o in zip(preds.images, rows,
                                                                                         strict=True)]))
        result = evaluate_classification(labels, preds, operating_point=report.operating_point,
                                         n_resamples=report.resamples, seed=workflow.seed)
        write_report(result, out / "auc_report")
        record["auc_report"] = "auc_report/report.html"


def _label_keys(labels_csv: Path, label_images: list[str], predicted: list[tuple[str, str]]) -> list[str]:
    """For each (predictions.csv image, source file): the labels.csv `image` it is, else the image unchanged.

    A labels entry names the same file (relative to labels.csv) or, failing that, the same file name without
    extension when exactly one labels entry has it (the DICOM and the PNG of one radiograph).
    """
    base = labels_csv.resolve().parent
    by_path = {os.path.normpath(base / image): image for image in label_images}
    by_stem: dict[str, list[str]] = {}
    for image in label_images:
        by_stem.setdefault(_stem(image), []).append(image)
    keys = []
    for image, source in predicted:
        key = by_path.get(os.path.normpath(Path(source).resolve()))
        if key is None:
            candidates = by_stem.get(_stem(source), [])
            key = candidates[0] if len(candidates) == 1 else image
        keys.append(key)
    return keys


def _stem(path: str) -> str:
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def _manifest_image(workflow: Workflow, outcome: CaseOutcome) -> str:
    """The manifest's `image` entry of a case (what labels.csv uses), from its resolved source path."""
    base = Path(workflow.inputs.manifest).parent
    try:
        return Path(outcome.source).relative_to(base).as_posix()
    except ValueError:
        return outcome.source
