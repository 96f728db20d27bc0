"""Tissue codes of the phantom's internal tissue map and the HU band each must fall in (for QC and tests)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["TISSUE_HU_BANDS", "Tissue"]


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
