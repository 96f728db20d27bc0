"""Point-wise anatomy: which tissue and lobe lies at each body-frame point, and its noise-free HU.

`evaluate_points` works on arrays of any shape, so the same code fills one CT slice, a coarse 3D grid
used to calibrate lobe volumes, or a radiograph's projection volume. Tubular and small round structures
(great vessels, vessel and airway trees, nodules) are painted afterwards by `medseg.data.phantom.tubes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medseg.data.phantom.tissues import Tissue
from medseg.labels import label_map

if TYPE_CHECKING:
    from medseg.data.phantom.model import ChestModel

__all__ = ["PointLabels", "body_outline", "cavity_extent", "dome_height", "evaluate_points", "lobe_coordinates",
           "lobe_labels", "mediastinum_half_width", "pleural_space"]

LOBES = {label.short: label.value for label in label_map("lobes").foreground}
"""Lobe abbreviation -> label value, from the registry (`configs/labels/lobes.yaml`)."""
_BODY_EXPONENT = 2.4


@dataclass
class PointLabels:
    """Tissue code, lobe label (0-5) and noise-free HU for each evaluated point."""

    tissue: np.ndarray
    lobe: np.ndarray
    hu: np.ndarray


def body_outline(model: ChestModel, theta: np.ndarray, offset: np.ndarray | float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame (x, y) of the skin at angles `theta` (radians from +x, the patient's right, towards +y,
    anterior), pushed `offset` mm outwards along the radius. The outline is the same at every height."""
    s = model.shape
    c, n = np.cos(theta), np.sin(theta)
    x = s.body_half_width * np.sign(c) * np.abs(c) ** (2.0 / _BODY_EXPONENT)
    y = np.where(n >= 0, s.body_front, s.body_back) * np.sign(n) * np.abs(n) ** (2.0 / _BODY_EXPONENT)
    radius = np.maximum(np.hypot(x, y), 1e-6)
    return x + offset * x / radius, y + offset * y / radius


