"""Training configs (`medseg train CONFIG.yaml`): pydantic schema, paths resolved against the config file."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medseg.configfile import key_lines, read_mapping, validate_config
from medseg.errors import ConfigError

LossName = Literal["dice_ce", "dice", "ce", "focal", "dice_focal", "bce"]
"""Segmentation: dice_ce, dice, ce, focal, dice_focal. Classification: ce, bce, focal."""
WeightRule = Literal["inverse", "inverse_sqrt", "effective_number"]
SEGMENTATION_TASKS = ("lobes", "lungs")
CLASSIFICATION_LOSSES = ("ce", "bce", "focal")

__all__ = ["ClassificationConfig", "LossName", "TrainConfig", "load_train_config", "parse_operating_point"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Strict):
    manifest: Path = Field(description="Dataset manifest (data_manifest/ schema); relative to the config file.")
    train_splits: list[str] = Field(["train"], description="Manifest splits used for training.")
    val_splits: list[str] = Field(["val"], description="Manifest splits used for validation / model selection.")
    label: str = Field("lobes", description="Segmentation: which entry of each case's `labels` is the label map.")
    classes: list[str] | None = Field(None, description="Classification: classes to learn (default: manifest's).")
    unknown_labels: Literal["error", "zeros", "ones"] = Field(
        "error", description="Classification: null (uncertain) labels fail, or count as 0 / 1 (CheXpert U-zeros / "
                             "U-ones).")
    cache_dir: Path | None = Field(None, description="Preprocessed-case cache (default: <output>/cache).")


class ModelConfig(_Strict):
    architecture: str = "unet_resnet18"
    args: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for create_model.")
    pretrained: Path | None = Field(None, description="torchvision-format ImageNet ResNet .pth for the encoder.")


class LossConfig(_Strict):
    name: LossName = "dice_ce"
    class_weights: list[float] | WeightRule | None = Field(
        None, description="Per-class weights, or a rule computed from training frequencies (classification).")
    beta: float = Field(0.999, ge=0.0, lt=1.0, description="effective_number weighting: (1-beta)/(1-beta^n).")
    pos_weight: list[float] | Literal["auto"] | None = Field(
        None, description="Multi-label BCE pos_weight per class; auto = negatives/positives in training data.")
    gamma: float = Field(2.0, ge=0.0, description="Focal loss focusing parameter.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class ClassificationConfig(_Strict):
    """Classification-only settings."""

    multilabel: bool = Field(True, description="Sigmoid per class (findings co-occur); False = softmax, one class.")
    sampler: Literal["uniform", "class_balanced"] = "uniform"
    mixing: Literal["none", "mixup", "cutmix", "both"] = "none"
    mix_alpha: float = Field(0.4, gt=0)
    mix_prob: float = Field(0.5, ge=0, le=1)
    operating_point: str = Field(
        "youden", description="Per-class thresholds chosen on validation: youden, sensitivity:0.9, specificity:0.9 "
                              "or a fixed probability; stored in the checkpoint.")

    @field_validator("operating_point")
    @classmethod
    def _operating_point(cls, value: str) -> str:
        parse_operating_point(value)
        return value


def parse_operating_point(value: str) -> tuple[str, float | None]:
    """`youden` -> (youden, None); `sensitivity:0.9` -> (sensitivity, 0.9); `0.3` -> (fixed, 0.3)."""
    text = str(value).strip().lower()
    if text == "youden":
        return "youden", None
    rule, sep, target = text.partition(":")
    if not sep:
        rule, target = "fixed", text
    try:
        number = float(target)
    except ValueError:
        number = math.nan
    if rule not in ("sensitivity", "specificity", "fixed") or not 0.0 <= number <= 1.0:
        raise ValueError(f"operating point must be youden, sensitivity:X, specificity:X or a probability X in "
                         f"[0, 1], got {value!r}")
    return rule, number


class OptimizerConfig(_Strict):
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.02, ge=0, le=1, description="Final learning rate of the cosine, as a ratio.")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="Validate and save an exponential moving "
                                    "average of the weights (updated every optimizer step) instead of the raw ones.")


class ScheduleConfig(_Strict):
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1, description="Optimizer step every N batches.")
    patch: tuple[int, int] = Field((192, 160), description="Training slice size on the model grid (pad / crop).")
    patience: int | None = Field(None, ge=1, description="Early stopping after N epochs without improvement.")
    val_every: int = Field(1, ge=1, description="Validate every N epochs (and at the last).")
    sample_boost: dict[str, float] = Field(
        default_factory=dict, description="Segmentation: draw slices holding these labels more often, "
        "{label name: factor} (the label's area counts `factor` times in a slice's sampling weight).")

    @field_validator("patch")
    @classmethod
    def _multiple_of_32(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(n < 32 or n % 32 for n in value):
            raise ValueError(f"patch sides must be multiples of 32 (the encoder downsamples 5 times), got {value}")
        return value


class TrainConfig(_Strict):
    """A training run: segmentation (lobes, lungs) or radiograph classification."""

    task: Literal["lobes", "lungs", "classification"] = "lobes"
    data: DataConfig
    preprocessing: Path | dict[str, Any] = Field(
        description="Preprocessing config file (configs/preprocessing/...) or the same mapping inline.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    seed: int = 0
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:1 ...")
    amp: Literal["auto", "on", "off"] = Field("auto", description="Mixed precision: auto = on CUDA only.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice).")
    output: Path = Field(Path("runs/lobes"), description="Run folder: checkpoints, metrics.csv, config copy.")

    @model_validator(mode="after")
    def _splits_differ(self) -> TrainConfig:
        shared = set(self.data.train_splits) & set(self.data.val_splits)
        if shared:
            raise ValueError(f"data: splits {sorted(shared)} are used for both training and validation")
        if self.task == "classification":
            if self.loss.name not in CLASSIFICATION_LOSSES:
                raise ValueError(f"loss.name {self.loss.name!r} is a segmentation loss; classification uses "
                                 f"{', '.join(CLASSIFICATION_LOSSES)}")
            if self.loss.name == "bce" and not self.classification.multilabel:
                raise ValueError("loss.name bce needs classification.multilabel: true (softmax uses ce or focal)")
        else:
            if self.loss.name == "bce":
                raise ValueError("loss.name bce is for multi-label classification")
            if isinstance(self.loss.class_weights, str) or self.loss.pos_weight is not None:
                raise ValueError("frequency-based class_weights and pos_weight are classification options; "
                                 "segmentation takes explicit class_weights")
        return self


_DERIVED_ARGS = ("in_channels", "out_channels")
"""Set by training from the preprocessing (channels) and the labels or classes, never by a model file."""


def _model_section(path: Path) -> dict[str, Any]:
    """A `model:` section from a model config file (`configs/models/*.yaml`, see `load_model_config`)."""
    from medseg.models.config import load_model_config

    given = read_mapping(path, "model config")
    derived = [key for key in _DERIVED_ARGS if key in given]
    if derived:
        raise ConfigError(f"{' and '.join(derived)} must not be set in a model config used for training: they "
                          "follow from the preprocessing and the label map / classes", path)
    config = load_model_config(path, derived={"in_channels": 1, "out_channels": 2})   # placeholders: validation
    args = {key: value for key, value in config["architecture_args"].items() if key not in _DERIVED_ARGS}
    section: dict[str, Any] = {"architecture": config["architecture"], "args": args}
    if config["pretrained"] is not None:
        section["pretrained"] = str(path.parent / config["pretrained"])
    return section


def load_train_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a training config; relative paths inside it are taken relative to the config file.

    `overrides` are dotted keys (`schedule.epochs`) set before validation; their paths are relative to
    the working directory.
    """
    path = Path(path)
    data = read_mapping(path, "training config")
    base = path.resolve().parent
    if isinstance(data.get("model"), str):
        data["model"] = _model_section(base / data["model"])
    for key, where in (("manifest", ("data",)), ("cache_dir", ("data",)), ("pretrained", ("model",))):
        section = data.get(where[0])
        if isinstance(section, dict) and isinstance(section.get(key), str):
            section[key] = str(base / section[key])
    if isinstance(data.get("preprocessing"), str):
        data["preprocessing"] = str(base / data["preprocessing"])
    for dotted, value in (overrides or {}).items():
        target = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return validate_config(TrainConfig, data, path, key_lines(path))
