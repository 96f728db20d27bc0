"""Synthetic CT cases on disk: DICOM validity and geometry vs the label maps, acquisition variety, CLI, manifest."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from medseg.cli import main
from medseg.data.manifest import load_manifest, validate_manifest
from medseg.data.phantom import Components, build_chest_model
from medseg.data.phantom.acquisition import sample_acquisition
from medseg.data.phantom.ct_case import synth_ct_case
from medseg.data.phantom.model import component_rng
from medseg.data.phantom.render import KERNELS
from medseg.io import load_volume
from tests.conftest import sitk_read_series, sitk_world_matrix_ras


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "case_a"
    result = synth_ct_case(folder, 1234, size=96, slices=48, findings=["nodule", "effusion"], preview=True)
    return result


def test_dicom_series_is_valid_ct_and_loads_onto_the_label_grid(case):
    files = sorted((case.folder / "ct").glob("*.dcm"))
    assert len(files) == 48
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        assert keyword in ds, keyword
    assert float(ds.SliceThickness) == pytest.approx(case.acquisition.slice_thickness, abs=1e-4)
    assert ds.PatientPosition == case.acquisition.patient_position
    volume = load_volume(case.folder / "ct")
    lobes = nib.load(case.folder / "lobes.nii.gz")
    assert volume.shape == lobes.shape
    np.testing.assert_allclose(volume.affine, lobes.affine, atol=1e-4)
    np.testing.assert_allclose(sitk_world_matrix_ras(sitk_read_series(case.folder / "ct")), lobes.affine, atol=1e-3)
    labels = np.asarray(lobes.dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}
    lung_hu = volume.array[labels > 0]
    assert -930 < np.median(lung_hu) < -750               # labels sit on dark lung in the image itself
    ring = np.zeros_like(labels, dtype=bool)
    ring[volume.array > -300] = True
    assert np.mean(ring[labels > 0]) < 0.1


def test_lungs_map_and_findings_json(case):
    lungs = np.asarray(nib.load(case.folder / "lungs.nii.gz").dataobj)
    lobes = np.asarray(nib.load(case.folder / "lobes.nii.gz").dataobj)
    assert np.array_equal(lungs == 1, np.isin(lobes, (3, 4, 5)))
    assert np.array_equal(lungs == 2, np.isin(lobes, (1, 2)))
    summary = json.loads((case.folder / "findings.json").read_text())
    kinds = {f["kind"] for f in summary["findings"]}
    assert {"nodule", "effusion"} <= kinds
    for finding in summary["findings"]:
        if finding["kind"] == "nodule":
            assert len(finding["centre_ras_mm"]) == 3 and finding["diameter_mm"] > 0
    effusion = next(f for f in summary["findings"] if f["kind"] == "effusion")
    assert effusion["imaged_volume_ml"] > 5
    shares = summary["anatomy"]["lobe_share_percent"]
    assert abs(sum(shares.values()) - 100) < 0.1
    assert (case.folder / "preview.png").stat().st_size > 10_000


def test_same_seed_writes_identical_arrays(tmp_path):
    first = synth_ct_case(tmp_path / "a", 99, case_id="x", size=48, slices=20, findings=[])
    second = synth_ct_case(tmp_path / "b", 99, case_id="x", size=48, slices=20, findings=[])
    for name in ("lobes.nii.gz", "lungs.nii.gz"):
        a, b = (np.asarray(nib.load(f.folder / name).dataobj) for f in (first, second))
        assert np.array_equal(a, b)
    for fa, fb in zip(sorted((first.folder / "ct").iterdir()), sorted((second.folder / "ct").iterdir()), strict=True):
        assert fa.read_bytes() == fb.read_bytes()


def test_acquisitions_vary_like_real_chest_ct():
    seen = []
    for seed in range(24):
        model = build_chest_model(seed, components=Components(vessels=False, airways=False))
        seen.append(sample_acquisition(component_rng(seed, "acquisition"), model, size=512))
    pixels = [a.pixel_spacing for a in seen]
    assert min(pixels) >= 0.55 and max(pixels) <= 0.98 and max(pixels) - min(pixels) > 0.1
    thickness = [a.slice_thickness for a in seen]
    assert min(thickness) >= 0.625 and max(thickness) <= 8.0 and len(set(thickness)) >= 4
    assert {KERNELS[a.kernel].sharpness for a in seen} == {"soft", "medium", "sharp"}
    assert {a.arms for a in seen} >= {"up", "down"}
    assert all(a.surroundings.table is not None for a in seen)
    assert {a.patient_position for a in seen} == {"HFS", "FFS"}
    assert any(a.truncation for a in seen)
    for a in seen:
        assert a.slices * a.slice_spacing > 200          # the whole chest is covered


def test_feet_first_series_reads_back_on_the_label_grid(tmp_path):
    seed = next(s for s in range(50) if sample_acquisition(
        component_rng(s, "acquisition"), build_chest_model(s, components=Components(vessels=False, airways=False)),
        size=48, slices=16).patient_position == "FFS")
    result = synth_ct_case(tmp_path / "ffs", seed, size=48, slices=16, findings=[])
    volume = load_volume(result.folder / "ct")
    lobes = nib.load(result.folder / "lobes.nii.gz")
    np.testing.assert_allclose(volume.affine, lobes.affine, atol=1e-4)
    assert pydicom.dcmread(next((result.folder / "ct").iterdir())).PatientPosition == "FFS"


def test_cli_writes_a_valid_manifest(tmp_path):
    out = tmp_path / "set"
    result = CliRunner().invoke(main, ["synth", "ct", "--cases", "2", "--size", "48", "--slices", "16",
                                       "--out", str(out), "--seed", "3", "--findings", "none"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out / "manifest.yaml")
    assert [c.case_id for c in manifest.cases] == ["case_000", "case_001"]
    assert manifest.provenance.seed == 3
    report = validate_manifest(out / "manifest.yaml")
    assert report.ok, report.summary()


def test_cli_rejects_unknown_findings_and_components(tmp_path):
    result = CliRunner().invoke(main, ["synth", "ct", "--out", str(tmp_path), "--findings", "nodul"])
    assert result.exit_code == 2 and "unknown finding" in result.output
    result = CliRunner().invoke(main, ["synth", "ct", "--out", str(tmp_path), "--without", "vesels"])
    assert result.exit_code == 2 and "vesels" in result.output


def test_cli_offers_every_phantom_component():
    from medseg.cli.synth import _COMPONENT_NAMES
    from medseg.data.phantom.model import COMPONENTS

    assert tuple(_COMPONENT_NAMES) == tuple(COMPONENTS)


def _acquisition(seed: int, size: int, slices: int):
    model = build_chest_model(seed, components=Components(vessels=False, airways=False))
    return sample_acquisition(component_rng(seed, "acquisition"), model, size=size, slices=slices)


@pytest.mark.parametrize("declared", [False, True])
def test_reconstruction_circle_padding_and_labels(tmp_path, declared):
    seed = next(s for s in range(200) if (a := _acquisition(s, 48, 12)).surroundings.fov_circle
                and a.surroundings.padding_hu < -1024 and a.declare_padding == declared)
    result = synth_ct_case(tmp_path / "c", seed, size=48, slices=12, findings=[])
    padding = result.acquisition.surroundings.padding_hu
    ii, jj = np.indices((48, 48))
    outside = ((ii - 23.5) / 24) ** 2 + ((jj - 23.5) / 24) ** 2 > 1
    raw = pydicom.dcmread(sorted((result.folder / "ct").iterdir())[0])
    stored = raw.pixel_array.T                                   # (columns, rows) = (i, j)
    assert np.all(stored[outside] * float(raw.RescaleSlope) + float(raw.RescaleIntercept) == padding)
    assert ("PixelPaddingValue" in raw) == declared
    volume = load_volume(result.folder / "ct")
    assert np.all(volume.array[outside] == (-1024 if declared else padding))   # declared padding reads as air
    lobes = np.asarray(nib.load(result.folder / "lobes.nii.gz").dataobj)
    assert not lobes[outside].any()


def test_case_summary_records_the_realism_setting(case):
    summary = json.loads((case.folder / "findings.json").read_text())
    acquisition, setting = summary["acquisition"], summary["setting"]
    assert acquisition["kernel"] in KERNELS and acquisition["kernel_sharpness"] in ("soft", "medium", "sharp")
    assert acquisition["arms"] in ("up", "down", "one_down") and acquisition["table"] in ("shell", "slab")
    assert setting["contrast"]["phase"] in ("none", "arterial", "pulmonary", "venous")
    assert {"table", "arms_beside_chest", "blankets", "ecg_electrodes", "fov_circle", "padding_hu",
            "extra_fat_mm", "artifacts"} <= set(setting)
    assert setting["table"]["pad_thickness"] > 0
    for finding in summary["findings"]:
        if finding["kind"] == "nodule":
            assert finding["abuts"] in (None, "pleura", "fissure")


def test_settings_vary_between_cases_and_repeat_per_seed():
    seen = [_acquisition(seed, 64, 10) for seed in range(30)]
    assert len({a.surroundings.table.kind for a in seen}) == 2
    assert any(a.surroundings.blankets for a in seen) and any(a.surroundings.electrodes for a in seen)
    assert {a.surroundings.fov_circle for a in seen} == {True, False}
    assert len({a.surroundings.padding_hu for a in seen}) == 3
    assert any(a.iterative > 0 for a in seen)
    assert _acquisition(7, 64, 10) == _acquisition(7, 64, 10)


def test_balanced_findings_reach_every_kinds_expected_share_and_keep_the_other_draws():
    from medseg.data.phantom.ct_case import DEFAULT_FINDING_RATES, balanced_findings, case_seed, choose_findings

    cases = 30
    plan = balanced_findings(1, cases)
    independent = [choose_findings(component_rng(case_seed(1, i), "finding_kinds")) for i in range(cases)]
    assert not any("cardiomegaly" in kinds for kinds in independent)   # seed 1 alone would miss it
    for kind, rate in DEFAULT_FINDING_RATES.items():
        assert sum(kind in kinds for kinds in plan) >= int(np.ceil(rate * cases))
    for drawn, planned in zip(independent, plan, strict=True):
        assert set(drawn) <= set(planned)                              # only additions, never removals
    changed = sum(drawn != planned for drawn, planned in zip(independent, plan, strict=True))
    assert 0 < changed < cases
    assert balanced_findings(1, cases) == plan


def test_cli_balanced_findings_writes_them_to_the_manifest(tmp_path):
    out = tmp_path / "set"
    result = CliRunner().invoke(main, ["synth", "ct", "--cases", "2", "--size", "32", "--slices", "8",
                                       "--out", str(out), "--seed", "3", "--findings", "balanced",
                                       "--without", "vessels", "--without", "airways"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out / "manifest.yaml")
    recorded = [set(case.metadata["findings"]) for case in manifest.cases]
    assert set().union(*recorded) == {"nodule", "effusion", "pneumothorax", "emphysema", "consolidation",
                                      "cardiomegaly"}                  # ceil(rate x 2) = 1 case each
    assert "balanced" in manifest.provenance.notes
