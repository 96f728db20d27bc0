"""Run a workflow over its cases (`medseg run`).

Models are loaded once. The next case is read in a background thread while the current one computes. A
failing case is recorded with its reason and the batch goes on. Each case is built in a hidden work folder
and renamed into place when complete, so an interrupted run (even `kill -9`) never leaves a partial case
folder; `run.json` is rewritten atomically after every case. A rerun skips cases whose folder holds a
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
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError, MedsegError
from medseg.workflow.cases import Case, CaseList, discover_cases
from medseg.workflow.schema import PREPARATION_STEPS, Workflow

__all__ = ["CASE_FILE", "CaseOutcome", "RunSummary", "run_workflow"]

log = logging.getLogger(__name__)

CASE_FILE = "case.json"
RUN_FILE = "run.json"
_PARTIAL = ".partial"
_LUNG_NAMES = {1: "right_lung", 2: "left_lung"}


@dataclass
class CaseOutcome:
    case_id: str
    kind: str
    source: str
    status: str
    """done, failed, skipped (done by an earlier run) or input_problem (could not become a case)."""
    reason: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fingerprint: str = ""
    """What produced the outputs (processing steps, series rules, model cards): a rerun redoes the case when it
    differs."""


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


class _Models:
    """The workflow's models, each loaded once on first use."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self._segmenter = None
        self._classifier = None

    @property
    def device(self) -> str:
        import torch

        device = self.workflow.device
        return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device

    @property
    def segmenter(self):
        step = self.workflow.step("segment_lobes")
        if step is not None and self._segmenter is None:
            from medseg.infer.segment import LobeSegmenter

            self._segmenter = LobeSegmenter(step.model, device=self.device, batch_size=step.batch_size, tta=step.tta)
        return self._segmenter

    @property
    def classifier(self):
        step = self.workflow.step("classify_cxr")
        if step is not None and self._classifier is None:
            from medseg.infer.classify import RadiographClassifier

            self._classifier = RadiographClassifier(step.model, device=self.device, batch_size=step.batch_size,
                                                    precision=step.precision)
        return self._classifier


def _case_folder(workflow: Workflow, case: Case) -> str:
    values = {"case_id": case.case_id, "patient_id": case.patient_id or "unknown",
              "study_uid": case.study_uid or "unknown", "series_uid": case.series_uid or "unknown"}
    return workflow.output.layout.format(**values)


def _read_case(case: Case, workflow: Workflow, models: _Models) -> Any:
    """The case's image: a Volume (CT) or the classifier's prepared input (X-ray)."""
    if case.kind == "xray":
        if models.classifier is None:
            raise ConfigError("this case is a radiograph but the workflow has no classify_cxr step")
        return models.classifier.prepare(case.source)
    from medseg.io import load_volume, require_ct
    from medseg.io.dicom_series import ReadOptions, read_series

    rules = workflow.inputs.series if workflow.inputs else None
    options = ReadOptions(on_gantry_tilt=rules.gantry_tilt, on_uneven_spacing=rules.uneven_spacing) if rules \
        else ReadOptions()
    if case.series is not None:
        volume = read_series(case.series, options)
        volume.source = str(case.source)
    else:
        volume = load_volume(case.source, options=options)
    require_ct(volume, "the CT steps")
    return volume


