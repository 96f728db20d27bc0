"""Write synthetic CT cases: a DICOM series, lobe and lung label maps, a findings JSON and a manifest.

Layout of `medseg synth ct --out DIR`:
```
DIR/manifest.yaml
DIR/case_000/ct/slice_0001.dcm ...   CT Image Storage series
DIR/case_000/lobes.nii.gz            0 background, 1 LUL, 2 LLL, 3 RUL, 4 RML, 5 RLL
DIR/case_000/lungs.nii.gz            0 background, 1 right lung, 2 left lung
DIR/case_000/findings.json           acquisition (kernel, noise, slices), setting (contrast phase, table and
                                     mattress, arms, blankets, ECG leads, reconstruction circle and padding,
                                     artifact strengths), anatomy, lobe volumes, findings with positions and volumes
DIR/case_000/preview.png             (optional) axial/coronal/sagittal montage with lobe overlay
```
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from medseg.data.phantom.acquisition import Acquisition, sample_acquisition
from medseg.data.phantom.findings import FINDING_KINDS
from medseg.data.phantom.model import ChestModel, Components, build_chest_model, component_rng
from medseg.data.phantom.render import PhantomImage, render
from medseg.data.phantom.tissues import Tissue, sample_contrast
from medseg.io.atomic import write_atomically
from medseg.io.dicom_write import SeriesInfo, write_ct_series
from medseg.io.volume import Volume
from medseg.io.volume_files import write_nifti
from medseg.labels import label_map

__all__ = ["DEFAULT_FINDING_RATES", "CaseResult", "balanced_findings", "case_seed", "choose_findings",
           "synth_ct_case", "synth_ct_dataset"]

log = logging.getLogger(__name__)

DEFAULT_FINDING_RATES = {"nodule": 0.35, "effusion": 0.15, "pneumothorax": 0.08, "emphysema": 0.15,
                         "consolidation": 0.12, "cardiomegaly": 0.08}
"""Chance that a random synthetic CT case carries each finding."""

LOBE_NAMES = label_map("lobes").short_names()


@dataclass(frozen=True)
class CaseResult:
    """What was written for one case."""

    case_id: str
    folder: Path
    seed: int
    findings: list[str]
    acquisition: Acquisition


def case_seed(dataset_seed: int, index: int) -> int:
    """A well-mixed per-case seed, so neighbouring cases do not share random streams."""
    return int(np.random.SeedSequence([dataset_seed, index]).generate_state(1)[0])


def choose_findings(rng: np.random.Generator, rates: dict[str, float] | None = None) -> list[str]:
    """Independent draws of each finding kind with the given rates."""
    rates = DEFAULT_FINDING_RATES if rates is None else rates
    return [kind for kind in FINDING_KINDS if rng.uniform() < rates.get(kind, 0.0)]


def balanced_findings(seed: int, cases: int, rates: dict[str, float] | None = None) -> list[list[str]]:
    """Per-case finding kinds for a dataset in which every kind is present in at least its expected share.

    Each case first draws its kinds as `synth_ct_case` would on its own (`choose_findings`); a kind found in
    fewer than ceil(rate x cases) cases is then added to randomly chosen cases that lack it. A small training
    set drawn independently can miss a finding altogether (30 cases at 8 % hold no cardiomegaly one time in
    twelve); the cases that gain a finding keep their patient (anatomy streams do not depend on findings).
    """
    rates = DEFAULT_FINDING_RATES if rates is None else rates
    plan = [choose_findings(component_rng(case_seed(seed, index), "finding_kinds"), rates) for index in range(cases)]
    rng = np.random.default_rng([seed, 2024])
    for kind in FINDING_KINDS:
        lacking = [index for index, kinds in enumerate(plan) if kind not in kinds]
        missing = int(np.ceil(rates.get(kind, 0.0) * cases - 1e-9)) - (cases - len(lacking))
        for index in rng.permutation(lacking)[:max(missing, 0)]:
            plan[int(index)].append(kind)
    return [[kind for kind in FINDING_KINDS if kind in kinds] for kinds in plan]


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def _world(model: ChestModel, point: Sequence[float]) -> np.ndarray:
    return model.pose.rotation @ np.asarray(point, dtype=float) + model.pose.translation


def _measure_findings(model: ChestModel, image: PhantomImage, voxel_ml: float) -> list[dict[str, Any]]:
    """Each finding's description plus where it landed on this grid and how much of it was imaged."""
    inverse = np.linalg.inv(image.affine)
    records = []
    right_side = None
    for finding in model.findings:
        record = finding.describe()
        if "centre_body_mm" in record:
            world = _world(model, record["centre_body_mm"])
            record["centre_ras_mm"] = [round(float(v), 2) for v in world]
            record["centre_voxel"] = [round(float(v), 2) for v in (inverse @ np.append(world, 1.0))[:3]]
        if finding.kind in ("effusion", "pneumothorax"):
            if right_side is None:
                right_side = _right_side_mask(image, model)
            code = Tissue.EFFUSION if finding.kind == "effusion" else Tissue.PNEUMOTHORAX
            side = right_side if finding.side > 0 else ~right_side
            record["imaged_volume_ml"] = round(float(np.count_nonzero((image.tissue == code) & side) * voxel_ml), 1)
        elif finding.kind == "consolidation":
            record["imaged_volume_ml"] = round(float(np.count_nonzero(image.tissue == Tissue.CONSOLIDATION)
                                                     * voxel_ml), 1)
        elif finding.kind == "emphysema":
            record["imaged_volume_ml"] = round(float(np.count_nonzero(image.tissue == Tissue.EMPHYSEMA) * voxel_ml), 1)
        elif finding.kind == "nodule":
            record["imaged_volume_ml"] = round(_nodule_volume(finding, model, image, inverse) * voxel_ml, 3)
        records.append(record)
    return records