def cavity_extent(model: ChestModel, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
    """Half-width, front and back of the inner rib cage at each point (a cone narrowing to the apices)."""
    s = model.shape
    widest = s.dome_right_z - 10.0
    t = np.clip((z - widest) / (s.apex_z + 20.0 - widest), 0.0, 1.0)
    t2 = t * t
    width = s.cavity_half_width * (1.0 - 0.12 * t - 0.25 * t2) * np.where(x > 0, s.right_width_factor, 1.0)
    return width, s.cavity_front * (1.0 - 0.2 * t2), s.cavity_back * (1.0 - 0.1 * t2)


def dome_height(model: ChestModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the diaphragm: domes peaking mid-clavicular, right higher, recesses falling all round."""
    s = model.shape
    top = np.where(x >= 0, s.dome_right_z, s.dome_left_z)
    across = (np.abs(x) - 0.42 * s.cavity_half_width) / (0.58 * s.cavity_half_width)
    posterior = np.clip((10.0 - y) / s.cavity_back, 0.0, 1.2)
    anterior = np.clip((y - 10.0) / s.cavity_front, 0.0, 1.2)
    return top - s.dome_depth * (0.7 * across * across + 0.75 * posterior * posterior + 0.35 * anterior * anterior)


def mediastinum_half_width(model: ChestModel, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Distance from the midline that the mediastinum and spine keep free of lung."""
    s = model.shape
    spine = 19.0 * np.exp(-(((y - s.spine_y) / 20.0) ** 2))
    behind_spine = np.where(y < s.spine_y, 19.0 + 20.0 * np.clip((s.spine_y - y) / 30.0, 0.0, 1.0), spine)
    upper = 14.0 * np.exp(-(((y + 15.0) / 28.0) ** 2)) / (1.0 + np.exp(-(z + 40.0) / 8.0))
    return 8.0 + behind_spine + np.maximum(upper, _great_vessels(model, y, z))


def _great_vessels(model: ChestModel, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Half-width of the upper mediastinum (ascending aorta, arch, SVC, brachiocephalic vessels, thymic fat):
    from the top of the heart up, widest just above it, narrowing towards the thoracic inlet."""
    s = model.shape
    if s.upper_mediastinum <= 0:
        return np.zeros(np.broadcast(y, z).shape, dtype=np.float32)
    heart_top = s.heart_centre[2] + s.heart_axes[2] * s.heart_scale - 11.0   # the vessels leave the heart's top
    rise = 1.0 / (1.0 + np.exp(-(z - heart_top) / 10.0))
    inlet = 0.3 + 0.7 / (1.0 + np.exp((z - 20.0) / 15.0))
    across = np.exp(-((np.abs(y - 5.0) / 65.0) ** 4))
    front = 80.0 - 1.2 * np.clip(z + 10.0, 0.0, 60.0)      # higher up the lungs meet behind the sternum
    anterior = 1.0 / (1.0 + np.exp((y - front) / 12.0))
    return s.upper_mediastinum * rise * inlet * across * anterior


def _heart_radius(model: ChestModel, x: np.ndarray, y: np.ndarray, z: np.ndarray, grow: float = 0.0
                  ) -> np.ndarray:
    """Normalised ellipsoid radius of the heart (1 on its surface), axes grown by `grow` mm."""
    s = model.shape
    angle = np.deg2rad(s.heart_angle_deg)
    cx, cy, cz = s.heart_centre
    dx, dy = x - cx, y - cy
    along = -dx * np.cos(angle) + dy * np.sin(angle)
    across = dx * np.sin(angle) + dy * np.cos(angle)
    a, b, c = (axis * s.heart_scale + grow for axis in s.heart_axes)
    return (along / a) ** 2 + (across / b) ** 2 + ((z - cz) / c) ** 2


def pleural_space(model: ChestModel, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """True inside either pleural cavity (lung plus any effusion or pneumothorax)."""
    width, front, back = cavity_extent(model, x, z)
    yn = np.where(y >= 0, y / front, y / back)
    inside = (x / width) ** 2 + yn * yn <= 1.0
    inside &= z > dome_height(model, x, y)
    inside &= _heart_radius(model, x, y, z, grow=4.0) > 1.0
    return inside & _apex_and_mediastinum(model, x, y, z)


def _apex_and_mediastinum(model: ChestModel, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Points lateral to the mediastinum and below the rounded lung apices."""
    s = model.shape
    ok = np.abs(x) > mediastinum_half_width(model, y, z)
    cap = s.apex_z - 85.0
    high = z > cap
    if high.any():
        hx, hy, hz = x[high], y[high], z[high]
        apex = ((np.abs(hx) - 0.45 * s.cavity_half_width) / (0.7 * s.cavity_half_width)) ** 2
        apex = apex + ((hy + 0.15 * s.cavity_back) / (1.0 * (s.cavity_front + s.cavity_back) / 2)) ** 2
        apex = apex + ((hz - cap) / (s.apex_z - cap)) ** 2
        ok[high] &= apex <= 1.0
    return ok


def lobe_coordinates(model: ChestModel, x: np.ndarray, y: np.ndarray, z: np.ndarray
                     ) -> dict[str, np.ndarray]:
    """Signed heights above each fissure (negative = below): the coordinates lobe labels are cut on."""
    return {name: z - fissure.height(x, y) for name, fissure in model.fissures.items()}


def lobe_labels(model: ChestModel, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, dict]:
    """Lobe label (1-5) of pleural-space points, and their heights above each fissure."""
    heights = lobe_coordinates(model, x, y, z)
    right = x >= 0
    left_label = np.where(heights["left_oblique"] < 0, LOBES["LLL"], LOBES["LUL"])
    right_upper = np.where(heights["right_horizontal"] < 0, LOBES["RML"], LOBES["RUL"])
    right_label = np.where(heights["right_oblique"] < 0, LOBES["RLL"], right_upper)
    return np.where(right, right_label, left_label).astype(np.uint8), heights


def _fissure_lines(model: ChestModel, x: np.ndarray, y: np.ndarray, heights: dict[str, np.ndarray],
                   lobe: np.ndarray) -> np.ndarray:
    """Fissure line strength 0..1 (Gaussian profile across the surface, zero in the gaps)."""
    strength = np.zeros(x.shape, dtype=np.float32)
    if not model.components.fissures:
        return strength
    for name, fissure in model.fissures.items():
        side_lobes = (LOBES["RUL"], LOBES["RML"]) if fissure.kind == "horizontal" else (
            (LOBES["RUL"], LOBES["RML"], LOBES["RLL"]) if fissure.side > 0 else (LOBES["LUL"], LOBES["LLL"]))
        distance = heights[name] / fissure.normal_scale
        near = (np.abs(distance) < 2.0 * fissure.thickness) & np.isin(lobe, side_lobes)
        if not near.any():
            continue
        profile = np.exp(-2.77 * (distance[near] / fissure.thickness) ** 2)
        profile *= fissure.visible(x[near], y[near])
        strength[near] = np.maximum(strength[near], profile)
    return strength


def evaluate_points(model: ChestModel, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                    texture: np.ndarray | float = 0.0, patches: np.ndarray | float = 0.0) -> PointLabels:
    """Tissue, lobe and HU at body-frame points (any array shape).

    `texture` (HU, zero-mean) modulates lung and fat; `patches` (about -1..1) shapes emphysema and
    consolidation borders. Both come from `medseg.data.phantom.fields` or are 0 for calibration.
    """
    s = model.shape
    shape = np.shape(x)
    result = PointLabels(tissue=np.zeros(shape, dtype=np.uint8), lobe=np.zeros(shape, dtype=np.uint8),
                         hu=np.full(shape, -1000.0, dtype=np.float32))
    yb = np.where(y >= 0, y / s.body_front, y / s.body_back)
    rho = (np.abs(x / s.body_half_width) ** _BODY_EXPONENT + np.abs(yb) ** _BODY_EXPONENT) ** (1 / _BODY_EXPONENT)
    body = rho <= 1.0
    if not body.any():
        return result
    inside = np.flatnonzero(body)
    texture = np.broadcast_to(np.asarray(texture, dtype=np.float32), shape).reshape(-1)[inside]
    patches = np.broadcast_to(np.asarray(patches, dtype=np.float32), shape).reshape(-1)[inside]
    labels = _evaluate_body(model, x.reshape(-1)[inside], y.reshape(-1)[inside], z.reshape(-1)[inside],
                            rho.reshape(-1)[inside], texture, patches)
    for name in ("tissue", "lobe", "hu"):
        getattr(result, name).reshape(-1)[inside] = getattr(labels, name)
    return result


def _evaluate_body(model: ChestModel, x: np.ndarray, y: np.ndarray, z: np.ndarray, rho: np.ndarray,
                   texture: np.ndarray, patches: np.ndarray) -> PointLabels:
    """`evaluate_points` for points inside the body outline (1-D arrays)."""
    s, hu_of = model.shape, model.hu
    tissue = np.full(x.shape, Tissue.MUSCLE, dtype=np.uint8)
    hu = np.full(x.shape, hu_of.muscle, dtype=np.float32)
    lobe = np.zeros(x.shape, dtype=np.uint8)

    # body wall: skin, fat, muscle (depth measured along the ray from the body centre)
    radius = np.sqrt(x * x + y * y)
    depth = radius * (1.0 / np.maximum(rho, 1e-6) - 1.0)
    sin2 = (x * x) / np.maximum(radius * radius, 1e-6)          # sin^2 of the angle from the back
    cos_back = -y / np.maximum(radius, 1e-6)                     # cos of the angle from the back
    fat_depth = 2.0 + s.fat * (0.75 + 0.5 * sin2)
    _set(tissue, hu, depth < fat_depth, Tissue.FAT, hu_of.fat + 0.3 * texture)
    _set(tissue, hu, depth < 2.0, Tissue.SKIN, hu_of.skin)

    # thoracic and abdominal cavity inside the rib cage
    width, front, back = cavity_extent(model, x, z)
    yn = np.where(y >= 0, y / front, y / back)
    rho_cavity = np.sqrt((x / width) ** 2 + yn * yn)
    cavity = (rho_cavity <= 1.0) & ~((y < s.spine_y - 12.0) & (np.abs(x) < 40.0))
    dome = dome_height(model, x, y)
    _set(tissue, hu, cavity, Tissue.FAT, hu_of.fat + 0.3 * texture)             # mediastinal fat
    _set(tissue, hu, cavity & (z <= dome) & (z > dome - 5.0), Tissue.MUSCLE, hu_of.muscle)
    _abdomen(model, tissue, hu, cavity & (z <= dome - 5.0), x, y, z)

    reach = max(s.heart_axes) * s.heart_scale + 6.0
    cx, cy, cz = s.heart_centre
    near_heart = cavity & (np.abs(x - cx) < reach) & (np.abs(y - cy) < reach) & (np.abs(z - cz) < reach)
    heart_fat = np.zeros(x.shape, dtype=bool)
    if near_heart.any():
        index = np.flatnonzero(near_heart)
        hx, hy, hz = x[index], y[index], z[index]
        above = hz > dome[index] - 20.0
        heart_fat[index] = _heart_radius(model, hx, hy, hz, grow=4.0) <= 1.0
        _set(tissue, hu, _scatter(x.shape, index, above & heart_fat[index]), Tissue.FAT, hu_of.fat)
        _set(tissue, hu, _scatter(x.shape, index, above & (_heart_radius(model, hx, hy, hz) <= 1.0)),
             Tissue.BLOOD, hu_of.blood)

    pleural = cavity & (z > dome) & ~heart_fat & _apex_and_mediastinum(model, x, y, z)
    if pleural.any():
        _lungs(model, tissue, hu, lobe, pleural, x, y, z, texture, patches)

    _ribs(model, tissue, hu, x, z, radius, rho_cavity, cos_back)
    _sternum(model, tissue, hu, x, y, z)
    _spine(model, tissue, hu, x, y, z)
    _scapulae(model, tissue, hu, x, z, radius, rho_cavity, cos_back)
    return PointLabels(tissue=tissue, lobe=lobe, hu=hu)


def _scatter(shape: tuple[int, ...], index: np.ndarray, values: np.ndarray) -> np.ndarray:
    full = np.zeros(shape, dtype=bool)
    full[index] = values
    return full


def _set(tissue: np.ndarray, hu: np.ndarray, where: np.ndarray, code: Tissue, value: np.ndarray | float) -> None:
    tissue[where] = code
    hu[where] = value[where] if isinstance(value, np.ndarray) else value


def _abdomen(model: ChestModel, tissue: np.ndarray, hu: np.ndarray, abdomen: np.ndarray,
             x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    if not abdomen.any():
        return
    s, hu_of = model.shape, model.hu
    liver = abdomen & (x > -30.0 - 0.25 * y) & (z > s.dome_right_z - 200.0)
    _set(tissue, hu, liver, Tissue.LIVER, hu_of.liver)
    stomach_centre = np.array([-62.0, 12.0, s.dome_left_z - 45.0])
    stomach = abdomen & ~liver & ((((x - stomach_centre[0]) / 45.0) ** 2 + ((y - stomach_centre[1]) / 42.0) ** 2
                                   + ((z - stomach_centre[2]) / 55.0) ** 2) <= 1.0)
    _set(tissue, hu, stomach, Tissue.BOWEL, 25.0)
    gas_axis = y if model.posture == "supine" else z - stomach_centre[2] + stomach_centre[1]
    _set(tissue, hu, stomach & (gas_axis > stomach_centre[1] + 18.0), Tissue.GAS, -1000.0)
    spleen = abdomen & ~liver & ((((x + 88.0) / 28.0) ** 2 + ((y + 42.0) / 45.0) ** 2
                                  + ((z - s.dome_left_z + 38.0) / 55.0) ** 2) <= 1.0)
    _set(tissue, hu, spleen, Tissue.SPLEEN, model.hu.spleen)


def _lungs(model: ChestModel, tissue: np.ndarray, hu: np.ndarray, lobe: np.ndarray, pleural: np.ndarray,
           x: np.ndarray, y: np.ndarray, z: np.ndarray, texture: np.ndarray, patches: np.ndarray) -> None:
    """Fill the pleural spaces: lobes, parenchyma with gravity gradient, fissures and diffuse findings."""
    s, hu_of = model.shape, model.hu
    px, py, pz = x[pleural], y[pleural], z[pleural]
    labels, heights = lobe_labels(model, px, py, pz)
    if model.posture == "supine":
        dependent = np.clip((s.cavity_front - py) / (s.cavity_front + s.cavity_back), 0.0, 1.0)
    else:
        dependent = np.clip((s.apex_z - pz) / (s.apex_z - s.dome_left_z + 60.0), 0.0, 1.0)
    values = hu_of.lung + hu_of.lung_gravity_gradient * dependent * dependent
    if model.components.texture:
        values = values + texture[pleural]
    codes = np.full(px.shape, Tissue.LUNG, dtype=np.uint8)
    lines = _fissure_lines(model, px, py, heights, labels)
    values = values + hu_of.fissure_contrast * lines
    codes[lines > 0.5] = Tissue.FISSURE
    for finding in model.diffuse_findings():
        finding.apply(model, px, py, pz, labels, codes, values, patches[pleural])
    tissue[pleural] = codes
    hu[pleural] = values
    lobe[pleural] = labels


def _ribs(model: ChestModel, tissue: np.ndarray, hu: np.ndarray, x: np.ndarray, z: np.ndarray,
          radius: np.ndarray, rho_cavity: np.ndarray, cos_back: np.ndarray) -> None:
    """Twelve rib pairs in the chest wall, falling anteriorly, with cortex, marrow and costal cartilage."""
    if not model.components.bones:
        return
    s = model.shape
    outside = radius * (1.0 - 1.0 / np.maximum(rho_cavity, 1e-6))
    band = np.flatnonzero((outside > 0.5) & (outside < 13.0) & (np.abs(x) > 28.0))
    if not band.size:
        return
    bz, bc, bo = z[band], cos_back[band], outside[band]
    lift = (1.0 - bc) / 2.0                      # 0 at the back, 1 at the front
    top = s.vertebra_pitch * 3.6
    guess = np.rint((top - bz - 60.0 * lift) / s.vertebra_pitch)
    drop = 40.0 + 5.0 * np.clip(guess, 0, 11)
    position = (top - bz - drop * lift) / s.vertebra_pitch
    index = np.rint(position)
    along = (position - index) * s.vertebra_pitch
    half_height = np.where(bc > -0.03, 6.5, 5.0)
    ellipse = (along / half_height) ** 2 + ((bo - 6.5) / 4.5) ** 2
    in_rib = (ellipse <= 1.0) & (index >= 0) & (index <= 11)
    # where bone gives way to costal cartilage, and where the cartilage ends (as cos of the angle)
    bone_end = np.select([index <= 6, index <= 9], [np.cos(0.78 * np.pi), np.cos(0.70 * np.pi)], np.cos(0.55 * np.pi))
    cartilage_end = np.select([index <= 6, index <= 9], [-1.01, np.cos(0.9 * np.pi)], np.cos(0.55 * np.pi))
    codes = tissue[band]
    values = hu[band]
    bone = in_rib & (bc >= bone_end)
    cartilage = in_rib & (bc < bone_end) & (bc >= cartilage_end)
    cortex = ellipse > 0.45
    codes[bone] = np.where(cortex[bone], Tissue.CORTICAL_BONE, Tissue.TRABECULAR_BONE)
    values[bone] = np.where(cortex[bone], model.hu.cortical_bone, model.hu.trabecular_bone)
    codes[cartilage] = Tissue.CARTILAGE
    values[cartilage] = model.hu.cartilage
    tissue[band] = codes
    hu[band] = values


def _sternum(model: ChestModel, tissue: np.ndarray, hu: np.ndarray, x: np.ndarray, y: np.ndarray,
             z: np.ndarray) -> None:
    if not model.components.bones:
        return
    s = model.shape
    top, bottom = s.vertebra_pitch * 2.2, s.dome_right_z - 15.0
    centre_y = s.cavity_front + 7.0
    half_width = np.where(z > top - 45.0, 26.0, 16.0)
    ellipse = (x / half_width) ** 2 + ((y - centre_y) / 6.5) ** 2
    bone = (ellipse <= 1.0) & (z < top) & (z > bottom)
    _set(tissue, hu, bone, Tissue.TRABECULAR_BONE, model.hu.trabecular_bone)
    _set(tissue, hu, bone & (ellipse > 0.5), Tissue.CORTICAL_BONE, model.hu.cortical_bone)


def _spine(model: ChestModel, tissue: np.ndarray, hu: np.ndarray, x: np.ndarray, y: np.ndarray,
           z: np.ndarray) -> None:
    """Vertebral bodies with discs, spinal canal, laminae, spinous and transverse processes."""
    if not model.components.bones:
        return
    s, hu_of = model.shape, model.hu
    region = (np.abs(x) < 45.0) & (y < s.spine_y + 22.0) & (y > s.spine_y - 60.0)
    if not region.any():
        return
    rx, ry, rz = x[region], y[region], z[region]
    codes, values = tissue[region], hu[region]
    phase = np.mod((s.vertebra_pitch * 3.6 - rz) / s.vertebra_pitch + 0.5, 1.0)
    in_disc = (phase < 0.11) | (phase > 0.89)
    vertebra = (rx / 19.0) ** 2 + ((ry - s.spine_y) / 16.0) ** 2
    body_bone = (vertebra <= 1.0) & ~in_disc
    codes[(vertebra <= 1.0) & in_disc] = Tissue.DISC
    values[(vertebra <= 1.0) & in_disc] = hu_of.disc
    codes[body_bone] = np.where(vertebra[body_bone] > 0.8, Tissue.CORTICAL_BONE, Tissue.TRABECULAR_BONE)
    values[body_bone] = np.where(vertebra[body_bone] > 0.8, hu_of.cortical_bone, hu_of.trabecular_bone)
    canal_y = s.spine_y - 25.0
    canal = (rx / 9.0) ** 2 + ((ry - canal_y) / 8.0) ** 2
    arch_phase = (phase > 0.2) & (phase < 0.8)
    lamina = (canal > 1.0) & (canal <= 2.6) & (ry < canal_y + 4.0) & arch_phase
    spinous = (np.abs(rx) < 4.0) & (ry < canal_y - 8.0) & (ry > canal_y - 30.0) & (phase > 0.3) & (phase < 0.75)
    transverse = (np.abs(rx) > 12.0) & (np.abs(rx) < 36.0) & (np.abs(ry - canal_y - 2.0) < 5.0) & (
        phase > 0.35) & (phase < 0.7)
    processes = lamina | spinous | transverse
    codes[processes] = Tissue.CORTICAL_BONE
    values[processes] = 0.5 * (hu_of.cortical_bone + hu_of.trabecular_bone)
    codes[canal <= 1.0] = Tissue.CSF
    values[canal <= 1.0] = hu_of.csf
    tissue[region] = codes
    hu[region] = values


def _scapulae(model: ChestModel, tissue: np.ndarray, hu: np.ndarray, x: np.ndarray, z: np.ndarray,
              radius: np.ndarray, rho_cavity: np.ndarray, cos_back: np.ndarray) -> None:
    """Thin triangular plates behind the upper ribs, widening towards the shoulder."""
    if not model.components.bones:
        return
    s = model.shape
    top, bottom = s.vertebra_pitch * 4.2, s.vertebra_pitch * -3.5
    candidates = np.flatnonzero((z > bottom) & (z < top) & (np.abs(x) > 60.0) & (cos_back > 0.0))
    if not candidates.size:
        return
    cz, cx = z[candidates], np.abs(x[candidates])
    rise = np.clip((cz - bottom) / (top - bottom), 0.0, 1.0)
    outside = radius[candidates] * (1.0 - 1.0 / np.maximum(rho_cavity[candidates], 1e-6))
    medial = 62.0 + 6.0 * rise
    plate = (cx > medial) & (cx < medial + 10.0 + 75.0 * rise)
    plate &= (outside > 16.0 + 2.0 * rise) & (outside < 20.5 + 4.0 * rise)
    chosen = candidates[plate]
    tissue[chosen] = Tissue.CORTICAL_BONE
    hu[chosen] = 0.6 * model.hu.cortical_bone + 0.4 * model.hu.trabecular_bone