def _process_ct(case: Case, volume, workflow: Workflow, models: _Models, work: Path, outcome: CaseOutcome) -> None:
    from medseg.infer.segment import segment_lungs

    started = time.perf_counter()
    if workflow.step("segment_lobes") is not None:
        result = models.segmenter(volume)
        label_map, names, prefix = "lobes", result.label_names, "lobes"
    elif workflow.step("lung_mask") is not None:
        result = segment_lungs(volume)
        label_map, names, prefix = "lungs", _LUNG_NAMES, "lungs"
    else:
        return
    outcome.timings["segment"] = time.perf_counter() - started
    labels = result.labels
    voxel_ml = float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    counts = np.bincount(labels.array.ravel(), minlength=max(names, default=0) + 1)
    outcome.summary["volumes_ml"] = {names[v]: round(float(counts[v]) * voxel_ml, 1) for v in names if v}
    if workflow.step("statistics") is not None:
        from medseg.export.statistics import load_qc_ranges, lobe_statistics, write_statistics

        started = time.perf_counter()
        step = workflow.step("statistics")
        qc = load_qc_ranges(step.qc) if step.qc else None
        stats = lobe_statistics(volume, labels.array, {v: n for v, n in names.items() if v}, qc,
                                labels_source=case.case_id)
        write_statistics(stats, work / "statistics.csv", work / "statistics.json")
        outcome.outputs.update(statistics_csv="statistics.csv", statistics_json="statistics.json")
        outcome.flags = sorted({flag.code for flag in stats.flags})
        outcome.timings["statistics"] = time.perf_counter() - started
    export = workflow.step("export")
    if export is None:
        return
    started = time.perf_counter()
    if export.nifti:
        from medseg.io import write_nifti

        write_nifti(labels, work / f"{prefix}.nii.gz", label=True)
        outcome.outputs["nifti"] = f"{prefix}.nii.gz"
    if export.dicom_seg:
        from medseg.errors import GeometryError
        from medseg.export.dicom_seg import write_dicom_seg

        try:
            write_dicom_seg(labels.array, volume, work / f"{prefix}_seg.dcm", label_map=label_map,
                            series_description=f"medseg {prefix}")
            outcome.outputs["dicom_seg"] = f"{prefix}_seg.dcm"
        except (GeometryError, MedsegError) as exc:
            outcome.notes.append(f"no DICOM SEG: {exc}")
    if export.overlays:
        from medseg.export.overlay import LOBE_COLOURS, LUNG_COLOURS, save_label_montage

        colours = LOBE_COLOURS if label_map == "lobes" else LUNG_COLOURS
        save_label_montage(volume, labels.array, work / "overlay.png", title=case.case_id, colours=colours)
        outcome.outputs["overlay"] = "overlay.png"
    outcome.timings["export"] = time.perf_counter() - started


def _process_xray(case: Case, image: np.ndarray, workflow: Workflow, models: _Models, work: Path,
                  outcome: CaseOutcome) -> None:
    classifier = models.classifier
    started = time.perf_counter()
    probs = classifier.predict(image[None])[0]
    calls = classifier.calls(probs[None])[0]
    outcome.timings["classify"] = time.perf_counter() - started
    outcome.summary["probabilities"] = {n: round(float(p), 6) for n, p in zip(classifier.classes, probs, strict=True)}
    outcome.summary["calls"] = {n: int(c) for n, c in zip(classifier.classes, calls, strict=True)}
    step = workflow.step("classify_cxr")
    if step.cam:
        from medseg.infer.explain import grad_cam, save_cam_panel

        started = time.perf_counter()
        chosen = [int(i) for i in np.flatnonzero(calls)] or [int(np.argmax(probs))]
        if step.cam_classes == "all":
            chosen = list(range(len(probs)))
        elif step.cam_classes == "top":
            chosen = [int(np.argmax(probs))]
        panels = [(classifier.classes[k], float(probs[k]), grad_cam(classifier.model, image[None], k)[0])
                  for k in chosen]
        save_cam_panel(work / "gradcam.png", image[0], panels, title=case.case_id)
        outcome.outputs["gradcam"] = "gradcam.png"
        outcome.timings["gradcam"] = time.perf_counter() - started


def _write_json(path: Path, payload: Any) -> None:
    from medseg.io.atomic import atomic_path

    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, default=str))


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


def _run_case(case: Case, loaded: Future, workflow: Workflow, models: _Models, out: Path, fingerprint: str
              ) -> CaseOutcome:
    outcome = CaseOutcome(case.case_id, case.kind, str(case.source), "failed", notes=list(case.notes),
                          fingerprint=fingerprint)
    started = time.perf_counter()
    final = out / _case_folder(workflow, case)
    work = out / _PARTIAL / f"{final.name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        image = loaded.result()
        outcome.timings["read"] = getattr(loaded, "medseg_seconds", 0.0)
        (_process_xray if case.kind == "xray" else _process_ct)(case, image, workflow, models, work, outcome)
        outcome.status = "done"
    except (MedsegError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        outcome.reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, MedsegError) else str(exc)
        log.debug("case %s failed:\n%s", case.case_id, traceback.format_exc())
    outcome.seconds = round(time.perf_counter() - started, 3)
    outcome.timings = {k: round(v, 3) for k, v in outcome.timings.items()}
    if outcome.status == "done":
        _write_json(work / CASE_FILE, asdict(outcome))
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, final)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return outcome


