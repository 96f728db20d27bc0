"""Per-case anatomy parameters of the synthetic chest, sampled from published ranges (../ANATOMY.md).

Everything here is in the *body frame*: millimetres, RAS axes (x to the patient's right, y anterior,
z superior), origin at the carina. `medseg.data.phantom.render` places the body in the scanner with
`Pose` and evaluates it on any voxel grid, so one anatomy can be imaged as a CT series or a radiograph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LOBE_SHARE_PERCENT",
    "ChestShape",
    "FissureShape",
    "Pose",
    "TissueHU",
    "sample_chest_shape",
    "sample_fissures",
    "sample_pose",
    "sample_tissue_hu",
]

LOBE_SHARE_PERCENT: dict[str, tuple[float, float]] = {
    "RUL": (17.9, 2.4), "RML": (9.3, 1.6), "RLL": (26.5, 2.6), "LUL": (23.1, 2.1), "LLL": (23.2, 2.4),
}
"""Lobe share of total lung volume, mean and SD (Yamada, Respiration 2020)."""


@dataclass(frozen=True)
class ChestShape:
    """Sizes and positions of the body, thoracic cavity, diaphragm and mediastinal organs (mm)."""

    body_half_width: float
    body_front: float              # anterior skin, y
    body_back: float               # posterior skin, -y
    fat: float                     # subcutaneous fat thickness
    muscle: float                  # chest-wall muscle thickness (thicker at the back)
    cavity_half_width: float       # inner rib cage at its widest, x
    cavity_front: float            # inner anterior chest wall, y
    cavity_back: float             # inner posterior chest wall beside the spine, -y
    right_width_factor: float      # right/left asymmetry of the cavity
    apex_z: float                  # lung apices above the carina
    dome_right_z: float            # top of the right hemidiaphragm
    dome_left_z: float             # top of the left one (lower)
    dome_depth: float              # how far the costophrenic recesses fall below the dome top
    heart_scale: float             # 1.33-1.55 (cardiomegaly) gives a cardiothoracic ratio above 0.5
    heart_centre: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    heart_angle_deg: float         # long axis rotated towards the patient's left
    spine_y: float                 # vertebral body centre
    vertebra_pitch: float
    aorta_radius: float
    upper_mediastinum: float = 0.0  # great vessels and thymic fat: extra half-width above the heart (mm)

    @property
    def heart_half_width(self) -> float:
        return self.heart_axes[0] * self.heart_scale


@dataclass(frozen=True)
class FissureShape:
    """A curved fissure surface z = f(x, y) in one lung; `offset` is solved to hit a lobe volume share."""

    side: int                      # +1 right lung, -1 left lung
    kind: str                      # "oblique" or "horizontal"
    z_ref: float                   # height at y_ref (before offset)
    y_ref: float
    slope: float                   # dz/dy; negative for an oblique fissure (falls anteriorly)
    curvature: float               # d2z/dy2 / 2
    lateral_curvature: float       # bowing with distance from the lung's centre line, per mm^2
    lateral_slope: float           # dz per mm towards the lateral chest wall
    waves: tuple[tuple[float, float, float, float], ...]  # (amplitude, kx, ky, phase) undulations
    gaps: tuple[tuple[float, float, float, float], ...]   # visibility field modes
    gap_threshold: float           # field below this is a gap (incomplete fissure); -inf = complete
    thickness: float               # visible line thickness (FWHM, mm)
    offset: float = 0.0

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fissure height z at (x, y), offset included."""
        dy = y - self.y_ref
        lateral = self.side * x - 60.0
        z = self.z_ref + self.offset + self.slope * dy + self.curvature * dy * dy
        z = z + self.lateral_curvature * lateral * lateral + self.lateral_slope * lateral
        for amplitude, kx, ky, phase in self.waves:
            z = z + amplitude * np.cos(kx * x + ky * y + phase)
        return z

    @property
    def normal_scale(self) -> float:
        """Approximate |grad(z - f)| for turning height differences into normal distances."""
        return float(np.sqrt(1.0 + self.slope**2))

    def visible(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True where the fissure line is drawn (False in the gaps of an incomplete fissure)."""
        if not np.isfinite(self.gap_threshold):
            return np.ones(np.shape(x), dtype=bool)
        value = np.zeros(np.shape(x), dtype=np.float32)
        for amplitude, kx, ky, phase in self.gaps:
            value += amplitude * np.cos(kx * x + ky * y + phase)
        hilum_distance = np.abs(self.side * x - 35.0)     # fissures are most often incomplete medially
        value -= 0.8 * np.exp(-(hilum_distance / 25.0) ** 2)
        return value > self.gap_threshold


@dataclass(frozen=True)
class Pose:
    """Rigid placement of the body frame in scanner RAS: world = rotation @ body + translation."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def body_from_world(self) -> np.ndarray:
        """4x4 matrix taking scanner RAS points to body-frame points."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.rotation.T
        matrix[:3, 3] = -self.rotation.T @ self.translation
        return matrix


@dataclass(frozen=True)
class TissueHU:
    """Mean attenuation of each tissue for one case (HU)."""

    lung: float = -860.0
    lung_gravity_gradient: float = 40.0   # extra HU in the dependent lung
    fat: float = -100.0
    muscle: float = 45.0
    blood: float = 40.0
    liver: float = 58.0
    spleen: float = 45.0
    cortical_bone: float = 800.0
    trabecular_bone: float = 220.0
    cartilage: float = 120.0
    disc: float = 80.0
    csf: float = 15.0
    skin: float = 30.0
    fissure_contrast: float = 320.0


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    return float(np.clip(rng.normal(mean, sd), low, high))


def sample_chest_shape(rng: np.random.Generator, *, heart_scale: float | None = None,
                       hyperinflation: float = 0.0) -> ChestShape:
    """Draw one adult chest; `hyperinflation` (0..1, emphysema) lowers and flattens the diaphragm."""
    size = _truncated_normal(rng, 1.0, 0.05, 0.88, 1.12)
    half_width = 158.0 * size * rng.uniform(0.96, 1.04)
    fat = rng.uniform(4.0, 24.0)
    muscle = rng.uniform(6.0, 11.0)
    wall = fat + muscle + 12.0                       # skin, fat, muscle, ribs and intercostals
    body_front = 100.0 * size * rng.uniform(0.94, 1.08) + 0.4 * fat
    body_back = 122.0 * size * rng.uniform(0.95, 1.05) + 0.4 * fat
    dome_right = rng.uniform(-145.0, -120.0) * size - 25.0 * hyperinflation
    return ChestShape(
        body_half_width=half_width,
        body_front=body_front,
        body_back=body_back,
        fat=fat,
        muscle=muscle,
        cavity_half_width=half_width - wall,
        cavity_front=body_front - wall,
        cavity_back=body_back - wall - 10.0,
        right_width_factor=rng.uniform(0.98, 1.06),
        apex_z=rng.uniform(75.0, 92.0) * size,
        dome_right_z=dome_right,
        dome_left_z=dome_right - rng.uniform(8.0, 24.0),
        dome_depth=rng.uniform(55.0, 75.0) * (1.0 - 0.4 * hyperinflation),
        heart_scale=heart_scale if heart_scale is not None else _truncated_normal(rng, 1.0, 0.06, 0.85, 1.15),
        heart_centre=(rng.uniform(-22.0, -12.0), rng.uniform(14.0, 24.0), dome_right + rng.uniform(40.0, 52.0)),
        heart_axes=(56.0, 42.0, 46.0),
        heart_angle_deg=rng.uniform(25.0, 45.0),
        spine_y=-body_back + 60.0,
        vertebra_pitch=rng.uniform(24.0, 28.0) * size,
        aorta_radius=rng.uniform(12.0, 16.0),
        # Real chests (Lung-PET-CT-Dx) leave 60-100 mm between the lungs at 60 % of the lung height and
        # 40-70 mm at 70 %, where phantoms without this term left 20-35 mm (benchmarks/RESULTS.md).
        upper_mediastinum=rng.uniform(20.0, 32.0) * size,
    )


def _waves(rng: np.random.Generator, count: int, amplitude: float, wavelength: tuple[float, float]
           ) -> tuple[tuple[float, float, float, float], ...]:
    modes = []
    for _ in range(count):
        k = 2 * np.pi / rng.uniform(*wavelength)
        angle = rng.uniform(0, 2 * np.pi)
        modes.append((float(rng.uniform(0.4, 1.0) * amplitude), float(k * np.cos(angle)),
                      float(k * np.sin(angle)), float(rng.uniform(0, 2 * np.pi))))
    return tuple(modes)


def _gap_threshold(rng: np.random.Generator, incomplete_probability: float, absent_probability: float = 0.0
                   ) -> float:
    """-inf for a complete fissure, +inf for an absent one, else a threshold leaving 10-45 % gaps."""
    draw = rng.uniform()
    if draw < absent_probability:
        return float("inf")
    if draw < absent_probability + incomplete_probability:
        return float(rng.uniform(-0.6, 0.1))
    return float("-inf")


def sample_fissures(rng: np.random.Generator, shape: ChestShape) -> tuple[FissureShape, ...]:
    """Left oblique, right oblique and right horizontal fissures with per-case shape and completeness.

    Incompleteness rates: right major 48 %, left major 43 %, minor 63 %, minor absent ~3 % (Aziz 2004).
    Offsets are solved later from lobe volume shares; here only the shape is drawn.
    """
    height = shape.apex_z - shape.dome_right_z
    fissures = []
    for side, kind, incomplete in ((-1, "oblique", 0.43), (1, "oblique", 0.48), (1, "horizontal", 0.63)):
        if kind == "oblique":
            slope = -rng.uniform(0.95, 1.35) * height / 230.0
            z_ref, y_ref = 0.0, -shape.cavity_back
            curvature = rng.uniform(-0.0025, 0.0010)
            lateral_curvature = rng.uniform(-0.0012, 0.0012)
            lateral_slope = rng.uniform(-0.12, 0.12)
            absent = 0.0
        else:
            slope = -rng.uniform(0.05, 0.25)
            z_ref, y_ref = 0.0, 0.0
            curvature = -rng.uniform(0.0, 0.0015)
            lateral_curvature = -rng.uniform(0.0, 0.0015)
            lateral_slope = -rng.uniform(0.0, 0.15)
            absent = 0.03
        fissures.append(FissureShape(
            side=side, kind=kind, z_ref=z_ref, y_ref=y_ref, slope=slope, curvature=curvature,
            lateral_curvature=lateral_curvature, lateral_slope=lateral_slope,
            waves=_waves(rng, 3, 4.0, (70.0, 160.0)),
            gaps=_waves(rng, 3, 0.6, (30.0, 90.0)),
            gap_threshold=_gap_threshold(rng, incomplete, absent),
            thickness=float(rng.uniform(1.0, 2.0)),
        ))
    return tuple(fissures)


def sample_lobe_shares(rng: np.random.Generator) -> dict[str, float]:
    """Lobe fractions of total lung volume (sum 1), drawn within the published ranges."""
    draws = {lobe: max(mean * 0.6, rng.normal(mean, sd)) for lobe, (mean, sd) in LOBE_SHARE_PERCENT.items()}
    total = sum(draws.values())
    return {lobe: value / total for lobe, value in draws.items()}


def sample_pose(rng: np.random.Generator, max_rotation_deg: float = 4.0) -> Pose:
    """A few degrees of roll/pitch/yaw and a small table offset."""
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3) * np.array([0.5, 0.5, 1.0]))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    translation = np.array([rng.uniform(-10, 10), rng.uniform(-15, 5), rng.uniform(-20, 20)])
    return Pose(rotation=rz @ ry @ rx, translation=translation)


def sample_tissue_hu(rng: np.random.Generator, *, age: float | None = None) -> TissueHU:
    """Per-case tissue attenuation around the published means (trabecular bone falls with age)."""
    age = age if age is not None else float(rng.uniform(25, 80))
    return TissueHU(
        lung=_truncated_normal(rng, -865.0, 15.0, -905.0, -830.0),
        lung_gravity_gradient=float(rng.uniform(25.0, 60.0)),
        fat=_truncated_normal(rng, -100.0, 8.0, -120.0, -80.0),
        muscle=_truncated_normal(rng, 45.0, 4.0, 35.0, 55.0),
        blood=_truncated_normal(rng, 41.0, 3.0, 34.0, 48.0),
        liver=_truncated_normal(rng, 59.0, 8.0, 40.0, 75.0),
        spleen=_truncated_normal(rng, 46.0, 4.0, 38.0, 55.0),
        cortical_bone=float(rng.uniform(700.0, 1000.0)),
        trabecular_bone=float(np.clip(290.0 - 2.5 * age + rng.normal(0, 15), 110.0, 280.0)),
        cartilage=float(rng.uniform(90.0, 160.0)),
        disc=float(rng.uniform(70.0, 95.0)),
        csf=float(rng.uniform(8.0, 20.0)),
        skin=float(rng.uniform(20.0, 45.0)),
        fissure_contrast=float(rng.uniform(250.0, 380.0)),
    )
