"""medseg: chest CT lobe segmentation and chest X-ray classification with exact geometry.

    import medseg
    ct = medseg.load_volume("study/")
    result = medseg.segment(ct, model="runs/lobes/best.safetensors")
    rows = medseg.classify(["cxr1.png"], model="runs/cxr/best.safetensors")

The API is imported on first use, so `import medseg` stays fast and free of torch, MONAI and numpy.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError, DicomError, GeometryError, InputError, MedsegError

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "load_volume": "medseg.io.loader",
    "Volume": "medseg.io.volume",
    "segment": "medseg.api.segment",
    "Segmentation": "medseg.api.segment",
    "SegmentOptions": "medseg.api.segment",
    "classify": "medseg.api.classify",
    "ClassifyOptions": "medseg.api.classify",
    "CamOptions": "medseg.api.classify",
    "PredictionRow": "medseg.evaluate.predictions",
    "write_predictions": "medseg.evaluate.predictions",
    "run": "medseg.api.workflow",
    "create_model": "medseg.models",
    "list_models": "medseg.models",
    "evaluate_segmentation": "medseg.api.evaluate",
    "evaluate_classification": "medseg.api.evaluate",
    "ClassificationOptions": "medseg.api.evaluate",
}
"""Public name -> the module that defines it (imported on first access)."""

__all__ = [
    "CamOptions",
    "ClassificationOptions",
    "ClassifyOptions",
    "ConfigError",
    "DicomError",
    "GeometryError",
    "InputError",
    "MedsegError",
    "PredictionRow",
    "SegmentOptions",
    "Segmentation",
    "Volume",
    "__version__",
    "classify",
    "create_model",
    "evaluate_classification",
    "evaluate_segmentation",
    "list_models",
    "load_volume",
    "run",
    "segment",
    "train",
    "write_predictions",
]

if TYPE_CHECKING:
    from medseg.api.classify import CamOptions, ClassifyOptions, classify
    from medseg.api.evaluate import ClassificationOptions, evaluate_classification, evaluate_segmentation
    from medseg.api.segment import Segmentation, SegmentOptions, segment
    from medseg.api.train import train
    from medseg.api.workflow import run
    from medseg.evaluate.predictions import PredictionRow, write_predictions
    from medseg.io.loader import load_volume
    from medseg.io.volume import Volume
    from medseg.models import create_model, list_models


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medseg' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(ModuleType):
    """`medseg.train` is the API function. Importing a submodule of the `medseg.train` package would bind the
    package here; that binding is ignored (the package stays importable: `from medseg.train.config import ...`)."""

    @property
    def train(self) -> Any:
        from medseg.api.train import train

        return self.__dict__.get("_train_function", train)

    @train.setter
    def train(self, value: Any) -> None:
        if not isinstance(value, ModuleType):   # a replacement function (a test's monkeypatch, say)
            self.__dict__["_train_function"] = value


sys.modules[__name__].__class__ = _Package
