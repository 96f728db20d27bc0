"""One case through a workflow's per-case steps: read, segment or classify, statistics, exports.

`run_case` builds the case in a hidden work folder and renames it into place only when complete (so even
`kill -9` never leaves a partial case folder) and records what happened in a `CaseOutcome`. The executors
(`medseg.workflow.executors`) decide where and in which order cases run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.device import resolve_device
from medseg.errors import ConfigError, InputError, MedsegError, one_line_reason
from medseg.labels import from_names
from medseg.readahead import Loaded
from medseg.workflow.cases import Case, relative_text
from medseg.workflow.layout import has_marker, write_marker
from medseg.workflow.schema import Workflow

__all__ = ["CASE_FILE", "PARTIAL_DIR", "CaseModels", "CaseOutcome", "RunContext", "read_case", "run_case",
           "write_json"]

log = logging.getLogger(__name__)

CASE_FILE = "case.json"
PARTIAL_DIR = ".partial"


@dataclass
class CaseOutcome:
    case_id: str
    kind: str
    source: str
    status: str
    """done, failed, skipped (done by an earlier run) or input_problem (could not become a case)."""
    reason: str = ""
    error: dict[str, str] | None = None
    """A failed case's exception: {"type": class name, "message": its text}."""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    folder: str = ""
    """The case folder, relative to the run folder."""
    fingerprint: str = ""
    """What produced the outputs (processing steps, series rules, model cards): a rerun redoes the case when it
    differs."""


class CaseModels:
    """The workflow's models, each loaded once on first use."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self._segmenter = None
        self._classifier = None

    @property
    def device(self) -> str:
        """The workflow's device resolved ("auto": CUDA when available); ConfigError for CUDA without CUDA."""
        return str(resolve_device(self.workflow.device))

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


def read_case(case: Case, workflow: Workflow, models: CaseModels) -> Any:
    """The case's image: a Volume (CT) or the classifier's prepared input (X-ray)."""
    if case.kind == "xray":
        if models.classifier is None:
            raise ConfigError("this case is a radiograph but the workflow has no classify_cxr step")
        return models.classifier.prepare(case.source)
    from medseg.io import load_volume, require_ct
    from medseg.io.dicom_series import ReadOptions, read_series

    rules = workflow.inputs.series if workflow.inputs else None
    options = ReadOptions(on_gantry_tilt=rules.gantry_tilt, on_uneven_spacing=rules.uneven_spacing,
                          on_non_finite=rules.non_finite, max_voxels=rules.max_voxels) if rules else ReadOptions()
    if case.series is not None:
        volume = read_series(case.series, options)
        volume.source = str(case.source)
    else:
        volume = load_volume(case.source, options=options)
    require_ct(volume, "the CT steps")
    return volume


def _process_ct(case: Case, volume, workflow: Workflow, models: CaseModels, work: Path, outcome: CaseOutcome) -> None:
    from medseg.export.statistics import label_volumes
    from medseg.infer.segment import segment_lungs

    started = time.perf_counter()
    if workflow.step("segment_lobes") is not None:
        result, prefix = models.segmenter(volume), "lobes"
    elif workflow.step("lung_mask") is not None:
        result, prefix = segment_lungs(volume), "lungs"
    else:
        return
    label_map = from_names(result.label_names, name=prefix)   # the model card's labels, coded by the registry
    names = label_map.names()
    outcome.timings["segment"] = time.perf_counter() - started
    labels = result.labels
    outcome.summary["volumes_ml"] = label_volumes(labels, names)
    if workflow.step("statistics") is not None:
        from medseg.export.statistics import load_qc_ranges, lobe_statistics, write_statistics

        started = time.perf_counter()
        step = workflow.step("statistics")
        qc = load_qc_ranges(step.qc) if step.qc else None
        stats = lobe_statistics(volume, labels.array, label_map, qc, labels_source=case.case_id)
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
        from medseg.export.overlay import save_label_montage

        save_label_montage(volume, labels.array, work / "overlay.png", title=case.case_id, label_map=label_map)
        outcome.outputs["overlay"] = "overlay.png"
    outcome.timings["export"] = time.perf_counter() - started


