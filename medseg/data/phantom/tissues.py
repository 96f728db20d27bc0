"""Tissue codes of the phantom's internal tissue map, the HU band each must fall in (for QC and tests), and
intravenous contrast phases (how bright blood, liver and spleen are in one case)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

import numpy as np

__all__ = ["CONTRAST_PHASES", "NOT_PATIENT", "TISSUE_HU_BANDS", "Contrast", "Tissue", "sample_contrast"]


class Tissue(IntEnum):
    """What each voxel of a rendered phantom is made of (before noise and partial volume)."""

    OUTSIDE = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    CORTICAL_BONE = 4
    TRABECULAR_BONE = 5
    CARTILAGE = 6
    BLOOD = 7            # heart, aorta, pulmonary trunk, vena cava
    LUNG = 8
    AIRWAY_AIR = 9       # trachea and bronchial lumen
    LIVER = 10
    BOWEL = 11           # stomach wall and contents
    SPLEEN = 12
    EFFUSION = 13
    VESSEL = 14          # intrapulmonary vessels
    NODULE = 15
    CONSOLIDATION = 16
    EMPHYSEMA = 17
    PNEUMOTHORAX = 18
    FISSURE = 19
    CSF = 20
    DISC = 21
    GAS = 22             # stomach gas
    AIRWAY_WALL = 23
    GROUND_GLASS = 24
    TABLE = 25           # scanner table (not the patient)
    PAD = 26             # mattress, foam positioning aids, blankets, clothing (not the patient)
    LEAD = 27            # ECG electrodes and cables on the skin (not the patient)


NOT_PATIENT = (Tissue.OUTSIDE, Tissue.TABLE, Tissue.PAD, Tissue.LEAD)
"""Tissue codes that are not part of the patient's body."""


TISSUE_HU_BANDS: dict[Tissue, tuple[float, float]] = {
    Tissue.OUTSIDE: (-1010, -990),
    Tissue.FAT: (-130, -70),
    Tissue.MUSCLE: (30, 60),
    Tissue.CORTICAL_BONE: (500, 1100),
    Tissue.TRABECULAR_BONE: (100, 300),
    Tissue.BLOOD: (30, 50),
    Tissue.LUNG: (-910, -780),
    Tissue.AIRWAY_AIR: (-1010, -950),
    Tissue.LIVER: (35, 80),
    Tissue.SPLEEN: (35, 60),
    Tissue.EFFUSION: (0, 25),
    Tissue.EMPHYSEMA: (-1000, -930),
    Tissue.PNEUMOTHORAX: (-1010, -985),
    Tissue.CONSOLIDATION: (0, 60),
    Tissue.GROUND_GLASS: (-750, -450),
}
"""Bands for the mean HU of a tissue's voxels in a noise-free render (published figures, ANATOMY.md)."""


CONTRAST_PHASES = ("none", "arterial", "pulmonary", "venous")


@dataclass(frozen=True)
class Contrast:
    """Blood attenuation of one case (HU): without contrast everything is ~40 HU; with it the vessels light up.

    "arterial" (CT angiography of the aorta): aorta and left heart 200-400 HU; "pulmonary" (CT pulmonary
    angiography): pulmonary arteries and right heart 250-450 HU, aorta lower; "venous" (routine contrast
    chest CT, ~60-70 s): everything 120-200 HU and the liver and spleen enhanced. The superior vena cava can
    hold undiluted contrast (up to ~1500 HU) in the early phases.
    """

    phase: str
    aorta: float
    pulmonary_artery: float
    pulmonary_vein: float
    heart: float
    vena_cava: float
    liver_boost: float = 0.0
    spleen_boost: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {key: round(value, 1) if isinstance(value, float) else value for key, value in asdict(self).items()}


def sample_contrast(rng: np.random.Generator, blood: float, *, probability: float = 0.45) -> Contrast:
    """A contrast phase for one case (none with probability 1 - `probability`) around published HU."""
    if rng.uniform() >= probability:
        return Contrast("none", blood, blood, blood, blood, blood)
    phase = str(rng.choice(["arterial", "pulmonary", "venous"], p=[0.3, 0.25, 0.45]))
    if phase == "arterial":
        aorta = rng.uniform(200.0, 400.0)
        pa = aorta * rng.uniform(0.55, 0.9)
        return Contrast(phase, aorta, pa, aorta * rng.uniform(0.9, 1.0), aorta * rng.uniform(0.8, 0.95),
                        rng.uniform(250.0, 1500.0), rng.uniform(5.0, 20.0), rng.uniform(20.0, 60.0))
    if phase == "pulmonary":
        pa = rng.uniform(250.0, 450.0)
        aorta = pa * rng.uniform(0.4, 0.8)
        return Contrast(phase, aorta, pa, aorta * rng.uniform(1.0, 1.2), pa * rng.uniform(0.7, 0.9),
                        rng.uniform(300.0, 1500.0), rng.uniform(0.0, 10.0), rng.uniform(10.0, 40.0))
    level = rng.uniform(120.0, 200.0)
    return Contrast(phase, level, level * rng.uniform(0.95, 1.05), level * rng.uniform(0.95, 1.05),
                    level * rng.uniform(0.95, 1.02), level * rng.uniform(0.95, 1.1), rng.uniform(40.0, 70.0),
                    rng.uniform(50.0, 80.0))
