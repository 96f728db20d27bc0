"""Synthetic chest radiographs: PA projections of phantom volumes with multi-label findings.

`synthesize_radiograph(seed, findings)` makes one image; `synthesize_cxr_dataset(out_dir, cases, seed)` writes
a dataset (PNG, DICOM DX, labels.csv, metadata.csv, manifest.yaml); `medseg.data.radiograph.cli.cxr` is the
`medseg synth cxr` command. Names are imported lazily so the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CardiothoracicRatio": "ctr", "measure_ctr": "ctr",
    "SynthCxrResult": "dataset", "synthesize_cxr_dataset": "dataset",
    "DX_FOR_PRESENTATION": "dicom_dx", "DxInfo": "dicom_dx", "write_dx": "dicom_dx",
    "CXR_CLASSES": "labels", "DEFAULT_PREVALENCE": "labels", "parse_prevalence": "labels", "sample_labels": "labels",
    "AttenuationModel": "projection", "PaGeometry": "projection", "attenuation_from_hu": "projection",
    "project_pa": "projection",
    "RenderSettings": "synth", "SyntheticCxr": "synth", "synthesize_radiograph": "synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
