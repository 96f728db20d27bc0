"""Image a `ChestModel` on a voxel grid: slice-wise anatomy, painted trees and findings, surroundings, scanner.

Partial volume across thick slices is simulated by rendering sub-planes within the slice sensitivity profile
(a trapezoid whose full width at half maximum is the slice thickness) and taking their weighted mean.

Two scanner models: with `ScannerSettings.kernel` None (radiographs, tests) the reconstruction kernel is an
in-plane Gaussian blur applied together with white noise. With a `Kernel` (synthetic CT cases) the image is
filtered with the kernel's modulation transfer (sharp kernels overshoot at edges) and the noise is shaped
like filtered back-projection noise, NPS(f) ~ f * window(f)^2 (sharp kernels: fine high-frequency grain;
soft kernels: blotchy low-frequency mottle), its amplitude following the attenuation along the rays through
each pixel; `artifacts` adds photon-starvation streaks and beam-hardening dark bands between dense bones.

`Surroundings` are what real scans show around the patient: the curved table and its mattress, arms beside
the chest, blankets and clothing folds, ECG electrodes and leads, and the reconstruction circle with
padding outside it. None of it is ever labelled lung; lobe labels outside the reconstruction circle are 0.
Labels are those of the slice centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from medseg.data.phantom.fields import SmoothField
from medseg.data.phantom.model import ChestModel, component_rng
from medseg.data.phantom.shapes import body_outline, evaluate_points
from medseg.data.phantom.tissues import NOT_PATIENT, Tissue
from medseg.data.phantom.trees import Segments
from medseg.data.phantom.tubes import PaintTarget, fill_painter, paint_capsules, splat_segments
from medseg.labels import label_map

__all__ = ["KERNELS", "Blanket", "Grid", "Kernel", "Limb", "PhantomImage", "ScannerSettings", "Surroundings", "Table",
           "render"]

_SUB_PLANE_MM = 1.6
_THIN_SLICE_MM = 2.0
_MU_WATER = 0.019          # linear attenuation of water at ~70 keV effective energy (1/mm)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (i, j, k), voxel-to-scanner-RAS affine, slice thickness along k (mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    slice_thickness: float | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel: apodisation window exp(-(f/cutoff)^order) * (1 + boost (f/cutoff)^2).

    `boost` > 0 lifts mid frequencies above 1 (edge enhancement: overshoot and undershoot at edges);
    `iterative` (0..1) mimics iterative reconstruction: noise loses its high frequencies (blotchier).
    """

    name: str
    sharpness: str                 # "soft", "medium" or "sharp"
    cutoff: float                  # cycles/mm
    order: float
    boost: float = 0.0
    iterative: float = 0.0

    def window(self, f: np.ndarray) -> np.ndarray:
        r = f / self.cutoff
        return np.exp(-(r**self.order)) * (1.0 + self.boost * r * r)


KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("B30f", "soft", 0.38, 3.0),
    Kernel("B40f", "soft", 0.45, 3.0, 0.05),
    Kernel("B", "soft", 0.40, 3.0),
    Kernel("STANDARD", "soft", 0.46, 3.0, 0.05),
    Kernel("B50f", "medium", 0.58, 3.0, 0.2),
    Kernel("C", "medium", 0.55, 3.0, 0.15),
    Kernel("B60f", "sharp", 0.74, 4.0, 0.6),
    Kernel("B70f", "sharp", 0.86, 4.0, 0.9),
    Kernel("L", "sharp", 0.78, 4.0, 1.0),
    Kernel("LUNG", "sharp", 0.80, 4.0, 0.7),
)}
"""Vendor-style kernels: Siemens B30f-B70f, Philips B/C/L, GE STANDARD/LUNG. Cut-offs are tuned so that the
NPS-weighted mean frequency matches the real series in benchmarks/realism.py (B ~0.28, B40f ~0.32, L ~0.43,
B70f ~0.55 cycles/mm)."""

_SOFT_TEXTURED = np.zeros(256, dtype=bool)
_SOFT_TEXTURED[[Tissue.FAT, Tissue.MUSCLE, Tissue.LIVER, Tissue.SPLEEN, Tissue.BOWEL]] = True


