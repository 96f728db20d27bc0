"""What every training task does before its first step: preprocessing config, seeds, threads, device, AMP,
run folder (with a copy of the config) and the cache folder."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.device import resolve_device
from medseg.train.config import TrainConfig
from medseg.train.trainer import LoopSettings

__all__ = ["RunSetup", "load_preprocessing", "loop_settings", "prepare_run", "resolve_device"]


def load_preprocessing(source: Path | dict[str, Any]):
    """The PreprocessingConfig of a training config (file path or inline mapping)."""
    from medseg.configfile import validate_config
    from medseg.transforms import PreprocessingConfig, load_preprocessing_config

    if isinstance(source, dict):
        return validate_config(PreprocessingConfig, source, "preprocessing")
    return load_preprocessing_config(source)


@dataclass(frozen=True)
class RunSetup:
    preprocessing: Any
    device: torch.device
    amp: bool
    run_dir: Path
    cache_dir: Path


def prepare_run(config: TrainConfig, config_path: Path | None = None) -> RunSetup:
    """Seed everything, set threads, pick the device, create the run folder (config copied into it)."""
    preprocessing = load_preprocessing(config.preprocessing)
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    amp = config.amp == "on" or (config.amp == "auto" and device.type == "cuda")
    run_dir = Path(config.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config_path is not None:
        shutil.copyfile(config_path, run_dir / "config.yaml")
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else run_dir / "cache"
    return RunSetup(preprocessing, device, amp, run_dir, cache_dir)


def loop_settings(config: TrainConfig, amp: bool, monitor: str) -> LoopSettings:
    """The Trainer's settings from a config's optimizer and schedule sections."""
    schedule, optimizer = config.schedule, config.optimizer
    return LoopSettings(epochs=schedule.epochs, steps_per_epoch=schedule.steps_per_epoch, lr=optimizer.lr,
                        weight_decay=optimizer.weight_decay, warmup_steps=optimizer.warmup_steps,
                        min_lr_ratio=optimizer.min_lr_ratio, ema_decay=optimizer.ema_decay,
                        grad_accum=schedule.grad_accum, amp=amp,
                        patience=schedule.patience, val_every=schedule.val_every, monitor=monitor, seed=config.seed)
