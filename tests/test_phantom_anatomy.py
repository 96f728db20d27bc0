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


# --- realism of the rendered scan: slice profile, kernels, surroundings, contrast, tumours at borders ---------


def test_thick_slice_is_the_profile_weighted_mean_of_thin_planes():
    from medseg.data.phantom.render import _slice_profile

    model = build_chest_model(4, components=Components(pose=False, noise=False, blur=False, texture=False,
                                                         vessels=False, airways=False))
    z0 = float(model.shape.dome_right_z)                  # through the diaphragm: partial volume matters
    affine = np.diag([3.0, 3.0, 1.0, 1.0])
    affine[:3, 3] = [-180.0, -180.0, z0]
    thick_grid = Grid((120, 120, 1), affine, slice_thickness=6.0)
    thick = render(model, thick_grid, QUIET, quantize=False)
    offsets, weights = _slice_profile(thick_grid, True)
    assert len(offsets) >= 5 and abs(weights.sum() - 1) < 1e-6 and weights[len(weights) // 2] == weights.max()
    assert 0.5 * 6.0 < np.ptp(offsets) < 1.4 * 6.0      # the profile reaches beyond half the thickness
    mean = np.zeros((120, 120))
    planes = []
    for offset, weight in zip(offsets, weights, strict=True):
        shifted = affine.copy()
        shifted[2, 3] = z0 + offset
        plane = render(model, Grid((120, 120, 1), shifted, slice_thickness=0.5), QUIET, quantize=False)
        mean += weight * plane.hu[:, :, 0]
        planes.append(plane)
    fat = np.any([p.tissue[:, :, 0] == Tissue.FAT for p in planes], axis=0)   # fat texture follows the grid
    np.testing.assert_allclose(thick.hu[:, :, 0][~fat], mean[~fat], atol=0.05)
    centre = planes[len(planes) // 2].hu[:, :, 0]
    assert np.abs(thick.hu[:, :, 0] - centre)[~fat].max() > 200    # partial volume really happened
    assert np.array_equal(thick.lobes, planes[len(planes) // 2].lobes)   # labels are the slice centre's


def _noise_only(kernel_name: str) -> tuple[np.ndarray, float]:
    from medseg.data.phantom.render import KERNELS

    model = build_chest_model(6, components=Components(pose=False, vessels=False, airways=False))
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    affine[:3, 3] = [-90.0, -90.0, -60.0]
    grid = Grid((256, 256, 2), affine, slice_thickness=5.0)
    kernel = KERNELS[kernel_name]
    noisy = render(model, grid, ScannerSettings(noise_sd=30.0, kernel=kernel, artifacts=False), quantize=False)
    clean = render(model, grid, ScannerSettings(noise_sd=0.0, kernel=kernel, artifacts=False), quantize=False)
    return noisy.hu - clean.hu, 0.7


def _mean_frequency(noise: np.ndarray, pixel: float) -> float:
    power = sum(np.abs(np.fft.fft2(noise[:, :, k])) ** 2 for k in range(noise.shape[2]))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(noise.shape[0], pixel), np.fft.fftfreq(noise.shape[1], pixel),
                              indexing="ij"))
    return float((f * power).sum() / power.sum())


def test_sharp_kernel_noise_is_finer_than_soft_kernel_noise():
    sharp, pixel = _noise_only("B70f")
    soft, _ = _noise_only("B30f")
    assert 25 < sharp.std() < 35 and 25 < soft.std() < 35         # noise_sd is kept whatever the kernel
    f_sharp, f_soft = _mean_frequency(sharp, pixel), _mean_frequency(soft, pixel)
    assert f_sharp > 0.4 and f_soft < 0.3 and f_sharp > f_soft + 0.15
    low = np.hypot(*np.meshgrid(np.fft.fftfreq(256, pixel), np.fft.fftfreq(256, pixel), indexing="ij")) < 0.03
    power = np.abs(np.fft.fft2(soft[:, :, 0])) ** 2
    assert power[low].mean() < 0.5 * power[~low].mean() * 4       # FBP noise: little power near zero frequency


def test_surroundings_are_never_patient_or_lung_and_leave_labels_alone():
    from medseg.data.phantom.acquisition import sample_acquisition
    from medseg.data.phantom.model import component_rng
    from medseg.data.phantom.tissues import NOT_PATIENT

    cheap = Components(vessels=False, airways=False)
    seed = next(s for s in range(60) if sample_acquisition(
        component_rng(s, "acquisition"), build_chest_model(s, components=cheap), size=64, slices=12).arms == "down")
    model = build_chest_model(seed, components=cheap)
    acquisition = sample_acquisition(component_rng(seed, "acquisition"), model, size=64, slices=12)
    image = render(model, acquisition.grid, acquisition.scanner)
    bare = render(build_chest_model(seed, components=Components(vessels=False, airways=False, surroundings=False)),
                  acquisition.grid, acquisition.scanner)
    outside = np.isin(image.tissue, NOT_PATIENT)
    assert not np.any(image.lobes[outside]) and not np.any(image.lungs[outside])
    table = image.tissue == Tissue.TABLE
    assert table.sum() > 50
    world_y = (image.affine @ np.stack([*np.indices(image.tissue.shape).reshape(3, -1),
                                        np.ones(image.tissue.size)]))[1].reshape(image.tissue.shape)
    patient = ~outside
    for i, k in zip(*np.nonzero(table.any(axis=1) & patient.any(axis=1)), strict=True):   # each column
        assert world_y[i, :, k][table[i, :, k]].max() < world_y[i, :, k][patient[i, :, k]].min()
    assert (image.tissue == Tissue.PAD).sum() > 20                  # mattress between patient and table
    assert (image.tissue[outside] == Tissue.OUTSIDE).mean() < 1.0
    # the arms beside the chest add patient tissue but no lung; labels are the same as without surroundings
    assert np.count_nonzero(patient) > np.count_nonzero(~np.isin(bare.tissue, NOT_PATIENT))
    circle = acquisition.surroundings.fov_circle
    if circle:
        inside = np.zeros(image.lobes.shape[:2], bool)
        ii, jj = np.indices(inside.shape)
        inside = ((ii - 31.5) / 32) ** 2 + ((jj - 31.5) / 32) ** 2 <= 1
        assert np.array_equal(image.lobes[inside], bare.lobes[inside]) and not image.lobes[~inside].any()
    else:
        assert np.array_equal(image.lobes, bare.lobes)


def test_contrast_brightens_blood_but_not_the_labels():
    from medseg.data.phantom.model import component_rng
    from medseg.data.phantom.tissues import sample_contrast

    rng = component_rng(0, "test")
    contrast = next(c for c in (sample_contrast(rng, 41.0, probability=1.0) for _ in range(50))
                    if c.phase == "arterial")
    cheap = dict(components=Components(pose=False, airways=False))
    plain = build_chest_model(12, **cheap)
    enhanced = build_chest_model(12, contrast=contrast, **cheap)
    assert {t.name: t.hu for t in enhanced.tubes}["aorta"] > 190
    grid = chest_grid(4.0)
    a, b = render(plain, grid, QUIET, quantize=False), render(enhanced, grid, QUIET, quantize=False)
    assert np.array_equal(a.lobes, b.lobes)
    assert b.hu[b.tissue == Tissue.BLOOD].mean() > 150 > a.hu[a.tissue == Tissue.BLOOD].mean()
    assert b.hu[b.tissue == Tissue.VESSEL].mean() > a.hu[a.tissue == Tissue.VESSEL].mean() + 40


def test_some_tumours_touch_the_pleura_or_a_fissure():
    cheap = Components(pose=False, vessels=False, airways=False)
    touching = [(seed, f) for seed in range(24) for f in build_chest_model(seed, findings=["nodule"],
                                                                            components=cheap).findings
                if f.kind == "nodule" and f.abuts]
    assert {f.abuts for _, f in touching} == {"pleura", "fissure"}
    seed, nodule = touching[0]
    model = build_chest_model(seed, findings=["nodule"], components=cheap)
    image = render(model, chest_grid(2.0), QUIET, quantize=False)
    index = np.rint((np.linalg.inv(image.affine) @ np.append(nodule.centre, 1.0))[:3]).astype(int)
    assert image.lobes[tuple(index)] == nodule.lobe
    tumour = ndimage.binary_dilation(np.isin(image.tissue, (Tissue.NODULE, Tissue.GROUND_GLASS)), iterations=2)
    assert np.any(tumour & (image.lobes != nodule.lobe))           # it reaches the border of its lobe