@dataclass(frozen=True)
class Table:
    """The scanner table in scanner coordinates (RAS mm), constant along z, with its mattress on top."""

    kind: str                      # "shell" (carbon-fibre sandwich) or "slab" (solid plate on a support base)
    top_y: float                   # y of the top surface on the centre line (RAS: posterior is -y)
    centre_x: float
    half_width: float
    thickness: float
    curvature: float               # 1/mm: the top rises by curvature * u^2 / 2 at u mm from the centre line
    skin: float                    # shell skin thickness (mm)
    skin_hu: float
    core_hu: float
    pad_thickness: float = 0.0     # mattress (mm), 0 = none
    pad_hu: float = -850.0
    base_gap: float = 0.0          # support structure this far below the plate (mm), 0 = none
    base_height: float = 0.0
    base_half_width: float = 0.0
    base_hu: float = 800.0


@dataclass(frozen=True)
class Limb:
    """An arm segment beside the chest (body frame, mm): a capsule of skin, fat, muscle and a long bone."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float
    fat: float
    bone_radius: float
    cortex: float


@dataclass(frozen=True)
class Blanket:
    """A blanket or clothing fold draped over the front of the body: `offset` mm off the skin, wavy."""

    offset: float
    thickness: float
    hu: float
    theta: tuple[float, float]     # angular range (radians from the patient's right towards anterior)
    waves: tuple[tuple[float, float, float, float], ...]   # (amplitude mm, cycles per radian, per mm of z, phase)


@dataclass(frozen=True)
class Surroundings:
    """What a real scan shows besides the patient's chest (see the module docstring)."""

    table: Table | None = None
    arms: tuple[Limb, ...] = ()
    blankets: tuple[Blanket, ...] = ()
    electrodes: tuple[tuple[float, float, float], ...] = ()      # body frame, on the skin
    leads: tuple[tuple[tuple[float, float, float], ...], ...] = ()   # cable polylines, body frame
    lead_hu: float = 600.0
    fov_circle: bool = False       # only the circle inscribed in the matrix is reconstructed
    padding_hu: int = -1024        # stored outside that circle

    def describe(self) -> dict[str, Any]:
        table = None if self.table is None else {
            key: round(v, 2) if isinstance(v, float) else v for key, v in asdict(self.table).items()}
        return {"table": table, "arms_beside_chest": len(self.arms) // 2, "blankets": len(self.blankets),
                "ecg_electrodes": len(self.electrodes), "fov_circle": self.fov_circle,
                "padding_hu": self.padding_hu}


@dataclass(frozen=True)
class ScannerSettings:
    """Image quality: noise SD in HU (soft tissue, after the kernel) and the reconstruction model.

    `kernel` None: in-plane Gaussian blur of `kernel_sigma_mm` applied to image and white noise (the simple
    model). With a `Kernel`, `kernel_sigma_mm` is the system blur of the image before the kernel, the noise is
    FBP-shaped, and `artifacts` (streaks, beam hardening, attenuation-dependent noise) and `streak_strength`
    apply; `surroundings` are drawn in either model.
    """

    noise_sd: float = 20.0
    kernel_sigma_mm: float = 0.4
    kernel: Kernel | None = None
    artifacts: bool = True
    streak_strength: float = 1.0
    beam_hardening: float = 1.0
    surroundings: Surroundings | None = None


@dataclass
class PhantomImage:
    """A rendered phantom: HU (int16), lobe labels 0-5, lung labels (1 right, 2 left), tissue codes."""

    hu: np.ndarray
    lobes: np.ndarray
    lungs: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[int, int], None]


