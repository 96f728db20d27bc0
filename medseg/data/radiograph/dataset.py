"""Generate a synthetic chest radiograph dataset: PNG + DICOM DX per case, labels.csv, metadata.csv, manifest.

Layout under `out_dir`:
    images/cxr_00000.png     8-bit greyscale (like ChestX-ray14)
    dicom/cxr_00000.dcm      DX For Presentation, 12-bit, MONOCHROME2 or MONOCHROME1
    labels.csv               image, then one 0/1 column per class (CXR_CLASSES order)
    metadata.csv             image, case and patient ids, split, view, CTR, photometric, DICOM path, seed, ...
    manifest.yaml            classification manifest (patient-level splits, checksums, provenance)
    preview.png              contact sheet of the first cases (optional)
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medseg.data.radiograph.dicom_dx import DxInfo, deterministic_uid, write_dx
from medseg.data.radiograph.labels import CXR_CLASSES, resolve_prevalence, sample_labels
from medseg.data.radiograph.preview import write_contact_sheet
from medseg.data.radiograph.synth import RenderSettings, SyntheticCxr, synthesize_radiograph
from medseg.errors import ConfigError
from medseg.io.atomic import write_atomically

__all__ = ["GENERATOR", "METADATA_COLUMNS", "SynthCxrResult", "case_seed", "dx_info", "save_radiograph",
           "synthesize_cxr_dataset"]

log = logging.getLogger(__name__)

GENERATOR = "medseg synth cxr"
METADATA_COLUMNS = ("image", "case_id", "patient_id", "split", "view", "photometric", "dicom", "seed", "ctr",
                    "heart_width_mm", "thorax_width_mm", "findings", "photons", "sid_mm", "magnification")
PREVIEW_CASES = 12
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthCxrResult:
    """What `synthesize_cxr_dataset` wrote."""

    out_dir: Path
    cases: int
    labels_csv: Path
    metadata_csv: Path
    manifest: Path
    preview: Path | None
    positives: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case `index` of a dataset generated with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


@dataclass(frozen=True)
class _Job:
    out_dir: Path
    index: int
    case_id: str
    patient_id: str
    seed: int
    dataset_seed: int
    findings: tuple[str, ...]
    monochrome1: bool
    size: int
    settings: RenderSettings


def dx_info(cxr: SyntheticCxr, patient_id: str, uid_parts: tuple[object, ...], monochrome1: bool = False) -> DxInfo:
    """DICOM attributes of `cxr`; its study, series and image UIDs are derived from `uid_parts` (deterministic)."""
    return DxInfo(
        patient_id=patient_id,
        study_uid=deterministic_uid("medseg-cxr-study", *uid_parts),
        series_uid=deterministic_uid("medseg-cxr-series", *uid_parts),
        sop_uid=deterministic_uid("medseg-cxr-image", *uid_parts),
        imager_pixel_spacing=cxr.pixel_mm, magnification=cxr.magnification, monochrome1=monochrome1,
        sid_mm=cxr.geometry.sid_mm,
    )


def save_radiograph(cxr: SyntheticCxr, png: str | os.PathLike[str], dicom: str | os.PathLike[str], info: DxInfo
                    ) -> None:
    """Write `cxr` as an 8-bit greyscale PNG and a 12-bit DICOM DX file (each atomically)."""
    buffer = io.BytesIO()
    Image.fromarray(cxr.display, mode="L").save(buffer, format="PNG")
    data = buffer.getvalue()
    write_atomically(png, lambda temporary: temporary.write_bytes(data))
    write_dx(dicom, cxr.stored, info)


def _make_case(job: _Job) -> dict[str, Any]:
    """Synthesise one radiograph and write its PNG and DICOM; returns its metadata row."""
    cxr = synthesize_radiograph(job.seed, job.findings, size=job.size, settings=job.settings)
    image, dicom = f"images/{job.case_id}.png", f"dicom/{job.case_id}.dcm"
    info = dx_info(cxr, job.patient_id, (job.dataset_seed, job.index), job.monochrome1)
    save_radiograph(cxr, job.out_dir / image, job.out_dir / dicom, info)
    return {
        "image": image, "case_id": job.case_id, "patient_id": job.patient_id, "view": "PA",
        "photometric": "MONOCHROME1" if job.monochrome1 else "MONOCHROME2", "dicom": dicom, "seed": job.seed,
        "ctr": round(cxr.ctr.ratio, 4), "heart_width_mm": round(cxr.ctr.heart_width_mm, 1),
        "thorax_width_mm": round(cxr.ctr.thorax_width_mm, 1), "findings": ";".join(cxr.findings),
        "photons": round(cxr.exposure.photons, 1), "sid_mm": round(cxr.geometry.sid_mm, 1),
        "magnification": round(cxr.magnification, 4), "finding_details": cxr.finding_details,
    }


def _case_metadata(row: dict[str, Any]) -> dict[str, Any]:
    """Manifest metadata of a case: the metadata.csv columns not already in the record, plus finding details."""
    metadata = {key: row[key] for key in METADATA_COLUMNS if key not in ("image", "case_id", "patient_id", "split")}
    metadata["finding_details"] = row["finding_details"]
    return metadata


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _run_jobs(jobs: list[_Job], workers: int, progress: ProgressCallback | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            rows.append(_make_case(job))
            if progress is not None:
                progress(len(rows), len(jobs))
        return rows
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        with _single_threaded_blas():
            results = pool.map(_make_case, jobs, chunksize=1)       # starts the workers
        for row in results:
            rows.append(row)
            if progress is not None:
                progress(len(rows), len(jobs))
    return rows


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Start worker processes with one BLAS/OpenMP thread each (unless the user chose a count).

    Several workers each running a multi-threaded BLAS on small matrices oversubscribe the cores; the
    variables are read when numpy loads in the child, so they are set only while the workers start.
    """
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    for name in _THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def synthesize_cxr_dataset(out_dir: str | os.PathLike[str], cases: int, seed: int, size: int = 1024,
                           prevalence: Mapping[str, float] | None = None, monochrome1_fraction: float = 0.25,
                           progress: ProgressCallback | None = None, *, preview: bool = False, workers: int = 1,
                           settings: RenderSettings | None = None, command: str | None = None) -> SynthCxrResult:
    """Generate `cases` synthetic PA chest radiographs with multi-label findings under `out_dir`.

    Each finding is present independently with its prevalence (`DEFAULT_PREVALENCE`, overridden by
    `prevalence`); `monochrome1_fraction` of the DICOM files (chosen at random) are MONOCHROME1. The same
    arguments give byte-identical PNG and DICOM files. `workers` > 1 generates cases in parallel processes.
    """
    from medseg import __version__
    from medseg.data.manifest import (
        Manifest,
        Provenance,
        assign_patient_splits,
        build_case,
        checksum_paths,
        save_manifest,
    )

    if cases < 1:
        raise ConfigError(f"--cases must be at least 1, got {cases}")
    if size < 64:
        raise ConfigError(f"--size must be at least 64 pixels, got {size}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if not 0.0 <= monochrome1_fraction <= 1.0:
        raise ConfigError(f"monochrome1_fraction must be between 0 and 1, got {monochrome1_fraction:g}")
    started = time.perf_counter()
    out = Path(out_dir)
    shares = resolve_prevalence(prevalence)
    settings = settings or RenderSettings.for_size(size)
    labels = sample_labels(_stream(seed, "labels"), cases, shares)
    inverted = np.zeros(cases, dtype=bool)
    inverted[_stream(seed, "photometric").permutation(cases)[: round(monochrome1_fraction * cases)]] = True
    jobs = [_Job(out, n, f"cxr_{n:05d}", f"SYNCXR-{seed}-{n:05d}", case_seed(seed, n), seed,
                 tuple(name for name, flag in zip(CXR_CLASSES, labels[n], strict=True) if flag), bool(inverted[n]),
                 size, settings) for n in range(cases)]
    log.info("synthesising %d radiographs (%dx%d) into %s", cases, size, size, out)
    rows = _run_jobs(jobs, workers, progress)

    splits = assign_patient_splits([row["patient_id"] for row in rows], seed=seed)
    for row in rows:
        row["split"] = splits[row["patient_id"]]
    labels_csv, metadata_csv = out / "labels.csv", out / "metadata.csv"
    _write_csv(labels_csv, ["image", *CXR_CLASSES],
               [[row["image"], *(int(v) for v in labels[n])] for n, row in enumerate(rows)])
    _write_csv(metadata_csv, list(METADATA_COLUMNS), [[row[key] for key in METADATA_COLUMNS] for row in rows])

    records = []
    for n, row in enumerate(rows):
        record = build_case(out, row["case_id"], image=row["image"], patient_id=row["patient_id"], split=row["split"],
                            labels={name: int(v) for name, v in zip(CXR_CLASSES, labels[n], strict=True)},
                            metadata=_case_metadata(row))
        record.checksums.update(checksum_paths(out, [row["dicom"]], show_progress=False))
        records.append(record)
    notes = ("PA radiographs projected from the medseg chest phantom (upright); prevalence "
             + ", ".join(f"{name} {shares[name]:g}" for name in CXR_CLASSES)
             + f"; {int(inverted.sum())} of {cases} DICOM files MONOCHROME1")
    manifest = Manifest(name="synthetic-cxr", task="classification", label_map=list(CXR_CLASSES), cases=records,
                        provenance=Provenance(source="medseg chest phantom", generator=GENERATOR,
                                              generator_version=__version__, seed=seed, command=command, notes=notes))
    manifest_path = save_manifest(manifest, out / "manifest.yaml")

    preview_path = None
    if preview:
        shown = rows[:PREVIEW_CASES]
        images = [np.asarray(Image.open(out / row["image"])) for row in shown]
        captions = [f"{row['case_id']}: {row['findings'].replace(';', ', ') or 'no finding'} | CTR {row['ctr']:.2f}"
                    f"{' | MONO1' if row['photometric'] == 'MONOCHROME1' else ''}" for row in shown]
        preview_path = write_contact_sheet(out / "preview.png", images, captions)
    positives = {name: int(labels[:, n].sum()) for n, name in enumerate(CXR_CLASSES)}
    return SynthCxrResult(out_dir=out, cases=cases, labels_csv=labels_csv, metadata_csv=metadata_csv,
                          manifest=manifest_path, preview=preview_path, positives=positives,
                          seconds=time.perf_counter() - started)
