"""Synthetic chest CT phantoms: anatomy with curved incomplete fissures, vessel trees, findings, scanner effects.

Build a grid-independent `ChestModel` with `build_chest_model(seed, findings=...)`, then image it with
`render(model, Grid(...))`; `medseg.data.phantom.ct_case` writes complete cases (DICOM + labels + JSON).
"""

from medseg.data.phantom.findings import FINDING_KINDS
from medseg.data.phantom.model import COMPONENTS, ChestModel, Components, build_chest_model
from medseg.data.phantom.render import Grid, PhantomImage, ScannerSettings, render
from medseg.data.phantom.tissues import TISSUE_HU_BANDS, Tissue

__all__ = ["COMPONENTS", "FINDING_KINDS", "TISSUE_HU_BANDS", "ChestModel", "Components", "Grid", "PhantomImage",
           "ScannerSettings", "Tissue", "build_chest_model", "render"]