def _slice_profile(grid: Grid, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sub-plane positions (mm along k, an odd count, centre included) and weights (sum 1) of a slice.

    The weights follow a trapezoidal slice sensitivity profile, flat over +-0.3 x thickness and falling to
    zero at +-0.7 x thickness (full width at half maximum = the thickness): a thick slice is the weighted
    mean of the thin planes within it.
    """
    thickness = grid.slice_thickness or grid.spacing[2]
    if not enabled or thickness <= _THIN_SLICE_MM:   # thin slices: the in-plane kernel dominates
        return np.zeros(1), np.ones(1)
    count = 2 * math.ceil((1.4 * thickness / _SUB_PLANE_MM - 1) / 2) + 1
    offsets = np.linspace(-0.7 * thickness, 0.7 * thickness, count + 2)[1:-1]
    weights = np.clip((0.7 * thickness - np.abs(offsets)) / (0.4 * thickness), 0.0, 1.0)
    return offsets, weights / weights.sum()


def _fields(model: ChestModel, grid: Grid) -> tuple[SmoothField, SmoothField | None]:
    rng = component_rng(model.seed, "texture")
    texture = SmoothField(rng, grid.shape, grid.spacing, 18.0)
    needs_patches = any(f.kind in ("emphysema", "consolidation") for f in model.diffuse_findings())
    patches = SmoothField(rng, grid.shape, grid.spacing, 14.0) if needs_patches else None
    return texture, patches


def _render_planes(model: ChestModel, shape: tuple[int, int, int], affine: np.ndarray,
                   fields: tuple, k_shift: float, progress: ProgressCallback | None, done: int, total: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate every slice of a regular grid, then paint tubes, trees and round findings.

    Arrays are stored slice-major, (k, i, j) in memory, and returned as (i, j, k) views.
    """
    body_from_voxel = model.pose.body_from_world() @ affine
    m = body_from_voxel.astype(np.float32)
    ni, nj, nk = shape
    i = np.arange(ni, dtype=np.float32)[:, None]
    j = np.arange(nj, dtype=np.float32)[None, :]
    hu = np.empty((nk, ni, nj), dtype=np.float32)
    tissue = np.empty((nk, ni, nj), dtype=np.uint8)
    lobe = np.empty((nk, ni, nj), dtype=np.uint8)
    texture_field, patch_field = fields
    for k in range(nk):
        x, y, z = (m[c, 0] * i + m[c, 1] * j + (m[c, 2] * k + m[c, 3]) for c in range(3))
        texture = np.float32(14.0) * texture_field.slice(k + k_shift)
        patches = patch_field.slice(k + k_shift) if patch_field is not None else 0.0
        labels = evaluate_points(model, x, y, z, texture, patches)
        hu[k], tissue[k], lobe[k] = labels.hu, labels.tissue, labels.lobe
        if progress is not None:
            progress(done + k + 1, total)
    views = tuple(a.transpose(1, 2, 0) for a in (hu, tissue, lobe))
    target = PaintTarget(hu=views[0], tissue=views[1], lobe=views[2], body_from_voxel=body_from_voxel)
    _paint_structures(model, target)
    return views


def _soft_tissue_texture(model: ChestModel, grid: Grid, hu: np.ndarray, tissue: np.ndarray) -> None:
    """Fine mottle of fat and solid organs (septa, small vessels, fibre bundles): a 5 mm field of a few HU."""
    rng = component_rng(model.seed, "soft_texture")
    amplitude = np.float32(rng.uniform(4.0, 9.0))
    field = SmoothField(rng, grid.shape, grid.spacing, 5.0)
    for k in range(grid.shape[2]):
        plane = _flat(hu[:, :, k])
        where = np.flatnonzero(_SOFT_TEXTURED[_flat(tissue[:, :, k])])
        if where.size:
            plane[where] += amplitude * field.slice(k).reshape(-1)[where]


def _paint_structures(model: ChestModel, target: PaintTarget) -> None:
    for tube in model.tubes:
        if tube.tissue in (Tissue.AIRWAY_AIR, Tissue.AIRWAY_WALL) and not model.components.airways:
            continue
        paint_capsules(target, tube.segments(), fill_painter(tube.tissue, tube.hu, clear_lobe=True))
    components = model.components
    if components.vessels:
        explicit = max(0.8, 0.9 * float(target.spacing[:2].min()))
        contrast = model.contrast
        for tree, value in ((model.arteries, contrast.pulmonary_artery if contrast else model.hu.blood),
                            (model.veins, contrast.pulmonary_vein if contrast else model.hu.blood)):
            if tree is None:
                continue
            thick = tree.radius >= explicit
            paint_capsules(target, tree.where(thick), fill_painter(Tissue.VESSEL, value, only_lung=True))
            splat_segments(target, tree.where(~thick), value)
    if components.airways and model.airway_walls is not None:
        paint_capsules(target, model.airway_walls, fill_painter(Tissue.AIRWAY_WALL, 20.0, keep_lobe_only=True))
        paint_capsules(target, model.airway_lumens,
                       fill_painter(Tissue.AIRWAY_AIR, -1000.0, keep_lobe_only=True))
    for sphere in model.spheres():
        ball = Segments(np.array([sphere.centre]), np.array([sphere.centre]), np.array([sphere.radius]))
        paint_capsules(target, ball, fill_painter(sphere.tissue, sphere.hu, keep_lobe_only=True))


def _shifted(affine: np.ndarray, offset_mm: float) -> np.ndarray:
    shifted = affine.copy()
    step = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    shifted[:3, 3] = affine[:3, 3] + step * offset_mm
    return shifted


def _kernel_noise_gain(sigma_px: tuple[float, float]) -> float:
    """How much the in-plane Gaussian kernel scales the SD of white noise."""
    impulse = np.zeros((41, 41), dtype=np.float64)
    impulse[20, 20] = 1.0
    response = ndimage.gaussian_filter(impulse, sigma_px)
    return float(np.sqrt((response**2).sum()))


def _gaussian_scanner(model: ChestModel, grid: Grid, hu: np.ndarray, scanner: ScannerSettings) -> None:
    """The simple model: white noise and an in-plane Gaussian blur, in place (`hu` is slice-major)."""
    components = model.components
    sigma_px = tuple(scanner.kernel_sigma_mm / s for s in grid.spacing[:2])
    blur = components.blur and scanner.kernel_sigma_mm > 0
    noise = components.noise and scanner.noise_sd > 0
    rng = component_rng(model.seed, "noise")
    scale = np.float32(scanner.noise_sd / (_kernel_noise_gain(sigma_px) if blur else 1.0) * math.sqrt(12.0))
    for plane in hu:
        if noise:
            plane += (rng.random(plane.shape, dtype=np.float32) - np.float32(0.5)) * scale
        if blur:
            ndimage.gaussian_filter(plane, sigma_px, output=plane)


@dataclass
class _KernelFilters:
    transfer: np.ndarray           # image transfer on the rfft2 grid
    noise: np.ndarray              # noise shaping on the rfft2 grid, scaled to unit output SD


def _kernel_filters(kernel: Kernel, shape: tuple[int, int], spacing: tuple[float, float], system_sigma: float,
                    blur: bool) -> _KernelFilters:
    ni, nj = shape
    fi = np.fft.fftfreq(ni, spacing[0])[:, None]
    fj = np.fft.rfftfreq(nj, spacing[1])[None, :]
    f = np.sqrt(fi * fi + fj * fj)
    window = kernel.window(f)
    transfer = window * np.exp(-2.0 * np.pi**2 * system_sigma**2 * f * f) if blur else np.ones_like(f)
    shaping = np.sqrt(np.sqrt(f * f + 0.02**2)) * window        # FBP: NPS ~ |f| window^2
    if kernel.iterative > 0:
        shaping = shaping * np.exp(-kernel.iterative * (f / 0.32) ** 2)
    # output variance of irfft2(X * shaping) with E|X|^2 = ni * nj per bin: Parseval over the full plane
    multiplicity = np.full(fj.shape, 2.0)
    multiplicity[0, 0] = 1.0
    if nj % 2 == 0:
        multiplicity[0, -1] = 1.0
    variance = float((multiplicity * shaping**2).sum()) / (ni * nj)
    noise = shaping / math.sqrt(variance)
    return _KernelFilters(transfer.astype(np.complex64), noise.astype(np.float32))


def _kernel_scanner(model: ChestModel, grid: Grid, hu: np.ndarray, scanner: ScannerSettings,
                    tissue: np.ndarray) -> dict[str, float]:
    """Kernel blur, FBP-shaped noise and (optionally) attenuation-dependent noise, streaks and beam hardening.

    `hu` is slice-major (k, i, j) and changed in place; `tissue` (k, i, j) tells the patient from the rest
    (the noise SD is `noise_sd` on average over the patient). Returns a few numbers for the case summary.
    """
    components = model.components
    kernel = scanner.kernel
    assert kernel is not None
    _, ni, nj = hu.shape
    spacing = grid.spacing[:2]
    blur = components.blur
    noise = components.noise and scanner.noise_sd > 0
    artifacts = scanner.artifacts and components.artifacts
    filters = _kernel_filters(kernel, (ni, nj), spacing, scanner.kernel_sigma_mm, blur)
    rng = component_rng(model.seed, "noise")
    scale = math.sqrt(ni * nj / 2.0)
    sd = np.float32(scanner.noise_sd)
    bh_scale = np.float32(0.04 * scanner.beam_hardening)
    worst_streak, worst_bh = 0.0, 0.0
    for k, plane in enumerate(hu):
        amplitude = None
        extra_rows = extra_cols = None
        if artifacts:
            mu = np.maximum(plane * np.float32(_MU_WATER / 1000.0) + np.float32(_MU_WATER), 0.0)
            path_i = mu.sum(axis=0) * np.float32(spacing[0])        # rays along i, one per j
            path_j = mu.sum(axis=1) * np.float32(spacing[1])        # rays along j, one per i
            patient = ~_NOT_PATIENT[tissue[k]]
            if noise:
                amplitude, extra_rows, extra_cols, streak = _noise_geometry(
                    path_i, path_j, patient, rng, scanner.streak_strength)
                worst_streak = max(worst_streak, streak)
            if scanner.beam_hardening > 0:
                worst_bh = max(worst_bh, _beam_hardening(plane, patient, spacing, bh_scale))
        spectrum = sfft.rfft2(plane) if blur else None
        if spectrum is not None:
            spectrum *= filters.transfer
            plane[:] = sfft.irfft2(spectrum, s=(ni, nj))
        if noise:
            coefficients = np.empty((ni, nj // 2 + 1), dtype=np.complex64)
            draws = rng.standard_normal((2, ni, nj // 2 + 1), dtype=np.float32)
            coefficients.real, coefficients.imag = draws[0], draws[1]
            coefficients *= np.float32(scale)
            if extra_rows is not None:           # a streak constant along i lives on frequency row fi = 0
                coefficients[0, :] += sfft.rfft(extra_rows) * np.float32(ni)
                coefficients[:, 0] += sfft.fft(extra_cols) * np.float32(nj)
            coefficients *= filters.noise
            field = sfft.irfft2(coefficients, s=(ni, nj)).astype(np.float32)
            if amplitude is not None:
                field *= amplitude
            field *= sd
            plane += field
    return {"streak_max": round(worst_streak, 2), "beam_hardening_max_hu": round(worst_bh, 1)}


def _noise_geometry(path_i: np.ndarray, path_j: np.ndarray, body: np.ndarray | None, rng: np.random.Generator,
                    strength: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Noise amplitude map from the attenuation along the two ray families, and photon-starvation streaks.

    Projection noise variance grows like exp(path); a pixel's noise mixes the rays through it. Rays with a
    path well above a mid-chest one (shoulders, arms beside the chest, the upper abdomen) leave streaks
    along themselves (white across rays, then shaped by the kernel like the rest of the noise).
    """
    smooth_i = ndimage.gaussian_filter1d(path_i, 4.0)
    smooth_j = ndimage.gaussian_filter1d(path_j, 4.0)
    reference = 4.0
    var_i = np.exp(0.5 * np.clip(smooth_i - reference, -6.0, 8.0)).astype(np.float32)
    var_j = np.exp(0.5 * np.clip(smooth_j - reference, -6.0, 8.0)).astype(np.float32)
    variance = 0.5 * (var_i[None, :] + var_j[:, None])
    inside = body if body is not None and body.any() else None
    norm = float(variance[inside].mean()) if inside is not None else float(variance.mean())
    amplitude = np.sqrt(variance / max(norm, 1e-6))
    np.clip(amplitude, 0.3, 3.0, out=amplitude)
    threshold = 6.5
    excess_i = np.sqrt(np.maximum(np.exp(np.clip(path_i - threshold, 0.0, 6.0)) - 1.0, 0.0))
    excess_j = np.sqrt(np.maximum(np.exp(np.clip(path_j - threshold, 0.0, 6.0)) - 1.0, 0.0))
    rows = (0.35 * strength * excess_i * rng.standard_normal(path_i.shape)).astype(np.float32)
    cols = (0.35 * strength * excess_j * rng.standard_normal(path_j.shape)).astype(np.float32)
    # the streak field is multiplied by the amplitude map later: divide it out again along the streaks
    rows /= np.sqrt(np.maximum(amplitude.mean(axis=0), 0.3))
    cols /= np.sqrt(np.maximum(amplitude.mean(axis=1), 0.3))
    return amplitude, rows, cols, float(max(excess_i.max(initial=0.0), excess_j.max(initial=0.0)) * strength)


def _beam_hardening(plane: np.ndarray, patient: np.ndarray, spacing: tuple[float, float], scale: np.float32
                    ) -> float:
    """Dark bands between the patient's dense bones along each ray family (in place); returns the deepest (HU)."""
    bone = np.maximum(plane - np.float32(250.0), 0.0) * np.float32(1.0 / 1000.0) * patient
    deepest = 0.0
    for axis, step in ((0, spacing[0]), (1, spacing[1])):
        along = bone * np.float32(step)
        total = along.sum(axis=axis)
        if float(total.max(initial=0.0)) < 2.0:                    # less than ~2 mm of bone on every ray
            continue
        cumulative = np.cumsum(along, axis=axis)
        t = np.expand_dims(total, axis)
        between = (cumulative > 0.1 * t) & (cumulative < 0.9 * t)
        depth = scale * t * t                                       # HU, grows with the bone path squared
        band = depth * (np.float32(0.25) + np.float32(0.75) * between)
        plane -= band
        deepest = max(deepest, float(depth.max()))
    return deepest


# --- surroundings ---------------------------------------------------------------------------------------------

_NOT_PATIENT = np.zeros(256, dtype=bool)
_NOT_PATIENT[list(NOT_PATIENT)] = True


def _table_layer(table: Table, wx: np.ndarray, wy: np.ndarray, pixel: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, occupancy (0..1) and tissue code of the table and mattress at scanner points (wx, wy)."""
    inv = 1.0 / pixel
    u = wx - table.centre_x
    top = table.top_y + 0.5 * table.curvature * u * u
    depth = top - wy                                    # > 0 below the table top
    lateral = table.half_width - np.abs(u)
    from_surface = np.minimum(depth, table.thickness - depth)
    occupancy = np.clip(np.minimum(from_surface, lateral) * inv + 0.5, 0.0, 1.0)
    if table.kind == "shell":
        skin = np.clip((table.skin - from_surface) * inv + 0.5, 0.0, 1.0)
        value = table.core_hu + (table.skin_hu - table.core_hu) * skin
    else:
        value = np.full(wx.shape, table.skin_hu)
    code = np.full(wx.shape, Tissue.TABLE, dtype=np.uint8)
    if table.base_gap > 0:
        below = table.top_y - table.thickness - table.base_gap - wy      # > 0 below the base's top
        inside = np.minimum(np.minimum(below, table.base_height - below), table.base_half_width - np.abs(u))
        wall = np.clip(inside * inv + 0.5, 0.0, 1.0) * np.clip((3.0 - inside) * inv + 0.5, 0.0, 1.0)
        use = wall > occupancy
        value = np.where(use, table.base_hu, value)
        occupancy = np.where(use, wall, occupancy)
    if table.pad_thickness > 0:
        height = -depth
        pad = np.clip(np.minimum(np.minimum(height, table.pad_thickness - height), lateral - 12.0) * inv + 0.5,
                      0.0, 1.0)
        use = pad > occupancy
        value = np.where(use, table.pad_hu, value)
        occupancy = np.where(use, pad, occupancy)
        code = np.where(use, np.uint8(Tissue.PAD), code)
    return value.astype(np.float32), occupancy.astype(np.float32), code


def _blend_outside(hu: np.ndarray, tissue: np.ndarray, index: np.ndarray, value: np.ndarray, occupancy: np.ndarray,
                   code: np.ndarray | int) -> None:
    """Blend `value` into flat `index` of one plane where nothing of the patient is (partial-volume edges)."""
    free = _NOT_PATIENT[tissue[index]]
    index, occupancy = index[free], occupancy[free]
    value = value[free] if isinstance(value, np.ndarray) else value
    current = hu[index]
    hu[index] = current + occupancy * (value - current)
    covered = occupancy >= 0.5
    tissue[index[covered]] = code[free][covered] if isinstance(code, np.ndarray) else code


def _limb_painter(code: Tissue, value: float, allowed: tuple[Tissue, ...]):
    table = _NOT_PATIENT.copy()
    table[list(allowed)] = True

    def paint(target: PaintTarget, box: tuple[slice, slice, slice], occupancy: np.ndarray) -> None:
        tissue = target.tissue[box]
        occupancy = occupancy * table[tissue] * (target.lobe[box] == 0)
        hu = target.hu[box]
        hu += occupancy * (np.float32(value) - hu)
        tissue[occupancy >= 0.5] = code

    return paint


def _paint_limbs(model: ChestModel, target: PaintTarget, limbs: tuple[Limb, ...]) -> None:
    """Arms beside the chest: skin, fat, muscle, cortical bone and marrow, never over the patient's trunk
    organs (the trunk's own skin, fat and muscle may merge with an arm at the shoulder)."""
    hu = model.hu
    for limb in limbs:
        start, end = np.array([limb.start]), np.array([limb.end])
        layers = [
            (limb.radius, Tissue.SKIN, hu.skin, ()),
            (limb.radius - 1.5, Tissue.FAT, hu.fat, (Tissue.SKIN,)),
            (limb.radius - 1.5 - limb.fat, Tissue.MUSCLE, hu.muscle, (Tissue.SKIN, Tissue.FAT)),
            (limb.bone_radius, Tissue.CORTICAL_BONE, hu.cortical_bone, (Tissue.MUSCLE,)),
            (limb.bone_radius - limb.cortex, Tissue.TRABECULAR_BONE, 0.5 * hu.trabecular_bone,
             (Tissue.CORTICAL_BONE,)),
        ]
        for radius, code, value, allowed in layers:
            if radius <= 0.5:
                continue
            paint_capsules(target, Segments(start, end, np.array([radius])), _limb_painter(code, value, allowed))


def _paint_surface_lines(model: ChestModel, target: PaintTarget, blankets: tuple[Blanket, ...]) -> None:
    """Blankets and clothing folds: thin wavy sheets over the body, splatted slice by slice."""
    if not blankets:
        return
    m = target.body_from_voxel
    inverse = target.voxel_from_body
    ni, nj, nk = target.hu.shape
    pixel = float(target.spacing[:2].mean())
    ci, cj = (ni - 1) / 2.0, (nj - 1) / 2.0
    for k in range(nk):
        z = float(m[2, 0] * ci + m[2, 1] * cj + m[2, 2] * k + m[2, 3])
        flat_parts, weight_parts, value_parts = [], [], []
        for blanket in blankets:
            theta = np.arange(blanket.theta[0], blanket.theta[1], 0.4 * pixel / 250.0)
            offset = np.full(theta.shape, blanket.offset)
            for amplitude, per_radian, per_mm, phase in blanket.waves:
                offset = offset + amplitude * np.sin(per_radian * theta + per_mm * z + phase)
            x, y = body_outline(model, theta, np.maximum(offset, 1.0))
            i = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2] * z + inverse[0, 3]
            j = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2] * z + inverse[1, 3]
            weight = blanket.thickness / pixel * np.hypot(np.gradient(i), np.gradient(j))
            i0, j0 = np.floor(i).astype(np.int64), np.floor(j).astype(np.int64)
            fi, fj = i - i0, j - j0
            for di, dj, w in ((0, 0, (1 - fi) * (1 - fj)), (1, 0, fi * (1 - fj)), (0, 1, (1 - fi) * fj),
                              (1, 1, fi * fj)):
                ii, jj = i0 + di, j0 + dj
                ok = (ii >= 0) & (ii < ni) & (jj >= 0) & (jj < nj)
                flat_parts.append(ii[ok] * nj + jj[ok])
                weight_parts.append((weight * w)[ok])
                value_parts.append(np.full(int(ok.sum()), blanket.hu))
        flat = np.concatenate(flat_parts)
        if not flat.size:
            continue
        index, inverse_index = np.unique(flat, return_inverse=True)
        weights = np.concatenate(weight_parts)
        occupancy = np.bincount(inverse_index, weights=weights, minlength=index.size)
        value = np.bincount(inverse_index, weights=weights * np.concatenate(value_parts), minlength=index.size)
        keep = occupancy > 0.02
        if keep.any():
            shade = (value[keep] / occupancy[keep]).astype(np.float32)
            _blend_outside(_flat(target.hu[:, :, k]), _flat(target.tissue[:, :, k]), index[keep], shade,
                           np.minimum(occupancy[keep], 1.0).astype(np.float32), Tissue.PAD)


def _flat(plane: np.ndarray) -> np.ndarray:
    """A writable flat view of a C-contiguous plane (planes of the slice-major buffers are)."""
    flat = plane.reshape(-1)
    if not np.shares_memory(flat, plane):
        raise ValueError("expected a contiguous plane")
    return flat


def _paint_leads(model: ChestModel, target: PaintTarget, surroundings: Surroundings) -> None:
    """ECG electrodes (gel pad with a metal snap) on the skin and their cables, outside the body only."""
    for centre in surroundings.electrodes:
        point = np.array([centre])
        paint_capsules(target, Segments(point, point, np.array([4.5])),
                       _limb_painter(Tissue.LEAD, 150.0, ()))
        paint_capsules(target, Segments(point, point, np.array([2.0])),
                       _limb_painter(Tissue.LEAD, 2500.0, (Tissue.LEAD,)))
    for line in surroundings.leads:
        points = np.array(line)
        if len(points) < 2:
            continue
        paint_capsules(target, Segments(points[:-1], points[1:], np.full(len(points) - 1, 1.3)),
                       _limb_painter(Tissue.LEAD, surroundings.lead_hu, (Tissue.PAD,)))


def _draw_surroundings(model: ChestModel, grid: Grid, hu: np.ndarray, tissue: np.ndarray, lobe: np.ndarray,
                       surroundings: Surroundings) -> None:
    """Draw arms, blankets, leads, table and mattress into the (i, j, k) views, only where the patient is not."""
    body_from_voxel = model.pose.body_from_world() @ grid.affine
    target = PaintTarget(hu=hu, tissue=tissue, lobe=lobe, body_from_voxel=body_from_voxel)
    if surroundings.arms:
        _paint_limbs(model, target, surroundings.arms)
    _paint_surface_lines(model, target, surroundings.blankets)
    if surroundings.electrodes or surroundings.leads:
        _paint_leads(model, target, surroundings)
    if surroundings.table is None:
        return
    ni, nj, nk = hu.shape
    affine = grid.affine
    pixel = float(np.mean(grid.spacing[:2]))
    i = np.arange(ni, dtype=np.float64)[:, None]
    j = np.arange(nj, dtype=np.float64)[None, :]
    axial = abs(affine[0, 2]) < 1e-9 and abs(affine[1, 2]) < 1e-9
    layer = None
    for k in range(nk):
        if layer is None or not axial:
            wx = affine[0, 0] * i + affine[0, 1] * j + affine[0, 2] * k + affine[0, 3]
            wy = affine[1, 0] * i + affine[1, 1] * j + affine[1, 2] * k + affine[1, 3]
            value, occupancy, code = _table_layer(surroundings.table, wx, wy, pixel)
            index = np.flatnonzero(occupancy > 0)
            layer = (value.reshape(-1)[index], occupancy.reshape(-1)[index], code.reshape(-1)[index], index)
        if not layer[3].size:
            continue
        _blend_outside(_flat(hu[:, :, k]), _flat(tissue[:, :, k]), layer[3], layer[0], layer[1], layer[2])


def _reconstruction_circle(shape: tuple[int, int]) -> np.ndarray:
    ni, nj = shape
    i = (np.arange(ni) - (ni - 1) / 2.0)[:, None] / (ni / 2.0)
    j = (np.arange(nj) - (nj - 1) / 2.0)[None, :] / (nj / 2.0)
    return i * i + j * j <= 1.0


def render(model: ChestModel, grid: Grid, scanner: ScannerSettings | None = None, *,
           progress: ProgressCallback | None = None, quantize: bool = True) -> PhantomImage:
    """Image `model` on `grid`; HU are rounded to int16 unless `quantize` is False (float32).

    Returned arrays are indexed (i, j, k) but stored slice by slice (views of (k, i, j) buffers).
    """
    scanner = scanner or ScannerSettings()
    offsets, weights = _slice_profile(grid, model.components.partial_volume)
    fields = _fields(model, grid)
    total = len(offsets) * grid.shape[2]
    accumulated = None
    for n, (offset, weight) in enumerate(zip(offsets, weights, strict=True)):
        hu, tissue, lobe = _render_planes(model, grid.shape, _shifted(grid.affine, offset), fields,
                                          offset / grid.spacing[2], progress, n * grid.shape[2], total)
        if n == len(offsets) // 2:
            centre_tissue, centre_lobe = tissue, lobe
        if len(offsets) > 1:
            hu *= np.float32(weight)
        if accumulated is None:
            accumulated = hu
        else:
            accumulated += hu
    if model.components.texture and scanner.kernel is not None:     # CT cases; radiographs stay as they were
        _soft_tissue_texture(model, grid, accumulated, centre_tissue)
    surroundings = scanner.surroundings if model.components.surroundings else None
    if surroundings is not None:
        _draw_surroundings(model, grid, accumulated, centre_tissue, centre_lobe, surroundings)
    slices = accumulated.transpose(2, 0, 1)           # back to the (k, i, j) buffer
    notes: dict[str, Any] = {}
    if scanner.kernel is None:
        _gaussian_scanner(model, grid, slices, scanner)
    else:
        notes = _kernel_scanner(model, grid, slices, scanner, centre_tissue.transpose(2, 0, 1))
    circle = _reconstruction_circle(grid.shape[:2]) if surroundings is not None and surroundings.fov_circle else None
    padding = float(surroundings.padding_hu) if circle is not None else None
    if quantize:
        stored = np.empty(slices.shape, dtype=np.int16)
        for k, plane in enumerate(slices):
            np.clip(np.rint(plane), -1024, 3071, out=plane)
            if circle is not None:
                plane[~circle] = padding
            stored[k] = plane
        slices = stored
    elif circle is not None:
        slices[:, ~circle] = padding
    if circle is not None:                             # nothing is labelled where nothing was reconstructed
        centre_lobe.transpose(2, 0, 1)[:, ~circle] = 0
    lungs = _lungs_from_lobes(centre_lobe)
    return PhantomImage(hu=slices.transpose(1, 2, 0), lobes=centre_lobe, lungs=lungs, tissue=centre_tissue,
                        affine=grid.affine.copy(), notes=notes)


def _lungs_from_lobes(lobes: np.ndarray) -> np.ndarray:
    """The "lungs" label map (right / left lung) from a "lobes" label map, by each lobe's `part_of`."""
    lungs = label_map("lungs")
    lookup = np.zeros(256, dtype=np.uint8)
    for lobe in label_map("lobes").foreground:
        lookup[lobe.value] = lungs.by_name(lobe.part_of).value  # type: ignore[arg-type, union-attr]
    return lookup[lobes]