def _prefetched(cases: list[Case], workflow: Workflow, models: _Models, workers: int
                ) -> Iterator[tuple[Case, Future]]:
    """(case, future image) in order, reading up to `workers` cases ahead of the one being computed."""
    def read(case: Case) -> Any:
        started = time.perf_counter()
        value = _read_case(case, workflow, models)
        future_seconds[case.case_id] = time.perf_counter() - started
        return value

    future_seconds: dict[str, float] = {}
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="medseg-case-read") as pool:
        pending: list[tuple[Case, Future]] = []
        queue = iter(cases)
        for case in queue:
            pending.append((case, pool.submit(read, case)))
            if len(pending) > workers:
                break
        while pending:
            case, future = pending.pop(0)
            following = next(queue, None)
            if following is not None:
                pending.append((following, pool.submit(read, following)))
            wait([future])   # a failed read is raised (and recorded) by _run_case
            future.medseg_seconds = future_seconds.get(case.case_id, 0.0)  # type: ignore[attr-defined]
            yield case, future


def run_workflow(workflow: Workflow, *, force: bool = False, progress: bool = True,
                 on_case: Callable[[CaseOutcome], None] | None = None) -> RunSummary:
    """Run every case of `workflow`; see the module docstring for the guarantees."""
    from medseg.workflow.synthesize import run_synthesize_steps
    from medseg.workflow.training import run_training_steps

    if workflow.executor.kind != "local":
        raise ConfigError(f"executor.kind {workflow.executor.kind!r} is not implemented in this version; use local "
                          "(one process, reading ahead while computing)")
    started = time.perf_counter()
    out = Path(workflow.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / _PARTIAL, ignore_errors=True)   # work folders of an interrupted run
    run_synthesize_steps(workflow, progress=progress)
    run_training_steps(workflow, progress=progress)
    record: dict[str, Any] = {
        "medseg_run": 1, "workflow": workflow.name, "config_hash": _config_hash(workflow), "seed": workflow.seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
        "python": platform.python_version(), "packages": _package_versions(),
        "workflow_config": workflow.model_dump(mode="json"), "cases": []}
    outcomes: list[CaseOutcome] = []
    if workflow.inputs is None:
        _write_json(out / RUN_FILE, record)
        return RunSummary(out, outcomes, time.perf_counter() - started)

    found: CaseList = discover_cases(workflow.inputs)
    outcomes.extend(CaseOutcome("", "", problem.source, "input_problem", problem.reason)
                    for problem in found.problems)
    models = _Models(workflow)
    fingerprint = _processing_fingerprint(workflow)
    todo: list[Case] = []
    for case in found.cases:
        previous = None if force else _finished(out / _case_folder(workflow, case), fingerprint)
        if previous is not None:
            outcomes.append(previous)
        else:
            todo.append(case)

    def save() -> None:
        record["cases"] = [asdict(o) for o in outcomes]
        record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record["counts"] = {s: sum(o.status == s for o in outcomes)
                            for s in ("done", "skipped", "failed", "input_problem")}
        _write_json(out / RUN_FILE, record)

    save()
    from medseg.progress import eta_progress

    with eta_progress(enabled=progress) as bar:
        task = bar.add_task(workflow.name, total=len(todo), info="")
        for case, loaded in _prefetched(todo, workflow, models, workflow.executor.workers):
            outcome = _run_case(case, loaded, workflow, models, out, fingerprint)
            outcomes.append(outcome)
            save()
            if on_case is not None:
                on_case(outcome)
            bar.update(task, advance=1, info=f"{case.case_id}: {outcome.status}")
    shutil.rmtree(out / _PARTIAL, ignore_errors=True)
    if models.classifier is not None:
        _batch_predictions(workflow, models.classifier.classes, outcomes, out, record)
        save()
    export = workflow.step("export")
    if export is not None and export.review_html:
        from medseg.export.review import write_review_package

        written = write_review_package(out)
        record["review"] = {"index": "index.html", "sheet": Path(written["review_csv"]).name}
        save()
    return RunSummary(out, outcomes, time.perf_counter() - started)


def _batch_predictions(workflow: Workflow, classes: list[str], outcomes: list[CaseOutcome], out: Path,
                       record: dict[str, Any]) -> None:
    """predictions.csv for every classified radiograph (the `medseg classify` layout) and the AUC report."""
    import csv

    from medseg.io.atomic import atomic_path

    rows = [o for o in outcomes if o.kind == "xray" and o.status in ("done", "skipped") and o.summary]
    if not rows:
        return
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
