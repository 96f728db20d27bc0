"""Anatomy of the synthetic chest phantom: lobes, sides, fissures, tissue HU, findings, components, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.data.phantom import TISSUE_HU_BANDS, Components, Grid, ScannerSettings, Tissue, build_chest_model, render

LUL, LLL, RUL, RML, RLL = 1, 2, 3, 4, 5
QUIET = ScannerSettings(noise_sd=0.0, kernel_sigma_mm=0.0)


def chest_grid(step: float = 2.0) -> Grid:
    """An isotropic RAS grid covering any phantom chest (x, y +-200 mm, z -320..+140 mm)."""
    shape = (int(400 / step), int(400 / step), int(460 / step))
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = [-200.0, -200.0, -320.0]
    return Grid(shape, affine)


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    index = np.argwhere(mask).mean(axis=0)
    return (affine @ np.append(index, 1.0))[:3]


@pytest.fixture(scope="module")
def plain():
    """A phantom without findings or pose, rendered noise-free without partial volume (tissue bands exact)."""
    model = build_chest_model(11, components=Components(pose=False, partial_volume=False, noise=False, blur=False))
    return model, render(model, chest_grid(), QUIET, quantize=False)


@pytest.fixture(scope="module")
def diseased():
    model = build_chest_model(5, findings=["nodule", "effusion", "emphysema"], components=Components(pose=False))
    return model, render(model, chest_grid(), QUIET, quantize=False)


def test_every_lobe_present_and_inside_the_lungs(plain):
    _, image = plain
    labels, counts = np.unique(image.lobes, return_counts=True)
    assert list(labels) == [0, 1, 2, 3, 4, 5]
    assert counts[1:].min() * 8 / 1000 > 100                         # every lobe > 100 mL at 2 mm
    assert np.array_equal(image.lungs == 1, np.isin(image.lobes, (RUL, RML, RLL)))
    assert np.array_equal(image.lungs == 2, np.isin(image.lobes, (LUL, LLL)))


def test_lobes_on_the_right_side_and_level(plain):
    _, image = plain
    centroid = {label: world_centroid(image.lobes == label, image.affine) for label in range(1, 6)}
    midline = world_centroid(image.lobes > 0, image.affine)[0]
    assert centroid[LUL][0] < midline and centroid[LLL][0] < midline          # RAS: left is -x
    assert min(centroid[label][0] for label in (RUL, RML, RLL)) > midline
    assert centroid[LUL][2] > centroid[LLL][2]                                 # upper above lower
    assert centroid[RUL][2] > centroid[RLL][2]
    assert centroid[RML][1] > centroid[RLL][1]                                 # middle lobe anterior
    assert centroid[RUL][2] > centroid[RML][2]


def test_lobe_volumes_follow_the_sampled_shares(plain):
    model, image = plain
    counts = np.bincount(image.lobes.ravel(), minlength=6)[1:].astype(float)
    shares = counts / counts.sum()
    expected = np.array([model.lobe_shares[name] for name in ("LUL", "LLL", "RUL", "RML", "RLL")])
    assert np.abs(shares - expected).max() < 0.025
    total_litres = counts.sum() * 8 / 1e6
    assert 2.0 < total_litres < 8.0


def test_right_dome_higher_than_left(plain):
    _, image = plain
    k = np.arange(image.lobes.shape[2])
    lowest = {side: k[np.any(image.lungs == side, axis=(0, 1))].min() for side in (1, 2)}
    top_of_dome = {}
    for side in (1, 2):                                   # dome = lowest lung slice along the lung's centre line
        mask = image.lungs == side
        i_centre = int(np.argwhere(mask)[:, 0].mean())
        column = mask[i_centre].any(axis=0)
        top_of_dome[side] = k[column].min()
    assert lowest[1] >= 0 and top_of_dome[1] > top_of_dome[2]


def test_fissure_voxels_lie_between_neighbouring_lobes(plain):
    _, image = plain
    fissure = image.tissue == Tissue.FISSURE
    assert fissure.sum() > 500
    pairs = [(LUL, LLL), (RUL, RLL), (RML, RLL), (RUL, RML)]
    near = {label: ndimage.binary_dilation(image.lobes == label, iterations=2) for label in range(1, 6)}
    between = np.zeros_like(fissure)
    for a, b in pairs:
        between |= near[a] & near[b]
    assert (between & fissure).sum() / fissure.sum() > 0.97
    for a, b in pairs:                                   # every fissure is drawn somewhere
        assert (near[a] & near[b] & fissure).sum() > 20


def test_fissures_are_curved_not_planes(plain):
    model, _ = plain
    surface = model.fissures["right_oblique"]
    x, y = np.meshgrid(np.linspace(20, 120, 21), np.linspace(-80, 40, 25), indexing="ij")
    z = surface.height(x, y)
    design = np.stack([x.ravel(), y.ravel(), np.ones(x.size)], axis=1)
    residual = z.ravel() - design @ np.linalg.lstsq(design, z.ravel(), rcond=None)[0]
    assert residual.std() > 1.0                          # mm away from the best plane


def test_tissue_hu_within_published_bands(plain):
    _, image = plain
    for tissue, (low, high) in TISSUE_HU_BANDS.items():
        mask = image.tissue == tissue
        interior = ndimage.binary_erosion(mask)          # away from partial-volume edges of painted shapes
        values = image.hu[interior if interior.sum() >= 20 else mask]
        if values.size == 0:
            continue
        assert low <= values.mean() <= high, f"{tissue.name}: mean {values.mean():.0f} HU not in {low}..{high}"
    for tissue in (Tissue.LUNG, Tissue.FAT, Tissue.MUSCLE, Tissue.BLOOD, Tissue.TRABECULAR_BONE,
                   Tissue.CORTICAL_BONE, Tissue.LIVER, Tissue.AIRWAY_AIR, Tissue.VESSEL, Tissue.FISSURE):
        assert (image.tissue == tissue).sum() > 50, f"no {tissue.name} rendered"


def test_fissures_denser_than_lung_and_vessels_taper(plain):
    model, image = plain
    lung = image.hu[image.tissue == Tissue.LUNG].mean()
    assert image.hu[image.tissue == Tissue.FISSURE].mean() > lung + 100
    radii = model.arteries.radius
    assert radii.max() > 5.0 and np.quantile(radii, 0.1) < 1.0


def test_findings_land_where_they_should(diseased):
    model, image = diseased
    lungs = image.lobes > 0
    effusion = image.tissue == Tissue.EFFUSION
    assert effusion.sum() * 8 / 1000 > 20                                       # mL
    assert 0 <= image.hu[effusion].mean() <= 25
    assert world_centroid(effusion, image.affine)[1] < world_centroid(lungs, image.affine)[1]   # dependent
    assert not np.any(effusion & lungs)
    emphysema = image.tissue == Tissue.EMPHYSEMA
    assert emphysema.sum() > 100 and np.median(image.hu[emphysema]) < -930
    nodules = [f for f in model.findings if f.kind == "nodule"]
    assert nodules
    for nodule in nodules:
        index = np.rint((np.linalg.inv(image.affine) @ np.append(nodule.centre, 1.0))[:3]).astype(int)
        assert image.lobes[tuple(index)] == nodule.lobe


def test_pneumothorax_is_air_without_lung_markings():
    model = build_chest_model(8, findings=["pneumothorax"], components=Components(pose=False))
    image = render(model, chest_grid(3.0), QUIET, quantize=False)
    air = image.tissue == Tissue.PNEUMOTHORAX
    assert air.sum() * 27 / 1000 > 50
    assert image.hu[air].mean() < -990
    assert world_centroid(air, image.affine)[1] > world_centroid(image.lobes > 0, image.affine)[1]   # anterior


def test_components_switch_off_independently():
    full = build_chest_model(3, components=Components(pose=False))
    no_vessels = build_chest_model(3, components=Components(pose=False, vessels=False))
    grid = chest_grid(4.0)
    a = render(full, grid, QUIET, quantize=False)
    b = render(no_vessels, grid, QUIET, quantize=False)
    assert (a.tissue == Tissue.VESSEL).sum() > 100 and (b.tissue == Tissue.VESSEL).sum() == 0
    assert np.array_equal(a.lobes, b.lobes)              # fissures unchanged by the vessel switch
    with pytest.raises(ValueError, match="unknown phantom component"):
        Components.without(["vesels"])


def test_same_seed_same_arrays_different_seed_different_chest():
    grid = chest_grid(5.0)
    first = render(build_chest_model(21, findings=["nodule"]), grid)
    second = render(build_chest_model(21, findings=["nodule"]), grid)
    other = render(build_chest_model(22, findings=["nodule"]), grid)
    assert np.array_equal(first.hu, second.hu) and np.array_equal(first.lobes, second.lobes)
    assert not np.array_equal(first.lobes, other.lobes)
