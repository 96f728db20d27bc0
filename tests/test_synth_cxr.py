"""Synthetic chest radiographs (`medseg synth cxr`): files, labels, determinism, DICOM DX, physics, CTR."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image

from medseg.data.manifest import load_manifest, validate_manifest
from medseg.data.phantom import build_chest_model
from medseg.data.phantom.model import component_rng
from medseg.data.radiograph import (
    CXR_CLASSES,
    DEFAULT_PREVALENCE,
    DX_FOR_PRESENTATION,
    AttenuationModel,
    RenderSettings,
    attenuation_from_hu,
    parse_prevalence,
    sample_labels,
    synthesize_cxr_dataset,
    synthesize_radiograph,
)
from medseg.data.radiograph.cli import cxr
from medseg.data.radiograph.ctr import measure_ctr
from medseg.data.radiograph.dataset import METADATA_COLUMNS, case_seed
from medseg.data.radiograph.projection import PaGeometry, detector_positions
from medseg.data.radiograph.synth import PHANTOM_COMPONENTS, render_projection, sample_geometry
from medseg.errors import ConfigError
from medseg.io.xray import read_radiograph

FAST = RenderSettings(spacing_mm=3.0, slab_mm=4.0, vessel_density=100.0)
SIZE = 256
CASES = 8


def _dataset(out: Path) -> object:
    return synthesize_cxr_dataset(out, CASES, seed=7, size=SIZE, monochrome1_fraction=0.25, preview=True,
                                  settings=FAST, prevalence={"effusion": 0.5})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cxr") / "synth"
    _dataset(out)
    return out


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


# --- labels ------------------------------------------------------------------------------------------


def test_default_prevalence_is_imbalanced_within_5_to_20_percent() -> None:
    assert set(DEFAULT_PREVALENCE) == set(CXR_CLASSES)
    assert all(0.05 <= p <= 0.20 for p in DEFAULT_PREVALENCE.values())
    assert len(set(DEFAULT_PREVALENCE.values())) > 3


def test_sampler_respects_prevalence() -> None:
    labels = sample_labels(np.random.default_rng(0), 20000)
    for column, name in enumerate(CXR_CLASSES):
        assert labels[:, column].mean() == pytest.approx(DEFAULT_PREVALENCE[name], abs=0.01), name
    custom = sample_labels(np.random.default_rng(1), 20000, {"nodule": 0.3, "emphysema": 0.0})
    assert custom[:, 0].mean() == pytest.approx(0.3, abs=0.015)
    assert custom[:, CXR_CLASSES.index("emphysema")].sum() == 0
    # findings are independent: co-occurrence close to the product of prevalences
    both = (labels[:, 1] & labels[:, 0]).mean()
    assert both == pytest.approx(DEFAULT_PREVALENCE["effusion"] * DEFAULT_PREVALENCE["nodule"], abs=0.005)


def test_sampler_gives_every_class_a_positive_and_a_negative() -> None:
    for seed in range(20):
        labels = sample_labels(np.random.default_rng(seed), 6)
        assert (labels.sum(axis=0) >= 1).all() and (labels.sum(axis=0) <= 5).all()


def test_parse_prevalence() -> None:
    shares = parse_prevalence(["effusion=0.2", "nodule = 12%"])
    assert shares["effusion"] == 0.2 and shares["nodule"] == pytest.approx(0.12)
    assert shares["emphysema"] == DEFAULT_PREVALENCE["emphysema"]
    for bad in (["effusion"], ["efusion=0.1"], ["effusion=1.5"], ["effusion=abc"]):
        with pytest.raises(ConfigError):
            parse_prevalence(bad)


# --- files ---------------------------------------------------------------------------------------------


def test_output_files_and_sizes(dataset: Path) -> None:
    for n in range(CASES):
        png = dataset / "images" / f"cxr_{n:05d}.png"
        with Image.open(png) as image:
            assert image.mode == "L" and image.size == (SIZE, SIZE)
        ds = pydicom.dcmread(dataset / "dicom" / f"cxr_{n:05d}.dcm")
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE)
    assert (dataset / "manifest.yaml").is_file()
    with Image.open(dataset / "preview.png") as preview:
        assert preview.size[0] >= 4 * 200
    assert not list(dataset.rglob(".*tmp*")), "temporary files left behind"


def test_labels_csv_layout(dataset: Path) -> None:
    rows = _read_csv(dataset / "labels.csv")
    assert rows[0] == ["image", *CXR_CLASSES]
    assert len(rows) == CASES + 1
    for row in rows[1:]:
        assert (dataset / row[0]).is_file()
        assert set(row[1:]) <= {"0", "1"}
    labels = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert (labels.sum(axis=0) >= 1).all()          # every class present at least once


def test_metadata_csv_and_manifest(dataset: Path) -> None:
    rows = _read_csv(dataset / "metadata.csv")
    assert tuple(rows[0]) == METADATA_COLUMNS
    table = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    labels = _read_csv(dataset / "labels.csv")[1:]
    assert [row["image"] for row in table] == [row[0] for row in labels]
    assert sum(row["photometric"] == "MONOCHROME1" for row in table) == 2          # 25 % of 8
    assert all(row["view"] == "PA" and 0.2 < float(row["ctr"]) < 0.8 for row in table)
    manifest = load_manifest(dataset / "manifest.yaml")
    assert manifest.task == "classification" and manifest.class_names == list(CXR_CLASSES)
    assert manifest.provenance.generator == "medseg synth cxr" and manifest.provenance.seed == 7
    assert {case.split for case in manifest.cases} <= {"train", "val", "test"}
    first = manifest.cases[0]
    assert first.labels == {name: int(v) for name, v in zip(CXR_CLASSES, labels[0][1:], strict=True)}
    assert first.metadata["dicom"] in first.checksums
    with_findings = [case for case in manifest.cases if any(case.labels.values())]
    assert all(len(case.metadata["finding_details"]) >= 1 for case in with_findings)
    report = validate_manifest(dataset / "manifest.yaml")
    assert report.ok, report.problems


def test_same_seed_same_bytes(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    _dataset(again)
    for relative in ("labels.csv", "metadata.csv", *(f"images/cxr_{n:05d}.png" for n in range(CASES)),
                     *(f"dicom/cxr_{n:05d}.dcm" for n in range(CASES))):
        assert (again / relative).read_bytes() == (dataset / relative).read_bytes(), relative


def test_dicom_dx_attributes(dataset: Path) -> None:
    ds = pydicom.dcmread(dataset / "dicom" / "cxr_00000.dcm")
    assert ds.SOPClassUID == DX_FOR_PRESENTATION and ds.file_meta.MediaStorageSOPClassUID == DX_FOR_PRESENTATION
    assert ds.Modality == "DX" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert ds.ViewPosition == "PA" and ds.BodyPartExamined == "CHEST" and list(ds.PatientOrientation) == ["L", "F"]
    assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(430.0 / SIZE, rel=1e-4)
    assert float(ds.PixelSpacing[0]) < float(ds.ImagerPixelSpacing[0])            # magnification corrected
    assert ds.WindowCenter is not None and ds.WindowWidth is not None
    assert int(ds.pixel_array.max()) <= 4095
    other = pydicom.dcmread(dataset / "dicom" / "cxr_00001.dcm")
    assert other.PatientID != ds.PatientID and other.StudyInstanceUID != ds.StudyInstanceUID
    assert ds.PatientID == "SYNCXR-7-00000"


def test_dicom_displays_like_png_for_both_photometrics(dataset: Path) -> None:
    seen = set()
    for dicom in sorted((dataset / "dicom").glob("*.dcm")):
        from_dicom = read_radiograph(dicom)
        from_png = read_radiograph(dataset / "images" / dicom.with_suffix(".png").name)
        seen.add(from_dicom.tags["PhotometricInterpretation"])
        assert from_dicom.tags["voi"] == "window"
        assert from_dicom.pixel_spacing is not None
        difference = np.abs(from_dicom.array * (255.0 / 4095.0) - from_png.array)
        assert difference.max() <= 0.5 + 1e-6, dicom.name
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


def test_cli_command(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(cxr, ["--cases", "2", "--out", str(out), "--seed", "3", "--size", "96",
                                      "--prevalence", "nodule=1", "--preview"])
    assert result.exit_code == 0, result.output
    rows = _read_csv(out / "labels.csv")
    assert [row[1] for row in rows[1:]] == ["1", "1"]
    assert (out / "preview.png").is_file() and "preview" in result.output
    bad = CliRunner().invoke(cxr, ["--cases", "1", "--out", str(tmp_path / "bad"), "--prevalence", "x=0.1"])
    assert bad.exit_code == 2 and "unknown finding" in bad.output


# --- physics -------------------------------------------------------------------------------------------


def test_attenuation_model() -> None:
    model = AttenuationModel()
    mu = attenuation_from_hu(np.array([-1000.0, -850.0, 0.0, 40.0, 800.0, 1590.0]))
    assert mu[0] == 0.0 and mu[2] == pytest.approx(model.mu_water)
    assert mu[1] == pytest.approx(0.15 * model.mu_water, rel=1e-3)
    assert np.all(np.diff(mu) > 0)
    assert mu[-1] == pytest.approx(model.mu_bone, rel=1e-4)                       # bone: bilinear, steeper
    assert mu[4] > model.mu_water * 1.8


def _pixel(geometry: PaGeometry, size: int, x: float, z: float, y: float) -> tuple[int, int]:
    """Detector (row, column) of the scanner point (x, y, z)."""
    det_x, det_z = detector_positions(geometry, size)
    m = float(geometry.magnification(y))
    u, v = geometry.centre_x + (x - geometry.centre_x) * m, geometry.centre_z + (z - geometry.centre_z) * m
    return int(np.argmin(np.abs(det_z - v))), int(np.argmin(np.abs(det_x - u)))


def _box_mean(image: np.ndarray, row: int, column: int, half: int = 6) -> float:
    return float(image[row - half:row + half + 1, column - half:column + half + 1].mean())


def _world(model, x: float, y: float, z: float) -> np.ndarray:
    return (np.linalg.inv(model.pose.body_from_world()) @ np.array([x, y, z, 1.0]))[:3]


def test_lungs_dark_spine_and_mediastinum_bright() -> None:
    seed = 11
    cxr_image = synthesize_radiograph(seed, (), size=SIZE, settings=FAST)
    model = build_chest_model(seed, posture="upright", components=PHANTOM_COMPONENTS,
                              vessel_density=FAST.vessel_density)
    s = model.shape
    z = 0.5 * (s.apex_z + s.dome_right_z)
    display, integral = cxr_image.display.astype(float), cxr_image.line_integral
    lungs = [_pixel(cxr_image.geometry, SIZE, *_world(model, side * 0.55 * s.cavity_half_width, 0.0, z)[[0, 2]], 0.0)
             for side in (1, -1)]
    spine = _pixel(cxr_image.geometry, SIZE, *_world(model, 0.0, s.spine_y, z)[[0, 2]], s.spine_y)
    for lung in lungs:
        assert _box_mean(display, *lung) + 60 < _box_mean(display, *spine)
        assert _box_mean(integral, *lung) + 1.0 < _box_mean(integral, *spine)
    assert display[:, :4].mean() < 10                                         # direct exposure beside the body
    inside = integral > 1.0
    assert np.corrcoef(display[inside], integral[inside])[0, 1] > 0.8     # brighter where more attenuation


def test_effusion_brightens_its_costophrenic_angle() -> None:
    seed = 5
    with_fluid = synthesize_radiograph(seed, ("effusion",), size=SIZE, settings=FAST)
    without = synthesize_radiograph(seed, (), size=SIZE, settings=FAST)
    model = build_chest_model(seed, findings=["effusion"], posture="upright", components=PHANTOM_COMPONENTS,
                              vessel_density=FAST.vessel_density)
    s, effusion = model.shape, model.findings[0]
    dome = s.dome_right_z if effusion.side > 0 else s.dome_left_z
    x = effusion.side * 0.8 * s.cavity_half_width
    angle = _pixel(with_fluid.geometry, SIZE, *_world(model, x, 0.0, dome - 0.2 * s.dome_depth)[[0, 2]], 0.0)
    other = _pixel(with_fluid.geometry, SIZE, *_world(model, -x, 0.0, dome - 0.2 * s.dome_depth)[[0, 2]], 0.0)
    gain = _box_mean(with_fluid.line_integral, *angle, half=4) - _box_mean(without.line_integral, *angle, half=4)
    assert gain > 0.3
    assert _box_mean(with_fluid.display, *angle, half=4) > _box_mean(without.display, *angle, half=4) + 20
    assert abs(_box_mean(with_fluid.line_integral, *other, half=4)
               - _box_mean(without.line_integral, *other, half=4)) < 0.5 * gain


def _ctr(seed: int, findings: tuple[str, ...]) -> float:
    model = build_chest_model(seed, findings=findings, posture="upright", components=PHANTOM_COMPONENTS,
                              vessel_density=FAST.vessel_density)
    geometry = sample_geometry(component_rng(seed, "radiograph"), model)
    _, image, grid = render_projection(model, geometry, FAST)
    return measure_ctr(image, model, grid).ratio


CTR_SEEDS = [case_seed(2024, n) for n in range(10)]


@pytest.fixture(scope="module")
def ctrs() -> dict[str, list[float]]:
    return {"normal": [_ctr(seed, ()) for seed in CTR_SEEDS],
            "cardiomegaly": [_ctr(seed, ("cardiomegaly",)) for seed in CTR_SEEDS]}


def test_ctr_normal_below_half_and_cardiomegaly_larger(ctrs: dict[str, list[float]]) -> None:
    normal, enlarged = np.array(ctrs["normal"]), np.array(ctrs["cardiomegaly"])
    assert (normal < 0.5).mean() >= 0.8, normal
    assert 0.28 < normal.mean() < 0.5
    assert enlarged.mean() > normal.mean() + 0.1, (normal, enlarged)
    assert (enlarged > 0.42).all(), enlarged


def test_cardiomegaly_ctr_above_half(ctrs: dict[str, list[float]]) -> None:
    assert (np.array(ctrs["cardiomegaly"]) > 0.5).all(), ctrs["cardiomegaly"]