def _process_xray(case: Case, image: np.ndarray, workflow: Workflow, models: CaseModels, work: Path,
                  outcome: CaseOutcome) -> None:
    classifier = models.classifier
    started = time.perf_counter()
    probs = classifier.predict(image[None])[0]
    calls = classifier.calls(probs[None])[0]
    outcome.timings["classify"] = time.perf_counter() - started
    # exact values: predictions.csv is written from these, and a call must agree with its probability
    outcome.summary["probabilities"] = {n: float(p) for n, p in zip(classifier.classes, probs, strict=True)}
    outcome.summary["calls"] = {n: int(c) for n, c in zip(classifier.classes, calls, strict=True)}
    step = workflow.step("classify_cxr")
    if step.cam:
        from medseg.infer.explain import cam_panels, save_cam_panel

        started = time.perf_counter()
        panels = cam_panels(classifier.model, image, classifier.classes, probs, calls, step.cam_classes)
        save_cam_panel(work / "gradcam.png", image[0], panels, title=case.case_id)
        outcome.outputs["gradcam"] = "gradcam.png"
        outcome.timings["gradcam"] = time.perf_counter() - started


def write_json(path: Path, payload: Any) -> None:
    """Strict JSON (no bare NaN/Infinity), written atomically."""
    from medseg.io.atomic import atomic_path
    from medseg.jsonable import dumps_json

    text = dumps_json(payload)
    with atomic_path(path) as temporary:
        temporary.write_text(text)


@dataclass(frozen=True)
class RunContext:
    """Where a run writes: the output folder, this run's own work folder, the input root, and the fingerprint."""

    out: Path
    work_root: Path
    """This run's folder under `.partial/` where cases are built before being renamed into place."""
    fingerprint: str
    input_root: str = ""
    """Absolute input root; recorded paths and reasons are made relative to it."""


def _is_medseg_case_folder(folder: Path) -> bool:
    """A folder medseg wrote: it has the marker, or (older runs) a medseg case.json."""
    if has_marker(folder):
        return True
    try:
        data = json.loads((folder / CASE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"case_id", "status", "fingerprint"} <= set(data)


def _move_into_place(work: Path, final: Path) -> None:
    """Rename the finished work folder to `final`; an earlier medseg case folder there is swapped out whole."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise InputError("the case folder path exists and is not a folder medseg wrote; not replaced", final)
    if final.exists() and not _is_medseg_case_folder(final):
        raise InputError("the case folder exists and was not written by medseg (no marker); not replaced: move "
                         "it away or choose another output folder", final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = work.with_name(f"{work.name}.replaced")
    if final.exists():   # a redone case: swap whole folders, never delete files in a visible one
        os.replace(final, old)
    os.replace(work, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


_MESSAGE_LIMIT = 2000
"""Longest exception message recorded in run.json."""


def _record_failure(outcome: CaseOutcome, exc: Exception, root: Path | None) -> None:
    """The failure's one-line reason and its exception (type, message) in the outcome; an unexpected exception
    (not a MedsegError: a bug or an environment problem) is logged with its traceback at WARNING."""
    outcome.status = "failed"
    outcome.reason = relative_text(one_line_reason(exc), root)
    outcome.error = {"type": type(exc).__name__, "message": relative_text(str(exc), root)[:_MESSAGE_LIMIT]}
    if isinstance(exc, MedsegError):
        log.debug("case %s failed: %s", outcome.case_id, outcome.reason, exc_info=exc)
    else:
        log.warning("case %s failed with an unexpected %s: %s", outcome.case_id, type(exc).__name__, exc,
                    exc_info=exc)


def run_case(case: Case, loaded: Loaded, workflow: Workflow, models: CaseModels, context: RunContext) -> CaseOutcome:
    """Process one case into `context.out / case.folder`; the outcome records what happened, never raises.

    `loaded` is the case's read (`medseg.readahead`): a failed read fails the case like any other error."""
    root = Path(context.input_root) if context.input_root else None
    outcome = CaseOutcome(case.case_id, case.kind, case.shown_source or str(case.source), "failed",
                          notes=[relative_text(note, root) for note in case.notes], folder=case.folder,
                          fingerprint=context.fingerprint)
    started = time.perf_counter()
    final = context.out / case.folder
    work = context.work_root / f"case-{uuid.uuid4().hex[:12]}"
    try:
        work.mkdir(parents=True)
        write_marker(work, case.case_id)
        outcome.timings["read"] = loaded.seconds
        image = loaded.value
        (_process_xray if case.kind == "xray" else _process_ct)(case, image, workflow, models, work, outcome)
        outcome.seconds = round(time.perf_counter() - started, 3)
        outcome.timings = {k: round(v, 3) for k, v in outcome.timings.items()}
        outcome.status = "done"
        outcome.notes = [relative_text(note, root) for note in outcome.notes]
        write_json(work / CASE_FILE, asdict(outcome))
        _move_into_place(work, final)
    except Exception as exc:   # any failure stays with its case (recorded, bugs logged); the batch goes on
        _record_failure(outcome, exc, root)
    outcome.seconds = round(time.perf_counter() - started, 3)
    outcome.timings = {k: round(v, 3) for k, v in outcome.timings.items()}
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
    return outcome
