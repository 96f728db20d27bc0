"""Radiograph finding classes, their default prevalence and the per-case multi-label sampler."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from medseg.errors import ConfigError

__all__ = ["CXR_CLASSES", "DEFAULT_PREVALENCE", "parse_prevalence", "resolve_prevalence", "sample_labels"]

CXR_CLASSES: tuple[str, ...] = ("nodule", "effusion", "cardiomegaly", "pneumothorax", "consolidation", "emphysema")
"""Classification classes, in `labels.csv` column order (each is a phantom finding kind)."""

DEFAULT_PREVALENCE: dict[str, float] = {
    "nodule": 0.10, "effusion": 0.15, "cardiomegaly": 0.08, "pneumothorax": 0.06, "consolidation": 0.07,
    "emphysema": 0.05,
}
"""Imbalanced like ChestX-ray14 (effusion most, emphysema least common; ANATOMY.md), scaled into 5-20 %."""


def resolve_prevalence(prevalence: Mapping[str, float] | None = None) -> dict[str, float]:
    """Defaults overridden by `prevalence`; unknown classes and values outside [0, 1] are `ConfigError`s."""
    resolved = dict(DEFAULT_PREVALENCE)
    for name, value in (prevalence or {}).items():
        if name not in resolved:
            raise ConfigError(f"unknown finding {name!r} in prevalence; choose from {', '.join(CXR_CLASSES)}")
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"prevalence of {name} must be between 0 and 1, got {value:g}")
        resolved[name] = value
    return resolved


def parse_prevalence(items: Iterable[str]) -> dict[str, float]:
    """Parse `finding=0.1` strings (a trailing % is accepted: `effusion=12%`)."""
    parsed: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise ConfigError(f"prevalence must look like finding=0.1, got {item!r}")
        try:
            value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
        except ValueError:
            raise ConfigError(f"prevalence of {name} is not a number: {text!r}") from None
        parsed[name] = value
    return resolve_prevalence(parsed)


def sample_labels(rng: np.random.Generator, cases: int, prevalence: Mapping[str, float] | None = None,
                  ensure_each: bool = True) -> np.ndarray:
    """(cases, classes) 0/1 array: each finding independently Bernoulli(p) per case.

    With `ensure_each`, a class with 0 < p < 1 that drew no positive (or no negative) case gets one, flipped
    in a randomly chosen case, so that every class can be evaluated (ROC-AUC needs both); this only matters
    for small datasets and rare classes.
    """
    p = np.array([resolve_prevalence(prevalence)[name] for name in CXR_CLASSES])
    labels = (rng.random((cases, len(CXR_CLASSES))) < p).astype(np.uint8)
    if ensure_each and cases >= 2:
        for column, share in enumerate(p):
            for missing in (1, 0):
                if 0.0 < share < 1.0 and not (labels[:, column] == missing).any():
                    labels[int(rng.integers(cases)), column] = missing
    return labels
