"""`medseg.train`: train a lobe segmentation or radiograph classification model from a YAML config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError

if TYPE_CHECKING:
    from medseg.train.config import TrainConfig
    from medseg.train.trainer import TrainSummary

__all__ = ["monitored_metric", "run_config", "train"]


def monitored_metric(config: TrainConfig) -> str:
    """The validation metric that picks the best checkpoint for this config's task."""
    return "val_macro_auc" if config.task == "classification" else "val_dice"


def train(config: str | os.PathLike[str] | TrainConfig, *, resume: bool = False, progress: bool = False,
          **overrides: Any) -> TrainSummary:
    """Train as the config says (a path, see `configs/train/`, or a loaded `TrainConfig`).

    `overrides` set config values by dotted key, e.g. `medseg.train("lobes.yaml", output="runs/x",
    **{"schedule.epochs": 3})`. `resume` continues the run in the output folder from its last checkpoint.
    Returns the summary (epochs, best metric and epoch, `run_dir` holding best.safetensors and metrics.csv).
    """
    from medseg.train.config import TrainConfig, load_train_config

    config_path: Path | None = None
    if isinstance(config, TrainConfig):
        if overrides:
            raise ConfigError("overrides apply to a config file; change a loaded TrainConfig with model_copy()")
        train_config = config
    else:
        config_path = Path(config)
        train_config = load_train_config(config_path, overrides)
    return run_config(train_config, resume=resume, progress=progress, config_path=config_path)


def run_config(config: TrainConfig, *, resume: bool = False, progress: bool = False,
               config_path: Path | None = None) -> TrainSummary:
    """Train from a loaded config; `config_path` (the file it came from) is copied into the run folder."""
    if config.task == "classification":
        from medseg.train.classification import train_classification as run
    else:
        from medseg.train.segmentation import train_segmentation as run
    return run(config, resume=resume, progress=progress, config_path=config_path)
