"""Preprocessing and augmentation settings (`configs/preprocessing/*.yaml`), validated by pydantic.

Unknown keys are refused with a `ConfigError` (`medseg.configfile.ConfigSchemaError`) that names the file, the
key's location and the closest valid key. `PreprocessingConfig.model_dump()` (python or json mode) validates
back to an equal config, so a config can be stored inside a model checkpoint and rebuilt from it.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from os import PathLike
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from medseg.configfile import load_config, validate_config
from medseg.errors import ConfigError
from medseg.labels import label_map

__all__ = [
    "LOBE_SWAP",
    "LUNG_SIDE_SWAP",
    "AugmentationConfig",
    "ClaheConfig",
    "PreprocessingConfig",
    "WindowConfig",
    "load_preprocessing_config",
    "preprocessing_config_from_dict",
]

LUNG_SIDE_SWAP: dict[int, int] = label_map("lungs").swap()
"""Label swap for the left/right lung task (registry map "lungs"): exact under a left-right flip."""

LOBE_SWAP: dict[int, int] = label_map("lobes").swap()
"""Mutual mirror pairs of the registry's lobes (LUL<->RUL, LLL<->RLL); RML has no left counterpart and keeps
its label (see `lobe_swap_map`)."""

Prob = typing.Annotated[float, Field(ge=0.0, le=1.0)]
PositiveRange = typing.Annotated[tuple[float, float], Field(description="(low, high), 0 < low <= high")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_range(value: tuple[float, float], name: str, positive: bool = True) -> tuple[float, float]:
    low, high = value
    if low > high or (positive and low <= 0):
        rule = "0 < low <= high" if positive else "low <= high"
        raise ValueError(f"{name} must be (low, high) with {rule}, got {value}")
    return value


class WindowConfig(_Strict):
    """A CT intensity window in Hounsfield units; YAML may also give it as `[center, width]`."""

    center: float
    width: float = Field(gt=0)
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)) and len(data) == 2:
            return {"center": data[0], "width": data[1]}
        return data


class ClaheConfig(_Strict):
    """OpenCV CLAHE settings: clip limit (multiple of the mean histogram bin), tiles (rows, columns), bits."""

    clip_limit: float = Field(2.0, gt=0)
    tile_grid: tuple[int, int] = (8, 8)
    bits: Literal[8, 16] = 8

    @field_validator("tile_grid")
    @classmethod
    def _tiles(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"tile_grid must be two integers >= 1, got {value}")
        return value


class AugmentationConfig(_Strict):
    """Random training augmentation of 2D `(C, H, W)` samples; every operation has its own probability.

    Spatial: one affine resample (rotation in +-`rotate_degrees`, isotropic scale drawn from `scale`) with
    probability `spatial_prob`; with `elastic` the same draw also adds a B-spline deformation (Rand2DElasticd,
    one resample, several times slower). Intensity: scale by 1 + U(-intensity_scale, intensity_scale), shift by
    U(-intensity_shift, intensity_shift), gamma from `gamma`, Gaussian noise with std U(0, noise_std).

    Scanner domain (CT only, in HU before windowing, `medseg.transforms.scanner.ScannerAugment`; each effect off
    at probability 0): thicker slices (`scanner_thick_factor` times the model's slice spacing, profile-averaged
    and interpolated back), lower in-plane resolution (`scanner_lowres_factor`), a soft (Gaussian blur, sigma
    px) or sharp (unsharp mask, amount) reconstruction kernel, added noise up to `scanner_noise_hu` HU with
    random texture, and HU miscalibration (scale about water-air by +-`scanner_hu_scale`, offset +-
    `scanner_hu_offset` HU).

    `position_dropout`: with `position_channel`, the share of training samples shown the "unknown" height
    (`medseg.transforms.position`), as partial scans are at inference.

    Left-right flip: `flip_lr` is False (default), True (flip, labels remapped by `swap` when given), or
    "swap" (flip and remap; `swap` required). `flip_axis` is the spatial axis of the samples that runs
    left-right (0 = H for axial slices of a RAS volume, 1 = W for radiographs) and must be set to flip.
    `swap` maps label values {from: to} and must be its own inverse (a value missing maps to itself).
    """

    rotate_degrees: float = Field(10.0, ge=0, le=180)
    scale: PositiveRange = (0.9, 1.1)
    spatial_prob: Prob = 0.5
    elastic: bool = False
    elastic_spacing: tuple[int, int] = (32, 32)
    elastic_magnitude: tuple[float, float] = (0.0, 2.0)
    intensity_scale: float = Field(0.1, ge=0, lt=1)
    intensity_shift: float = Field(0.05, ge=0)
    intensity_prob: Prob = 0.5
    gamma: PositiveRange = (0.8, 1.25)
    gamma_prob: Prob = 0.5
    noise_std: float = Field(0.02, ge=0)
    noise_prob: Prob = 0.5
    flip_lr: bool | Literal["swap"] = False
    flip_axis: Literal[0, 1] | None = None
    scanner_thick_prob: Prob = 0.0
    scanner_thick_factor: PositiveRange = (1.5, 3.2)
    scanner_lowres_prob: Prob = 0.0
    scanner_lowres_factor: PositiveRange = (1.3, 2.5)
    scanner_kernel_prob: Prob = 0.0
    scanner_blur_sigma: PositiveRange = (0.4, 1.2)
    scanner_sharpen_amount: PositiveRange = (0.3, 1.2)
    scanner_noise_prob: Prob = 0.0
    scanner_noise_hu: float = Field(40.0, ge=0)
    scanner_hu_prob: Prob = 0.0
    scanner_hu_scale: float = Field(0.04, ge=0, lt=1)
    scanner_hu_offset: float = Field(30.0, ge=0)
    position_dropout: Prob = 0.2
    flip_prob: Prob = 0.5
    swap: dict[int, int] | None = None

    @field_validator("scale", "gamma", "scanner_thick_factor", "scanner_lowres_factor", "scanner_blur_sigma",
                     "scanner_sharpen_amount")
    @classmethod
    def _positive_range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        return _check_range(value, info.field_name)

    @field_validator("elastic_magnitude")
    @classmethod
    def _magnitude(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] < 0:
            raise ValueError(f"elastic_magnitude must be >= 0, got {value}")
        return _check_range(value, "elastic_magnitude", positive=False)

    @field_validator("elastic_spacing")
    @classmethod
    def _spacing(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 2:
            raise ValueError(f"elastic_spacing (control point distance, pixels) must be >= 2, got {value}")
        return value

    @field_validator("swap")
    @classmethod
    def _involution(cls, value: dict[int, int] | None) -> dict[int, int] | None:
        if value is None:
            return value
        broken = [f"{a}->{b}" for a, b in value.items() if value.get(b, b) != a]
        if broken:
            raise ValueError(f"swap must be its own inverse (a->b needs b->a); not so for {', '.join(broken)}")
        return value

    @model_validator(mode="after")
    def _flip(self) -> AugmentationConfig:
        if self.flip_lr is not False and self.flip_axis is None:
            raise ValueError("flip_lr needs flip_axis: the sample axis that runs left-right (0 = H, 1 = W)")
        if self.flip_lr == "swap" and not self.swap:
            raise ValueError('flip_lr: "swap" needs a swap map, e.g. swap: {1: 2, 2: 1}')
        return self

    @property
    def flips(self) -> bool:
        """Whether a left-right flip is part of the augmentation."""
        return self.flip_lr is not False


class PreprocessingConfig(_Strict):
    """How images become network inputs; stored with each model so inference preprocesses identically.

    CT (`modality: ct`): HU `windows` (one channel each), `stack` slices per 2.5D input (odd), target
    `spacing` in mm (x, y, z after RAS orientation; None keeps the scan's spacing), `roi_margin_mm` around the
    lung bounding box, `position_channel` (one more input channel: the slice's height in the lung crop, see
    `medseg.transforms.position`). X-ray: `image_size` (rows, columns; None keeps the size) and optional `clahe`.
    `labels` names the label map so side-specific labels are protected from a plain left-right flip:
    "lobes" (the registry's lobe map, `configs/labels/lobes.yaml`), "lung_sides" (its "lungs" map) or "side_agnostic"
    (binary masks, classification). It defaults to "lobes" for CT and "side_agnostic" for X-ray.
    """

    modality: Literal["ct", "xray"]
    labels: Literal["lobes", "lung_sides", "side_agnostic"] | None = None
    windows: list[WindowConfig] = Field(default_factory=list)
    stack: int = Field(1, ge=1)
    spacing: tuple[float, float, float] | None = None
    roi_margin_mm: float = Field(10.0, ge=0)
    clahe: ClaheConfig | None = None
    image_size: tuple[int, int] | None = None
    position_channel: bool = False
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)

    @field_validator("stack")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"stack (2.5D slice count) must be odd so the centre slice is the target, got {value}")
        return value

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError(f"spacing must be three positive sizes in mm, got {value}")
        return value

    @field_validator("image_size")
    @classmethod
    def _size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 8:
            raise ValueError(f"image_size must be (rows, columns), each >= 8, got {value}")
        return value

    @field_validator("augmentation")
    @classmethod
    def _flip_needs_swap(cls, aug: AugmentationConfig, info: ValidationInfo) -> AugmentationConfig:
        labels = info.data.get("labels") or ("lobes" if info.data.get("modality") == "ct" else "side_agnostic")
        if aug.flips and labels != "side_agnostic" and not aug.swap:
            raise ValueError(
                f"flip_lr with {labels} labels needs a swap map: a left-right flip moves left structures to "
                f"the right, so their labels must be swapped (or keep flip_lr: false). "
                f"{f'For lung sides use swap: {LUNG_SIDE_SWAP}.' if labels == 'lung_sides' else _LOBE_FLIP_NOTE}"
            )
        return aug

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessingConfig:
        if self.labels is None:  # resolve now so that model_dump() records it
            self.labels = "lobes" if self.modality == "ct" else "side_agnostic"
        if self.modality == "ct":
            if not self.windows:
                raise ValueError("a CT config needs at least one HU window under windows")
            for key in ("image_size", "clahe"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to X-ray only (the CT chain does not use it)")
        else:
            for key in ("windows", "spacing", "position_channel"):
                if getattr(self, key):
                    raise ValueError(f"{key} applies to CT only (the X-ray chain does not use it)")
            if self.stack != 1:
                raise ValueError("stack (2.5D slices) applies to CT only; X-ray needs stack: 1")
        return self

    @property
    def in_channels(self) -> int:
        """Network input channels: windows x stack (+ 1 position channel) for CT, 1 for X-ray."""
        return len(self.windows) * self.stack + int(self.position_channel) if self.modality == "ct" else 1


_LOBE_FLIP_NOTE = (
    "For lobes no swap is exact: the mirrored right lung is a three-lobe 'left' lung (RML has no left "
    f"counterpart), so lobe flips are off by default; swap: {dict(sorted(LOBE_SWAP.items()))} enables them "
    "knowingly."
)


def preprocessing_config_from_dict(data: Any, source: str | PathLike[str] | None = None) -> PreprocessingConfig:
    """Validate a mapping (parsed YAML, a checkpoint's stored dump) into a `PreprocessingConfig`.

    Problems raise `ConfigSchemaError` (a `ConfigError`) naming `source` and each offending key's location,
    with a close-match suggestion for unknown keys.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a preprocessing config must be a mapping of keys, got {type(data).__name__}", source)
    return validate_config(PreprocessingConfig, data, source)


def load_preprocessing_config(path: str | PathLike[str]) -> PreprocessingConfig:
    """Read and validate a preprocessing YAML file (see `configs/preprocessing/`)."""
    return load_config(PreprocessingConfig, path, "preprocessing config")
