"""Realism of synthetic chest CT phantoms against real chest CT: HU histograms, noise power, texture, surroundings.

    .venv/bin/python benchmarks/realism.py --out /tmp/realism/realism.md
        [--cases 4] [--seed 1] [--size 512] [--slices N] [--phantoms DIR] [--work DIR]

Real series: the four whole-thorax series of `/work/shared/realdata_cohorts/ct_lung_pet_ct_dx/` (SERIES.csv:
Philips 5 mm L (sharp) and B (soft), Siemens 8 mm B70f (sharp) and B40f (soft)) and the contrast CTA crop
`/work/shared/realdata/nifti/chest_cta_crop/ct_cropped.nii.gz` (1.5 mm). Phantoms: `synth_ct_dataset(seed,
cases, size)` generated into `--work` (or an existing dataset given with `--phantoms`).

Every volume is measured the same way, without labels:
- regions: lung = `medseg.infer.lungmask.lung_mask`, body = `body_mask`; on the in-plane smoothed image
  (Gaussian, 1 mm): fat = body & -150..-50 HU, soft tissue = body & 0..80 HU at least 5 mm from lung,
  bone = body & > 300 HU, outside air = not body & < -900 HU inside the reconstruction circle. Statistics
  are of the raw HU in each region.
- noise power spectrum: 2D NPS of square ROIs lying wholly in outside air (32 mm), fat (12 mm), soft tissue
  (24 mm) and lung (24 mm), each detrended by a fitted plane; radially averaged; reported as the peak
  frequency, the NPS-weighted mean frequency (cycles/mm) and the integral (its square root: noise SD, HU).
- lung texture: GLCM contrast and homogeneity (16 grey levels over -1000..-500 HU, distance ~1.5 mm, four
  directions) on 24 mm lung ROIs, and the mean local SD in a 5 mm window.
- lung shape (only where the scan holds the whole lung height): the gap between the two lungs (mm) at 50-80 %
  of the lung height, at the middle (50 %) and the anterior (85 %) of the lungs' front-back extent - how wide
  the mediastinum is, the cue a 2.5D lobe model reads the level from - and the height (0 base .. 1 apex)
  below which half of the lung volume lies.
- outside the body: dense objects (> -500 HU) not in the body below it (table) or beside it (arms, blankets),
  their HU, the reconstruction-circle padding (values outside the inscribed circle) and the sharpness of the
  skin-air edge (1000 HU over the median gradient across the body outline, mm; smaller = sharper kernel).

Writes the markdown table to `--out`, the histogram/NPS figure next to it (`<stem>.png`) and an axial
side-by-side montage (`<stem>_slices.png`), and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

REAL_COHORT = Path("/work/shared/realdata_cohorts/ct_lung_pet_ct_dx")
REAL_CTA = Path("/work/shared/realdata/nifti/chest_cta_crop/ct_cropped.nii.gz")
HIST_BINS = np.arange(-1100.0, 1505.0, 5.0)
FREQS = np.arange(0.0, 1.0001, 0.02)           # common radial frequency grid (cycles/mm)
TISSUES = ("lung", "fat", "soft", "bone", "air")
NPS_REGIONS = {"air": 32.0, "fat": 12.0, "soft": 24.0, "lung": 24.0}   # ROI side (mm)


@dataclass
class Series:
    name: str
    kind: str                      # "real" or "phantom"
    path: Path
    note: str = ""
    metrics: dict = field(default_factory=dict)
    hist: dict = field(default_factory=dict)
    nps: dict = field(default_factory=dict)
    views: list = field(default_factory=list)


def real_series() -> list[Series]:
    found = []
    table = REAL_COHORT / "SERIES.csv"
    if table.exists():
        for row in csv.DictReader(table.open()):
            name = f"real {row['manufacturer'][:7].lower()} {row['kernel']} {float(row['slice_thickness_mm']):g}mm"
            found.append(Series(name, "real", REAL_COHORT / row["series_dir"],
                                note=f"{row['patient_id']} kernel {row['kernel']}"))
    if REAL_CTA.exists():
        found.append(Series("real CTA crop 1.5mm", "real", REAL_CTA, note="contrast CTA, cropped"))
    return found


def phantom_series(folder: Path) -> list[Series]:
    found = []
    for case in sorted(p for p in folder.iterdir() if (p / "ct").is_dir()):
        summary = json.loads((case / "findings.json").read_text())
        acq = summary["acquisition"]
        kernel = acq.get("kernel", f"gauss{acq.get('kernel_sigma_mm', 0):.2f}")
        name = f"phantom {case.name} {kernel} {acq['slice_thickness']:.1f}mm"
        extras = {k: acq[k] for k in ("kernel", "table", "arms", "contrast", "fov_padding_hu") if k in acq}
        if "setting" in summary:
            extras.update({k: v for k, v in summary["setting"].items() if not isinstance(v, dict)})
        note = ", ".join(f"{k}={v}" for k, v in extras.items()) or f"noise {acq['noise_sd']:.0f}"
        found.append(Series(name, "phantom", case / "ct", note=note))
    return found


# --- measurements --------------------------------------------------------------------------------------------


def _smooth(hu: np.ndarray, pixel: tuple[float, float], sigma_mm: float = 1.0) -> np.ndarray:
    out = np.empty(hu.shape, np.float32)
    for k in range(hu.shape[2]):
        ndimage.gaussian_filter(hu[:, :, k], (sigma_mm / pixel[0], sigma_mm / pixel[1]), output=out[:, :, k])
    return out


def _circle(shape: tuple[int, int], shrink: float = 1.0) -> np.ndarray:
    ni, nj = shape
    i = np.arange(ni)[:, None] - (ni - 1) / 2
    j = np.arange(nj)[None, :] - (nj - 1) / 2
    return (i / (ni / 2)) ** 2 + (j / (nj / 2)) ** 2 <= shrink**2


def _roi_corners(mask2d: np.ndarray, side: int, rng: np.random.Generator, limit: int) -> list[tuple[int, int]]:
    """Top-left corners of side x side squares wholly inside mask2d (random, at most `limit`, little overlap)."""
    if mask2d.shape[0] < side or mask2d.shape[1] < side:
        return []
    cover = ndimage.uniform_filter(mask2d.astype(np.float32), size=side, mode="constant")
    offset = side // 2
    ok = cover[offset:mask2d.shape[0] - side + 1 + offset, offset:mask2d.shape[1] - side + 1 + offset] > 0.9999
    candidates = np.argwhere(ok)
    if not len(candidates):
        return []
    rng.shuffle(candidates)
    chosen = []
    for c in candidates:
        if all(abs(c[0] - a) >= side // 2 or abs(c[1] - b) >= side // 2 for a, b in chosen):
            chosen.append((int(c[0]), int(c[1])))
            if len(chosen) >= limit:
                break
    return chosen


def _detrend(roi: np.ndarray) -> np.ndarray:
    n0, n1 = roi.shape
    a, b = np.meshgrid(np.arange(n0) - (n0 - 1) / 2, np.arange(n1) - (n1 - 1) / 2, indexing="ij")
    design = np.stack([np.ones(roi.size), a.ravel(), b.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, roi.ravel(), rcond=None)
    return roi - (design @ coef).reshape(roi.shape)


def _radial_nps(rois: list[np.ndarray], pixel: tuple[float, float]) -> tuple[np.ndarray, float] | None:
    if len(rois) < 3:
        return None
    n = rois[0].shape[0]
    power = np.zeros((n, n))
    for roi in rois:
        power += np.abs(np.fft.fft2(_detrend(roi.astype(np.float64)))) ** 2
    nps2d = power / len(rois) * pixel[0] * pixel[1] / (n * n)
    fi = np.fft.fftfreq(n, pixel[0])
    fj = np.fft.fftfreq(n, pixel[1])
    radius = np.sqrt(fi[:, None] ** 2 + fj[None, :] ** 2)
    variance = float(nps2d.sum() / (n * n * pixel[0] * pixel[1]))          # integral over the 2D frequency plane
    step = 1.0 / (n * max(pixel))
    edges = np.arange(0.0, radius.max() + step, step)
    which = np.digitize(radius.ravel(), edges) - 1
    sums = np.bincount(which, nps2d.ravel(), minlength=len(edges))
    counts = np.bincount(which, minlength=len(edges))
    centres = (np.arange(len(edges)) + 0.5) * step
    valid = (counts > 0) & (centres <= 0.5 / max(pixel))
    curve = np.interp(FREQS, centres[valid], sums[valid] / counts[valid], left=np.nan, right=np.nan)
    curve[0.5 / max(pixel) < FREQS] = np.nan
    return curve, variance


def _nps_summary(curve: np.ndarray, variance: float) -> dict:
    ok = np.isfinite(curve) & (FREQS > 0)
    f, c = FREQS[ok], curve[ok]
    return {"peak_f": float(f[np.argmax(c)]), "mean_f": float((f * f * c).sum() / max((f * c).sum(), 1e-12)),
            "sd": float(np.sqrt(variance))}


def _glcm(rois: list[np.ndarray], distance: int) -> tuple[float, float]:
    from skimage.feature import graycomatrix, graycoprops

    contrast, homogeneity = [], []
    for roi in rois:
        levels = np.clip((roi.astype(np.float32) + 1000.0) / 500.0 * 16.0, 0, 15).astype(np.uint8)
        matrix = graycomatrix(levels, [distance], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=16,
                              symmetric=True, normed=True)
        contrast.append(float(graycoprops(matrix, "contrast").mean()))
        homogeneity.append(float(graycoprops(matrix, "homogeneity").mean()))
    if not contrast:
        return float("nan"), float("nan")
    return float(np.mean(contrast)), float(np.mean(homogeneity))


def measure(series: Series, rng_seed: int = 0) -> None:
    from medseg.infer.lungmask import body_mask, lung_mask
    from medseg.io import load_volume

    volume = load_volume(series.path)
    hu = np.asarray(volume.array, dtype=np.float32)
    affine = volume.affine
    pixel = tuple(float(v) for v in np.linalg.norm(affine[:3, :2], axis=0))
    slice_mm = float(np.linalg.norm(affine[:3, 2]))
    sides = lung_mask(volume)
    lung = sides > 0
    body = body_mask(volume)
    smooth = _smooth(hu, pixel)
    near_lung = np.zeros_like(lung)
    reach = (max(1, round(5.0 / pixel[0])), max(1, round(5.0 / pixel[1])))
    for k in range(hu.shape[2]):
        if lung[:, :, k].any():
            near_lung[:, :, k] = ndimage.maximum_filter(lung[:, :, k], size=(2 * reach[0] + 1, 2 * reach[1] + 1))
    regions = {
        "lung": lung,
        "fat": body & ~lung & (smooth >= -150) & (smooth <= -50),
        "soft": body & ~near_lung & (smooth >= 0) & (smooth <= 80),
        "bone": body & (smooth > 300),
        "air": ~body & (smooth < -900) & _circle(hu.shape[:2], 0.97)[:, :, None],
    }
    m = series.metrics
    m["matrix"] = f"{hu.shape[0]}x{hu.shape[1]}x{hu.shape[2]}"
    m["pixel_mm"] = pixel[0]
    m["slice_mm"] = slice_mm
    for name, mask in regions.items():
        values = hu[mask]
        if values.size < 100:
            continue
        series.hist[name] = np.histogram(np.clip(values, HIST_BINS[0], HIST_BINS[-1] - 1), HIST_BINS,
                                         density=True)[0]
        p = np.percentile(values, [5, 50, 95])
        m[f"{name}_mean"], m[f"{name}_sd"] = float(values.mean()), float(values.std())
        m[f"{name}_p5"], m[f"{name}_p50"], m[f"{name}_p95"] = (float(v) for v in p)
    m["lung_laa950"] = float(np.mean(hu[lung] < -950) * 100) if lung.any() else float("nan")
    m["body_contrast_150_400"] = float(np.mean((smooth[body & ~lung] > 150) & (smooth[body & ~lung] < 400)) * 100)

    # noise power spectra and lung texture on up to 40 slices through the lungs
    rng = np.random.default_rng(rng_seed)
    lung_slices = np.flatnonzero(lung.any(axis=(0, 1)))
    pool = lung_slices if len(lung_slices) else np.arange(hu.shape[2])
    picked = pool[np.linspace(0, len(pool) - 1, min(40, len(pool))).astype(int)]
    rois: dict[str, list[np.ndarray]] = {name: [] for name in NPS_REGIONS}
    for name, side_mm in NPS_REGIONS.items():
        side = max(8, round(side_mm / pixel[0]))
        per_slice = max(2, 240 // max(1, len(picked)))
        for k in picked:
            for a, b in _roi_corners(regions[name][:, :, k], side, rng, per_slice):
                rois[name].append(hu[a:a + side, b:b + side, k])
    for name, items in rois.items():
        m[f"nps_{name}_rois"] = len(items)
        result = _radial_nps(items, pixel)
        if result is not None:
            series.nps[name] = result[0]
            for key, value in _nps_summary(*result).items():
                m[f"nps_{name}_{key}"] = value
    distance = max(1, round(1.5 / pixel[0]))
    m["glcm_contrast"], m["glcm_homogeneity"] = _glcm(rois["lung"], distance)
    window = max(3, round(5.0 / pixel[0]))
    local = []
    for k in picked:
        plane = hu[:, :, k].astype(np.float64)
        mean = ndimage.uniform_filter(plane, window)
        sd = np.sqrt(np.maximum(ndimage.uniform_filter(plane * plane, window) - mean * mean, 0))
        inner = ndimage.binary_erosion(lung[:, :, k], iterations=window)
        if inner.any():
            local.append(sd[inner])
    m["lung_local_sd5mm"] = float(np.median(np.concatenate(local))) if local else float("nan")

    _lung_shape(sides, affine, m)
    # outside the body: table below it, other objects beside it, padding, edge undershoot
    _surroundings(hu, smooth, body, affine, m)
    series.views = _views(hu, lung, affine)


SHAPE_HEIGHTS = (0.5, 0.6, 0.7, 0.8)


def _lung_shape(sides: np.ndarray, affine: np.ndarray, m: dict) -> None:
    """Mediastinal gap between the lungs by height (mm) and the half-volume height, in RAS orientation."""
    import nibabel as nib

    from medseg.infer.lungmask import LEFT_LUNG, RIGHT_LUNG
    from medseg.transforms.position import covers_lung_height

    if not covers_lung_height(sides > 0, affine):
        return
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(sides, dtype=np.uint8), affine))
    labels = np.asarray(image.dataobj)
    x_mm = float(image.header.get_zooms()[0])
    right, left = labels == RIGHT_LUNG, labels == LEFT_LUNG
    lung = right | left
    zs = np.flatnonzero(lung.any(axis=(0, 1)))
    z0, z1 = zs[0], zs[-1]
    profile = lung.sum(axis=(0, 1))[z0:z1 + 1].astype(float)
    m["half_volume_height"] = float(np.interp(0.5, np.cumsum(profile) / profile.sum(),
                                              np.linspace(0.0, 1.0, len(profile))))
    for height in SHAPE_HEIGHTS:
        z = round(z0 + height * (z1 - z0))
        ys = np.flatnonzero(lung[:, :, z].any(axis=0))
        for name, depth in (("mid", 0.5), ("front", 0.85)):
            y = round(ys[0] + depth * (ys[-1] - ys[0]))
            xr, xl = np.flatnonzero(right[:, y, z]), np.flatnonzero(left[:, y, z])
            if xr.size and xl.size:   # RAS: x grows towards the patient's right
                m[f"gap_{name}_{int(height * 100)}"] = float((xr.min() - xl.max()) * x_mm)


def _surroundings(hu: np.ndarray, smooth: np.ndarray, body: np.ndarray, affine: np.ndarray, m: dict) -> None:
    ni, nj, nk = hu.shape
    world_y = affine[1, 0] * np.arange(ni)[:, None] + affine[1, 1] * np.arange(nj)[None, :] + affine[1, 3]
    circle = _circle((ni, nj))
    table_slices, table_values, other_area, table_gap = 0, [], [], []
    below_area = []
    pixel_area = float(abs(np.linalg.det(affine[:2, :2])))
    used = 0
    for k in range(0, nk, max(1, nk // 30)):
        b = body[:, :, k]
        if b.sum() < 1000:
            continue
        used += 1
        y_body = world_y[b]
        low, high = float(y_body.min()), float(y_body.max())
        dense = ~b & (smooth[:, :, k] > -500) & circle
        below = dense & (world_y < low + 0.25 * (high - low))
        below &= ~ndimage.binary_dilation(b, iterations=2)
        area = below.sum() * pixel_area
        below_area.append(area)
        if area > 300.0:                               # mm^2
            table_slices += 1
            table_values.append(hu[:, :, k][below])
            table_gap.append(low - float(world_y[below].max()) if (world_y[below] < low).any() else 0.0)
        other_area.append((dense & ~below).sum() * pixel_area)
    m["table_slices_pct"] = 100.0 * table_slices / max(used, 1)
    m["table_area_cm2"] = float(np.median(below_area) / 100) if below_area else 0.0
    if table_values:
        values = np.concatenate(table_values)
        m["table_hu_p50"], m["table_hu_p95"] = (float(v) for v in np.percentile(values, [50, 95]))
        m["table_gap_mm"] = float(np.median(table_gap))
    m["beside_area_cm2"] = float(np.median(other_area) / 100) if other_area else 0.0
    outside_circle = ~circle
    corner = hu[outside_circle]
    m["pad_min"] = float(corner.min()) if corner.size else float("nan")
    m["pad_frac_at_min"] = float(np.mean(corner == corner.min())) if corner.size else float("nan")
    m["pad_p50"] = float(np.median(corner)) if corner.size else float("nan")
    # sharpness of the skin-air edge: median gradient across the body outline -> width of a 1000 HU rise
    pixel = tuple(float(v) for v in np.linalg.norm(affine[:3, :2], axis=0))
    gradients = []
    for k in range(0, nk, max(1, nk // 15)):
        b = body[:, :, k]
        if b.sum() < 1000:
            continue
        outline = b & ~ndimage.binary_erosion(b)
        clear = ndimage.binary_erosion((smooth[:, :, k] < -900) | b, iterations=max(1, round(4.0 / pixel[0])))
        outline &= ndimage.binary_dilation(clear, iterations=max(1, round(6.0 / pixel[0])))
        if outline.sum() < 50:
            continue
        plane = ndimage.gaussian_filter(hu[:, :, k].astype(np.float32), (0.5 / pixel[0], 0.5 / pixel[1]))
        gi = ndimage.sobel(plane, 0) / (8 * pixel[0])
        gj = ndimage.sobel(plane, 1) / (8 * pixel[1])
        magnitude = ndimage.maximum_filter(np.hypot(gi, gj), size=3)
        gradients.append(magnitude[outline])
    m["skin_edge_mm"] = float(1000.0 / np.median(np.concatenate(gradients))) if gradients else float("nan")


def _views(hu: np.ndarray, lung: np.ndarray, affine: np.ndarray) -> list[np.ndarray]:
    area = lung.sum(axis=(0, 1))
    if not area.any():
        return [hu[:, :, hu.shape[2] // 2]]
    lung_slices = np.flatnonzero(area > 0)
    superior = np.sign(affine[2, 2]) >= 0
    biggest = int(np.argmax(area))
    upper = [k for k in lung_slices if (k > biggest) == superior and area[k] < 0.35 * area.max()]
    upper_k = (max(upper) if not superior else min(upper)) if upper else biggest
    upper_k = int(np.clip(upper_k, 0, hu.shape[2] - 1))
    return [np.asarray(hu[:, :, upper_k]), np.asarray(hu[:, :, biggest])]


# --- output --------------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


TABLES = [
    ("Acquisition and surroundings", [
        ("matrix", "matrix", 0), ("pixel mm", "pixel_mm", 3), ("slice mm", "slice_mm", 2),
        ("table % slices", "table_slices_pct", 0), ("table cm²", "table_area_cm2", 0),
        ("table HU p50", "table_hu_p50", 0), ("table HU p95", "table_hu_p95", 0), ("table gap mm", "table_gap_mm", 0),
        ("beside body cm²", "beside_area_cm2", 0), ("pad min HU", "pad_min", 0),
        ("pad % at min", "pad_frac_at_min", 2), ("skin edge mm", "skin_edge_mm", 2)]),
    ("HU by tissue (raw HU in regions found on the 1 mm smoothed image)", [
        ("lung mean", "lung_mean", 0), ("lung SD", "lung_sd", 0), ("lung p5", "lung_p5", 0),
        ("lung p95", "lung_p95", 0), ("LAA-950 %", "lung_laa950", 1),
        ("fat mean", "fat_mean", 0), ("fat SD", "fat_sd", 0), ("soft mean", "soft_mean", 0), ("soft SD", "soft_sd", 0),
        ("bone p50", "bone_p50", 0), ("bone p95", "bone_p95", 0), ("air mean", "air_mean", 0), ("air SD", "air_sd", 1),
        ("body 150-400 HU %", "body_contrast_150_400", 1)]),
    ("Noise power spectra (peak / mean frequency in cycles/mm, SD = sqrt of the integral, HU)", [
        (f"{r} {label}", f"nps_{r}_{key}", d) for r in ("air", "fat", "soft", "lung")
        for label, key, d in (("peak f", "peak_f", 2), ("mean f", "mean_f", 2), ("SD", "sd", 1))]),
    ("Lung shape (mediastinal gap between the lungs, mm, at % of the lung height; middle / front of the lungs)", [
        *[(f"gap {label} {int(h * 100)} %", f"gap_{key}_{int(h * 100)}", 0) for h in SHAPE_HEIGHTS
          for label, key in (("mid", "mid"), ("front", "front"))],
        ("half-volume height", "half_volume_height", 2)]),
    ("Lung texture", [
        ("GLCM contrast", "glcm_contrast", 2), ("GLCM homogeneity", "glcm_homogeneity", 3),
        ("local SD 5 mm", "lung_local_sd5mm", 0), ("lung ROIs", "nps_lung_rois", 0)]),
]

GAP_KEYS = ["table_slices_pct", "table_hu_p50", "pad_min", "skin_edge_mm", "lung_mean", "lung_sd", "fat_mean",
            "fat_sd", "soft_sd", "bone_p95", "air_sd", "body_contrast_150_400", "nps_air_peak_f", "nps_air_mean_f",
            "nps_fat_mean_f", "nps_soft_peak_f", "nps_soft_mean_f", "nps_soft_sd", "nps_lung_mean_f",
            "glcm_contrast", "glcm_homogeneity", "lung_local_sd5mm", "gap_mid_60", "gap_front_60", "gap_mid_70",
            "gap_front_70", "half_volume_height"]


def markdown(series: list[Series], header: str) -> str:
    lines = [header, ""]
    for title, columns in TABLES:
        lines += [f"### {title}", "", "| series | " + " | ".join(c[0] for c in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for s in series:
            lines.append(f"| {s.name} | " + " | ".join(_fmt(s.metrics.get(key), d) for _, key, d in columns) + " |")
        lines.append("")
    lines += ["### Gaps: real range vs phantom range (whole-thorax real series; CTA crop excluded)", "",
              "| metric | real min..max | phantom min..max | overlap |", "|---|---:|---:|---|"]
    real = [s for s in series if s.kind == "real" and "CTA" not in s.name]
    phantoms = [s for s in series if s.kind == "phantom"]
    for key in GAP_KEYS:
        rv = [s.metrics[key] for s in real if np.isfinite(s.metrics.get(key, np.nan))]
        pv = [s.metrics[key] for s in phantoms if np.isfinite(s.metrics.get(key, np.nan))]
        if not rv or not pv:
            continue
        overlap = "yes" if min(pv) <= max(rv) and max(pv) >= min(rv) else "NO"
        lines.append(f"| {key} | {min(rv):.2f}..{max(rv):.2f} | {min(pv):.2f}..{max(pv):.2f} | {overlap} |")
    lines += ["", "Series notes:", ""] + [f"- {s.name}: {s.note}" for s in series]
    return "\n".join(lines) + "\n"


def figure(series: list[Series], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("hist", t) for t in TISSUES] + [("nps", r) for r in NPS_REGIONS]
    fig, axes = plt.subplots(2, 5, figsize=(26, 10))
    centres = 0.5 * (HIST_BINS[1:] + HIST_BINS[:-1])
    ranges = {"lung": (-1050, -500), "fat": (-200, 0), "soft": (-60, 140), "bone": (250, 1500), "air": (-1100, -850)}
    cmap_real = plt.get_cmap("autumn")
    cmap_ph = plt.get_cmap("winter")
    reals = [s for s in series if s.kind == "real"]
    phs = [s for s in series if s.kind == "phantom"]

    def style(s):
        if s.kind == "real":
            n = reals.index(s)
            return {"color": cmap_real(n / max(1, len(reals))), "lw": 2.2, "ls": "-"}
        n = phs.index(s)
        return {"color": cmap_ph(n / max(1, len(phs))), "lw": 1.2, "ls": "--"}

    for ax, (kind, name) in zip(axes.ravel(), panels, strict=False):
        for s in series:
            if kind == "hist" and name in s.hist:
                ax.plot(centres, s.hist[name], label=s.name, **style(s))
            elif kind == "nps" and name in s.nps:
                ax.plot(FREQS, s.nps[name] / np.nanmax(s.nps[name]), label=s.name, **style(s))
        if kind == "hist":
            ax.set_xlim(*ranges[name])
            ax.set_title(f"HU histogram: {name}")
            ax.set_xlabel("HU")
        else:
            ax.set_xlim(0, 0.9)
            ax.set_title(f"NPS (peak-normalised): {name}")
            ax.set_xlabel("cycles/mm")
    axes[0, 0].legend(fontsize=7)
    axes[1, -1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def slice_montage(series: list[Series], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(series)
    fig, axes = plt.subplots(3, cols, figsize=(4.2 * cols, 12.6))
    axes = np.atleast_2d(axes).reshape(3, cols)
    for c, s in enumerate(series):
        views = s.views + [s.views[-1]] * (2 - len(s.views))
        for r, view in enumerate(views[:2]):
            axes[r, c].imshow(view.T, cmap="gray", vmin=-1000, vmax=400)
            axes[r, c].set_title(s.name, fontsize=8)
        view = views[1]
        ni, nj = view.shape
        side = int(min(ni, nj) * 0.35)
        i0, j0 = (ni - side) // 2, (nj - side) // 2 + side // 3
        axes[2, c].imshow(view[i0:i0 + side, j0:j0 + side].T, cmap="gray", vmin=-160, vmax=240)
        axes[2, c].set_title("zoom, W400 L40", fontsize=8)
        for r in range(3):
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table path (figures next to it)")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=None)
    parser.add_argument("--phantoms", type=Path, default=None, help="an existing `medseg synth ct` folder")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    from medseg.data.phantom.ct_case import synth_ct_dataset

    args.out.parent.mkdir(parents=True, exist_ok=True)
    folder = args.phantoms
    synth_seconds = None
    if folder is None:
        work = args.work or Path(tempfile.mkdtemp(prefix="medseg_realism_"))
        folder = work / f"phantoms_seed{args.seed}_n{args.cases}_size{args.size}"
        start = time.perf_counter()
        synth_ct_dataset(folder, cases=args.cases, seed=args.seed, size=args.size, slices=args.slices)
        synth_seconds = time.perf_counter() - start
    series = real_series() + phantom_series(folder)
    for n, s in enumerate(series):
        start = time.perf_counter()
        measure(s, rng_seed=n)
        print(f"measured {s.name} in {time.perf_counter() - start:.1f} s", flush=True)
    header = (f"## Phantom realism vs real chest CT ({time.strftime('%Y-%m-%d %H:%M')})\n\n"
              f"Phantoms: `{folder}` ({len(series) - len(real_series())} cases"
              + (f", synthesised in {synth_seconds:.0f} s" if synth_seconds else "") + "). "
              f"Command: `.venv/bin/python benchmarks/realism.py --out {args.out} --cases {args.cases} "
              f"--seed {args.seed} --size {args.size}`")
    text = markdown(series, header)
    args.out.write_text(text)
    stem = args.out.with_suffix("")
    figure(series, stem.with_suffix(".png"))
    slice_montage(series, Path(f"{stem}_slices.png"))
    print(text)
    print(f"figures: {stem.with_suffix('.png')}, {stem}_slices.png")


if __name__ == "__main__":
    main()
