"""`medseg.classify`: chest radiographs -> probabilities and yes/no calls per finding (rows for a CSV)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

from medseg.evaluate.predictions import PredictionRow

if TYPE_CHECKING:
    from medseg.infer.explain import CamClasses

__all__ = ["CamOptions", "ClassifyOptions", "ClassifyRun", "PredictionRow", "classify", "classify_radiographs"]

log = logging.getLogger("medseg")

Inputs = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]


@dataclass(frozen=True)
class ClassifyOptions:
    """How the classifier runs and what it reads: batch size, precision, manifest splits (empty: all)."""

    batch_size: int = 32
    precision: Literal["fp32", "bf16"] = "fp32"
    splits: tuple[str, ...] = ()


@dataclass(frozen=True)
class CamOptions:
    """Grad-CAM overlays (one PNG per image) into `folder`, for the classes `classes` picks."""

    folder: Path
    classes: CamClasses = "called"


@dataclass(frozen=True)
class ClassifyRun:
    """Rows in input order (failed images carry `error`), the model's classes and operating point, the files
    skipped in input folders (path, reason) and the number of Grad-CAM overlays written."""

    rows: list[PredictionRow]
    classes: list[str]
    operating_point: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cams: int = 0

    @property
    def failures(self) -> list[PredictionRow]:
        return [row for row in self.rows if not row.ok]


def classify_radiographs(inputs: Inputs, model: str | os.PathLike[str], *, device: str = "auto",
                         options: ClassifyOptions | None = None, cam: CamOptions | None = None,
                         progress: bool = False) -> ClassifyRun:
    """Classify PNG/JPEG/CR/DX DICOM files, folders of them (recursive) or manifests with one loaded model.

    A file that cannot be read becomes a row with an `error`; the others go on. `progress`: a progress bar on
    stderr (shown on a terminal only).
    """
    from medseg.device import resolve_device
    from medseg.infer.classify import RadiographClassifier, collect_radiographs
    from medseg.progress import progress_bar

    options = options or ClassifyOptions()
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    classifier = RadiographClassifier(model, device=resolve_device(device), batch_size=options.batch_size,
                                      precision=options.precision)
    found = collect_radiographs(paths, splits=list(options.splits) or None)
    for path, reason in found.skipped[:5]:
        log.info("skipped %s: %s", path, reason)
    rows: list[PredictionRow] = []
    used: set[str] = set()
    with progress_bar(len(found.items), "classifying", enabled=progress) as advance:
        for result in classifier.classify(found.items, keep_images=cam is not None, progress=advance):
            image_id = result.item.image_id
            if result.error is not None:
                log.error("%s", result.error)
                rows.append(PredictionRow(image_id, error=result.error))
                continue
            rows.append(PredictionRow(
                image_id, dict(zip(classifier.classes, map(float, result.probabilities), strict=True)),
                dict(zip(classifier.classes, map(int, result.calls), strict=True))))
            if cam is not None:
                _save_cam(classifier, result, cam, used)
    return ClassifyRun(rows, list(classifier.classes), classifier.operating_point, list(found.skipped), len(used))


def classify(inputs: Inputs, model: str | os.PathLike[str], *, device: str = "auto",
             options: ClassifyOptions | None = None, cam: CamOptions | None = None) -> list[PredictionRow]:
    """Rows (image, probabilities {class: p}, calls {class: 0/1}, error) for every radiograph found in `inputs`;
    write them with `medseg.write_predictions(rows, "predictions.csv")`."""
    return classify_radiographs(inputs, model, device=device, options=options, cam=cam).rows


def _save_cam(classifier, result, cam: CamOptions, used: set[str]) -> None:
    from medseg.infer.explain import cam_filename, cam_panels, save_cam_panel

    panels = cam_panels(classifier.model, result.image, classifier.classes, result.probabilities, result.calls,
                        cam.classes)
    name = cam_filename(result.item.image_id)
    stem, number = name[:-4], 2
    while name in used:   # a.png and a.dcm, say, must not overwrite each other
        name, number = f"{stem}_{number}.png", number + 1
    used.add(name)
    save_cam_panel(Path(cam.folder) / name, result.image, panels, title=Path(result.item.image_id).name)