def _right_side_mask(image: PhantomImage, model: ChestModel) -> np.ndarray:
    """True where the body-frame x (patient right) is >= 0, on the image grid."""
    body_from_voxel = model.pose.body_from_world() @ image.affine
    i, j, k = (np.arange(n, dtype=np.float32) for n in image.tissue.shape)
    x = (body_from_voxel[0, 0] * i[:, None, None] + body_from_voxel[0, 1] * j[None, :, None]
         + body_from_voxel[0, 2] * k[None, None, :] + body_from_voxel[0, 3])
    return x >= 0


def _nodule_volume(finding: Any, model: ChestModel, image: PhantomImage, inverse: np.ndarray) -> float:
    centre = (inverse @ np.append(_world(model, finding.centre), 1.0))[:3]
    spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    reach = finding.diameter_mm / spacing + 2
    low = np.maximum(np.floor(centre - reach).astype(int), 0)
    high = np.minimum(np.ceil(centre + reach).astype(int) + 1, image.tissue.shape)
    if np.any(high <= low):
        return 0.0
    box = image.tissue[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    code = Tissue.NODULE if finding.subtype == "solid" else Tissue.GROUND_GLASS
    return float(np.count_nonzero(box == code))


def _case_summary(case_id: str, seed: int, model: ChestModel, acquisition: Acquisition, image: PhantomImage,
                  extra_fat_mm: float = 0.0) -> dict[str, Any]:
    from medseg import __version__

    voxel_ml = float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
    counts = np.bincount(image.lobes.reshape(-1) if image.lobes.flags.c_contiguous else image.lobes.ravel(),
                         minlength=6)
    lobe_ml = {name: round(float(counts[label] * voxel_ml), 1) for label, name in LOBE_NAMES.items()}
    total = sum(lobe_ml.values())
    lungs = image.lobes > 0
    laa950 = float(np.count_nonzero(lungs & (image.hu < -950)) / max(1, np.count_nonzero(lungs)) * 100.0)
    return {
        "case_id": case_id,
        "seed": seed,
        "generator": "medseg synth ct",
        "medseg_version": __version__,
        "components": [name for name, on in vars(model.components).items() if on],
        "acquisition": acquisition.describe(),
        "setting": {
            "contrast": model.contrast.describe() if model.contrast is not None else {"phase": "none"},
            "extra_fat_mm": round(extra_fat_mm, 1),
            "arms": acquisition.arms,
            **acquisition.setting(),
            "artifacts": image.notes,
        },
        "anatomy": {
            "lung_volume_ml": round(total, 1),
            "lobe_volume_ml": lobe_ml,
            "lobe_share_percent": {name: round(100 * v / total, 2) if total else 0.0 for name, v in lobe_ml.items()},
            "target_lobe_share_percent": {name: round(100 * v, 2) for name, v in model.lobe_shares.items()},
            "heart_scale": round(model.shape.heart_scale, 3),
            "dome_right_above_left_mm": round(model.shape.dome_right_z - model.shape.dome_left_z, 1),
            "fissures": {name: {"visibility": _visibility(f.gap_threshold), "thickness_mm": round(f.thickness, 2)}
                         for name, f in model.fissures.items()},
            "laa950_percent": round(laa950, 2),
            "posture": model.posture,
        },
        "findings": _measure_findings(model, image, voxel_ml),
    }


def _padding_value(acquisition: Acquisition) -> int | None:
    """The stored PixelPaddingValue (rescale intercept -1024) when the case declares its padding."""
    surroundings = acquisition.surroundings
    if surroundings is None or not surroundings.fov_circle or not acquisition.declare_padding:
        return None
    return int(surroundings.padding_hu) + 1024


def _visibility(gap_threshold: float) -> str:
    if gap_threshold == float("-inf"):
        return "complete"
    return "absent" if gap_threshold == float("inf") else "incomplete"


def synth_ct_case(folder: str | Path, seed: int, *, case_id: str | None = None, size: int = 512,
                  slices: int | None = None, findings: Sequence[str] | None = None,
                  components: Components | None = None, preview: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> CaseResult:
    """Generate one case into `folder` (see the module docstring for the layout).

    `findings=None` draws them at random (`DEFAULT_FINDING_RATES`); pass a list (possibly empty) to fix them.
    """
    folder = Path(folder)
    case_id = case_id or folder.name
    chosen = choose_findings(component_rng(seed, "finding_kinds")) if findings is None else list(findings)
    components = components or Components()
    habitus = component_rng(seed, "habitus")
    extra_fat = float(habitus.uniform(8.0, 40.0)) if habitus.uniform() < 0.3 else 0.0
    contrast = sample_contrast(component_rng(seed, "contrast"), 41.0)
    model = build_chest_model(seed, findings=chosen if components.findings else (), components=components,
                              contrast=contrast, extra_fat_mm=extra_fat)
    acquisition = sample_acquisition(component_rng(seed, "acquisition"), model, size=size, slices=slices,
                                     extra_fat_mm=extra_fat)
    image = render(model, acquisition.grid, acquisition.scanner, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    series_dir = folder / "ct"
    if series_dir.exists():
        shutil.rmtree(series_dir)
    info = SeriesInfo(
        patient_id=f"PHANTOM-{seed % 10**8:08d}", patient_name=f"Phantom^{case_id}",
        study_uid=_uid("study", seed), series_uid=_uid("series", seed), frame_of_reference_uid=_uid("frame", seed),
        series_description=f"medseg phantom {acquisition.slice_thickness:g} mm",
        patient_position=acquisition.patient_position, slice_thickness=acquisition.slice_thickness,
        study_date="20260101", pixel_padding_value=_padding_value(acquisition),
    )
    write_ct_series(image.hu, image.affine, series_dir, info)
    write_nifti(Volume(image.lobes, image.affine), folder / "lobes.nii.gz", label=True)
    write_nifti(Volume(image.lungs, image.affine), folder / "lungs.nii.gz", label=True)
    summary = _case_summary(case_id, seed, model, acquisition, image, extra_fat)
    write_atomically(folder / "findings.json", lambda path: path.write_text(json.dumps(summary, indent=2)))
    if preview:
        from medseg.export.overlay import save_label_montage

        save_label_montage(Volume(image.hu, image.affine), image.lobes, folder / "preview.png", title=case_id)
    return CaseResult(case_id=case_id, folder=folder, seed=seed, findings=model.finding_kinds(),
                      acquisition=acquisition)


def synth_ct_dataset(out: str | Path, cases: int, seed: int, *, size: int = 512, slices: int | None = None,
                     findings: Sequence[str] | str | None = None, components: Components | None = None,
                     preview: bool = False, splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
                     on_case: Callable[[CaseResult], None] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """Generate `cases` cases under `out` and write `out/manifest.yaml`; returns the manifest path.

    `findings`: None draws each case's kinds independently at `DEFAULT_FINDING_RATES`, "balanced" as well but
    with every kind in at least its expected share of cases (`balanced_findings`), a list gives every case
    those kinds.
    """
    from medseg import __version__
    from medseg.data.manifest import Manifest, Provenance, assign_patient_splits, build_case, save_manifest

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(findings, str) and findings != "balanced":
        raise ValueError(f"findings must be None, 'balanced' or a list of kinds, not {findings!r}")
    plan = balanced_findings(seed, cases) if findings == "balanced" else [findings] * cases
    results = []
    for index in range(cases):
        case_id = f"case_{index:03d}"
        result = synth_ct_case(out / case_id, case_seed(seed, index), case_id=case_id, size=size, slices=slices,
                               findings=plan[index], components=components, preview=preview, progress=progress)
        results.append(result)
        if on_case is not None:
            on_case(result)
    split_of = assign_patient_splits([r.case_id for r in results], fractions=splits, seed=seed)
    records = [
        build_case(out, r.case_id, image=f"{r.case_id}/ct",
                   labels={"lobes": f"{r.case_id}/lobes.nii.gz", "lungs": f"{r.case_id}/lungs.nii.gz"},
                   split=split_of[r.case_id],
                   metadata={"seed": r.seed, "findings": r.findings, "findings_json": f"{r.case_id}/findings.json",
                             **r.acquisition.describe()})
        for r in results
    ]
    manifest = Manifest(
        name=f"medseg-phantom-ct-seed{seed}", task="segmentation", label_map=label_map("lobes").names(background=True),
        label_maps={"lobes": "lobes", "lungs": "lungs"}, cases=records,
        provenance=Provenance(source="synthetic", generator="medseg synth ct", generator_version=__version__,
                              seed=seed, notes=f"{cases} cases, size {size}, slices {slices or 'varied'}"
                                    + (", findings balanced" if findings == "balanced" else "")),
    )
    path = out / "manifest.yaml"
    save_manifest(manifest, path)
    return path
