"""CT acquisition geometry, image quality and surroundings for one synthetic case.

Pixel spacing follows the field of view (0.55-0.98 mm at 512x512), slices are 0.625-8 mm, patients lie
head-first or feet-first supine, and now and then the field of view is truncated (body sides cut, or the
lung apex or base just outside the scanned range). Like real series, each case has a reconstruction kernel
(soft, medium or sharp, sometimes iteratively reconstructed) whose noise level follows the kernel and the
slice thickness, and a setting: the table and mattress under the patient, arms raised or beside the chest,
blankets or clothing folds, ECG electrodes and leads, and a reconstruction circle with padding outside it.
Everything is drawn from the case's own random stream, so a seed always gives the same acquisition.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from medseg.data.phantom.model import ChestModel
from medseg.data.phantom.render import KERNELS, Blanket, Grid, ScannerSettings, Surroundings, Table
from medseg.data.phantom.render import Limb as _Limb
from medseg.data.phantom.shapes import body_outline

__all__ = ["Acquisition", "sample_acquisition"]

_SPACINGS = (0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 8.0)
_SPACING_WEIGHTS = (0.08, 0.08, 0.13, 0.13, 0.1, 0.11, 0.13, 0.08, 0.12, 0.04)
_OVERLAPPED_THICKNESS = {0.625: 1.25, 0.8: 1.0, 1.0: 1.25, 1.25: 2.5, 2.5: 5.0}
_KERNEL_CLASSES = {"soft": (0.45, ("B30f", "B40f", "B", "STANDARD")), "medium": (0.15, ("B50f", "C")),
                   "sharp": (0.40, ("B60f", "B70f", "L", "LUNG"))}
_NOISE_FACTOR = {"soft": (1.0, 1.0), "medium": (1.6, 2.2), "sharp": (3.0, 4.5)}


@dataclass(frozen=True)
class Acquisition:
    """How a case was scanned: matrix, spacings, thickness, position, truncation, image quality, setting."""

    size: int
    slices: int
    pixel_spacing: float
    slice_spacing: float
    slice_thickness: float
    patient_position: str            # "HFS" or "FFS"
    truncation: str | None           # None, "lateral", "apex" or "base"
    noise_sd: float                  # in soft tissue, after the kernel
    kernel_sigma_mm: float           # system blur before the kernel
    affine: tuple[tuple[float, ...], ...]
    kernel: str | None = None        # a `render.KERNELS` name; None: the simple Gaussian model
    iterative: float = 0.0
    arms: str = "up"                 # "up", "down" or "one_down"
    surroundings: Surroundings | None = None
    declare_padding: bool = False    # write PixelPaddingValue for the padding outside the circle

    @property
    def grid(self) -> Grid:
        return Grid((self.size, self.size, self.slices), np.array(self.affine), self.slice_thickness)

    @property
    def scanner(self) -> ScannerSettings:
        kernel = None
        if self.kernel is not None:
            kernel = replace(KERNELS[self.kernel], iterative=self.iterative)
        return ScannerSettings(noise_sd=self.noise_sd, kernel_sigma_mm=self.kernel_sigma_mm, kernel=kernel,
                               surroundings=self.surroundings)

    def describe(self) -> dict[str, Any]:
        """Flat scalars (for manifests and tables); `setting()` has the details of the surroundings."""
        info: dict[str, Any] = {}
        for key in ("size", "slices", "pixel_spacing", "slice_spacing", "slice_thickness", "patient_position",
                    "truncation", "noise_sd", "kernel_sigma_mm", "kernel", "iterative", "arms"):
            value = getattr(self, key)
            info[key] = round(value, 4) if isinstance(value, float) else value
        if self.kernel is not None:
            info["kernel_sharpness"] = KERNELS[self.kernel].sharpness
        s = self.surroundings
        if s is not None:
            info["table"] = s.table.kind if s.table is not None else None
            info["mattress_mm"] = round(s.table.pad_thickness, 1) if s.table is not None else 0.0
            info["blankets"] = len(s.blankets)
            info["ecg_electrodes"] = len(s.electrodes)
            info["fov_circle"] = s.fov_circle
            info["padding_hu"] = s.padding_hu if s.fov_circle else None
            info["padding_declared"] = self.declare_padding and s.fov_circle
        return info

    def setting(self) -> dict[str, Any]:
        return self.surroundings.describe() if self.surroundings is not None else {}


def _world_box(model: ChestModel, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    world = corners @ model.pose.rotation.T + model.pose.translation
    return world.min(axis=0), world.max(axis=0)


def _world(model: ChestModel, points: np.ndarray) -> np.ndarray:
    return points @ model.pose.rotation.T + model.pose.translation


def _sample_arms(rng: np.random.Generator, model: ChestModel, extra_fat: float) -> tuple[str, tuple[_Limb, ...]]:
    """Arms raised above the head (out of the chest's field of view) or lying beside the chest."""
    mode = str(rng.choice(["up", "down", "one_down"], p=[0.65, 0.27, 0.08]))
    if mode == "up":
        return mode, ()
    s = model.shape
    sides = (1, -1) if mode == "down" else (int(rng.choice([1, -1])),)
    limbs = []
    fat = float(rng.uniform(4.0, 14.0) + 0.5 * extra_fat)
    upper_radius = float(rng.uniform(34.0, 44.0) + fat)
    fore_radius = float(rng.uniform(26.0, 32.0) + 0.7 * fat)
    gap = float(rng.uniform(0.0, 18.0))
    shoulder_z = s.apex_z + float(rng.uniform(25.0, 55.0))
    length = float(rng.uniform(270.0, 330.0))
    for side in sides:
        axis_x = side * (s.body_half_width + gap + upper_radius)
        axis_y = -s.body_back + upper_radius + float(rng.uniform(-3.0, 25.0))
        top = (side * (s.body_half_width + gap + upper_radius - 20.0), axis_y + 10.0, shoulder_z)
        elbow = (axis_x + side * rng.uniform(0.0, 15.0), axis_y - rng.uniform(0.0, 10.0), shoulder_z - length)
        limbs.append(_Limb(top, tuple(float(v) for v in elbow), upper_radius, fat, float(rng.uniform(10.5, 13.0)),
                           float(rng.uniform(3.0, 5.0))))
        if rng.uniform() < 0.5:            # forearm resting on the belly
            hand = (side * s.body_half_width * rng.uniform(0.2, 0.6), s.body_front + fore_radius * 0.8,
                    elbow[2] - rng.uniform(80.0, 160.0))
        else:                              # hanging straight beside the body
            hand = (elbow[0] + side * rng.uniform(-10.0, 10.0), elbow[1] + rng.uniform(0.0, 30.0),
                    elbow[2] - rng.uniform(200.0, 250.0))
        limbs.append(_Limb(tuple(float(v) for v in elbow), tuple(float(v) for v in hand), fore_radius,
                           0.7 * fat, float(rng.uniform(7.0, 9.0)), float(rng.uniform(2.5, 3.5))))
    return mode, tuple(limbs)


def _rest_on_table(model: ChestModel, limbs: tuple[_Limb, ...], table: Table) -> tuple[_Limb, ...]:
    """Lower or raise each arm (upper arm and forearm together) so that it sinks a little into the mattress."""
    rested = []
    for upper, fore in zip(limbs[::2], limbs[1::2], strict=True):
        elbow_world = _world(model, np.array(upper.end))
        u = elbow_world[0] - table.centre_x
        surface = table.top_y + 0.5 * table.curvature * u * u + 0.5 * table.pad_thickness
        shift = surface + upper.radius - elbow_world[1]
        for limb in (upper, fore):
            rested.append(replace(limb, start=(limb.start[0], limb.start[1] + shift, limb.start[2]),
                                  end=(limb.end[0], limb.end[1] + shift, limb.end[2])))
    return tuple(rested)


def _sample_table(rng: np.random.Generator, body_low_y: float, centre_x: float) -> Table:
    pad = float(rng.uniform(10.0, 45.0))
    top = body_low_y - pad * float(rng.uniform(0.45, 0.8))     # the patient sinks into the mattress
    curvature = 0.0 if rng.uniform() < 0.3 else float(rng.uniform(1.0 / 2000.0, 1.0 / 600.0))
    common = {"top_y": top, "centre_x": centre_x + float(rng.uniform(-15.0, 15.0)),
              "half_width": float(rng.uniform(200.0, 245.0)), "curvature": curvature, "pad_thickness": pad,
              "pad_hu": float(rng.uniform(-985.0, -850.0))}
    if rng.uniform() < 0.55:                                   # carbon-fibre sandwich shell
        return Table(kind="shell", thickness=float(rng.uniform(12.0, 45.0)), skin=float(rng.uniform(1.2, 3.0)),
                     skin_hu=float(rng.uniform(250.0, 900.0)), core_hu=float(rng.uniform(-960.0, -800.0)),
                     **common)
    base = rng.uniform() < 0.7
    return Table(kind="slab", thickness=float(rng.uniform(8.0, 22.0)), skin=0.0,
                 skin_hu=float(rng.uniform(-50.0, 300.0)), core_hu=0.0,
                 base_gap=float(rng.uniform(25.0, 90.0)) if base else 0.0,
                 base_height=float(rng.uniform(15.0, 40.0)), base_half_width=float(rng.uniform(40.0, 110.0)),
                 base_hu=float(rng.uniform(400.0, 1500.0)), **common)


def _sample_blankets(rng: np.random.Generator) -> tuple[Blanket, ...]:
    if rng.uniform() >= 0.45:
        return ()
    blankets = []
    for _ in range(int(rng.integers(1, 4))):
        waves = tuple((float(rng.uniform(1.0, 8.0)), float(rng.uniform(2.0, 14.0)), float(rng.uniform(0.005, 0.05)),
                       float(rng.uniform(0.0, 2 * np.pi))) for _ in range(3))
        start = float(rng.uniform(-0.4, 0.6))
        end = float(np.pi - rng.uniform(-0.4, 0.6))
        blankets.append(Blanket(offset=float(rng.uniform(2.0, 25.0)), thickness=float(rng.uniform(0.8, 3.0)),
                                hu=float(rng.uniform(-450.0, 0.0)), theta=(start, end), waves=waves))
    return tuple(blankets)


def _sample_leads(rng: np.random.Generator, model: ChestModel) -> tuple[tuple, tuple]:
    if rng.uniform() >= 0.2:
        return (), ()
    s = model.shape
    electrodes, leads = [], []
    for _ in range(int(rng.integers(3, 6))):
        theta = float(np.pi / 2 + rng.uniform(-0.9, 0.9))
        z = float(s.heart_centre[2] + rng.uniform(-80.0, 70.0))
        x, y = body_outline(model, np.array([theta]), 1.5)
        electrodes.append((float(x[0]), float(y[0]), z))
        target = 0.05 if theta < np.pi / 2 else np.pi - 0.05        # the cable runs to the nearer side
        thetas = np.linspace(theta, target, 40)
        lx, ly = body_outline(model, thetas, 2.0 + np.abs(np.sin(np.linspace(0, np.pi, 40))) * rng.uniform(0, 15))
        lz = z + np.cumsum(rng.normal(0.0, 1.5, 40))
        leads.append(tuple((float(a), float(b), float(c)) for a, b, c in zip(lx, ly, lz, strict=True)))
    return tuple(electrodes), tuple(leads)


def _sample_kernel_and_noise(rng: np.random.Generator, thickness: float, pixel: float) -> tuple[str, float, float]:
    """A kernel, its iterative-reconstruction strength and the noise SD in soft tissue (HU).

    Levels follow the real series: soft kernels ~8-18 HU at 5 mm, sharp ones 3-4.5 times that; noise falls
    with the square root of the slice thickness and, for pixels coarser than ~0.75 mm (small matrices), with
    the pixel size as the kernel's high frequencies no longer fit (most for sharp kernels).
    """
    classes = list(_KERNEL_CLASSES)
    sharpness = str(rng.choice(classes, p=[_KERNEL_CLASSES[c][0] for c in classes]))
    name = str(rng.choice(_KERNEL_CLASSES[sharpness][1]))
    iterative = float(rng.uniform(0.3, 1.0)) if sharpness != "sharp" and rng.uniform() < 0.3 else 0.0
    soft_at_5mm = rng.uniform(18.0, 35.0) if rng.uniform() < 0.1 else rng.uniform(7.0, 18.0)   # low dose now and then
    noise = soft_at_5mm * np.sqrt(5.0 / thickness) * rng.uniform(*_NOISE_FACTOR[sharpness])
    noise *= min(1.0, 0.75 / pixel) ** {"soft": 0.4, "medium": 0.7, "sharp": 1.0}[sharpness]
    if iterative:
        noise *= 1.0 - 0.45 * iterative
    return name, iterative, float(np.clip(noise, 3.0, 150.0))


def sample_acquisition(rng: np.random.Generator, model: ChestModel, *, size: int = 512,
                       slices: int | None = None, truncation_probability: float = 0.15,
                       extra_fat_mm: float = 0.0) -> Acquisition:
    """Choose a scan of `model`: covers both lungs with margins unless this case is truncated."""
    s = model.shape
    lung_low, lung_high = _world_box(model, *model.lung_extent_mm)
    body_low, body_high = _world_box(model, np.array([-s.body_half_width, -s.body_back, 0.0]),
                                     np.array([s.body_half_width, s.body_front, 0.0]))
    truncation = None
    if rng.uniform() < truncation_probability:
        truncation = str(rng.choice(["lateral", "apex", "base"], p=[0.5, 0.3, 0.2]))
    arms, limbs = _sample_arms(rng, model, extra_fat_mm)
    body_width = float(max(body_high[0] - body_low[0], body_high[1] - body_low[1]))
    if limbs:                                   # the arms widen what a full field of view must hold
        reach = max(abs(limb.end[0]) + limb.radius for limb in limbs[::2])
        if rng.uniform() < 0.6:
            body_width = max(body_width, 2.0 * reach)
    lung_width = float(lung_high[0] - lung_low[0])
    if truncation == "lateral":
        fov = max(body_width * rng.uniform(0.8, 0.93), lung_width + 6.0)
    else:
        fov = body_width + rng.uniform(15.0, 70.0)
    scale = 512.0 / size
    pixel = float(np.clip(fov / size, 0.55 * scale, 0.98 * scale))
    z_start = lung_low[2] - rng.uniform(8.0, 30.0)
    z_end = lung_high[2] + rng.uniform(8.0, 30.0)
    if truncation == "apex":
        z_end = lung_high[2] - rng.uniform(4.0, 14.0)
    elif truncation == "base":
        z_start = lung_low[2] + rng.uniform(4.0, 12.0)
    coverage = z_end - z_start
    if slices is None:
        spacing = float(rng.choice(_SPACINGS, p=np.array(_SPACING_WEIGHTS) / sum(_SPACING_WEIGHTS)))
        slices = round(coverage / spacing) + 1
        thickness = _OVERLAPPED_THICKNESS.get(spacing, spacing) if rng.uniform() < 0.25 else spacing
    else:
        if slices < 2:
            raise ValueError(f"slices must be at least 2, got {slices}")
        spacing = coverage / (slices - 1)
        thickness = float(np.clip(spacing * rng.choice([1.0, 1.0, 1.25, 1.5]), 0.625, 8.0))
        thickness = max(thickness, spacing)
    position = "FFS" if rng.uniform() < 0.25 else "HFS"
    centre = 0.5 * (body_low + body_high) + np.array([rng.uniform(-12, 12), rng.uniform(-12, 12), 0.0])
    half = pixel * (size - 1) / 2.0
    if position == "HFS":        # rows run to the patient's left, slices upwards (RAS: -x, -y, +z)
        affine = np.diag([-pixel, -pixel, spacing, 1.0])
        affine[:3, 3] = [centre[0] + half, centre[1] + half, z_start]
    else:                        # feet first: the image is mirrored left-right and slices run downwards
        affine = np.diag([pixel, -pixel, -spacing, 1.0])
        affine[:3, 3] = [centre[0] - half, centre[1] + half, z_start + spacing * (slices - 1)]
    kernel, iterative, noise = _sample_kernel_and_noise(rng, float(thickness), pixel)
    # the patient's lowest point over the scanned range rests on the mattress
    theta = np.linspace(np.pi, 2 * np.pi, 90)
    bx, by = body_outline(model, theta)
    body_z = model.pose.rotation.T @ (np.array([0.0, 0.0, z_start]) - model.pose.translation)
    zs = np.linspace(body_z[2] - 50.0, body_z[2] + coverage + 50.0, 8)
    outline = np.array([[x, y, z] for z in zs for x, y in zip(bx, by, strict=True)])
    table = _sample_table(rng, float(_world(model, outline)[:, 1].min()), float(0.5 * (body_low[0] + body_high[0])))
    limbs = _rest_on_table(model, limbs, table)
    blankets = _sample_blankets(rng)
    electrodes, leads = _sample_leads(rng, model)
    circle = bool(rng.uniform() < 0.75)
    padding = int(rng.choice([-1024, -2000, -3024], p=[0.6, 0.2, 0.2]))
    surroundings = Surroundings(table=table, arms=limbs, blankets=blankets, electrodes=electrodes, leads=leads,
                                lead_hu=float(rng.uniform(300.0, 1200.0)), fov_circle=circle, padding_hu=padding)
    declare = bool(rng.uniform() < 0.5) and padding < -1024
    return Acquisition(size=size, slices=slices, pixel_spacing=pixel, slice_spacing=float(spacing),
                       slice_thickness=float(thickness), patient_position=position, truncation=truncation,
                       noise_sd=noise, kernel_sigma_mm=float(rng.uniform(0.15, 0.3)),
                       affine=tuple(tuple(float(v) for v in row) for row in affine), kernel=kernel,
                       iterative=iterative, arms=arms, surroundings=surroundings, declare_padding=declare)
