"""Segmentation training task: manifest cases -> cached model-grid volumes -> 2.5D slice batches -> Trainer."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.train.config import TrainConfig
from medseg.train.run import loop_settings, prepare_run
from medseg.train.segmentation_data import CachedCase, SliceSampler, cache_case
from medseg.train.trainer import Trainer, TrainSummary
from medseg.transforms.position import append_position, slice_positions

log = logging.getLogger(__name__)

__all__ = ["train_segmentation"]


def _cases(config: TrainConfig, splits: list[str], preprocessing, cache_dir: Path, progress: bool = True
           ) -> list[CachedCase]:
    from medseg.data.manifest import load_manifest, resolve_path
    from medseg.progress import progress_bar

    manifest = load_manifest(config.data.manifest)
    base = Path(config.data.manifest).parent
    chosen = [c for c in manifest.cases if c.split in splits]
    if not chosen:
        raise ConfigError(f"no cases in splits {splits} (splits present: "
                          f"{sorted({str(c.split) for c in manifest.cases})})", config.data.manifest)
    cases = []
    with progress_bar(len(chosen), f"preparing {'/'.join(splits)} cases", enabled=progress) as advance:
        for record in chosen:
            if config.data.label not in record.labels:
                raise ConfigError(f"case {record.case_id} has no label {config.data.label!r}", config.data.manifest)
            cases.append(cache_case(record.case_id, resolve_path(base, record.image),
                                    resolve_path(base, str(record.labels[config.data.label])),
                                    preprocessing, cache_dir))
            advance(info=record.case_id)
    return cases


def _label_map(config: TrainConfig) -> dict[int, str]:
    from medseg.data.manifest import load_manifest

    label_map = load_manifest(config.data.manifest).label_map
    if not isinstance(label_map, dict):
        raise ConfigError("a segmentation manifest needs a label_map {value: name}", config.data.manifest)
    return {int(k): str(v) for k, v in sorted(label_map.items())}


class _Batches:
    """Batches of augmented, windowed 2.5D samples for one epoch (seeded by seed and epoch)."""

    def __init__(self, cases: list[CachedCase], preprocessing, patch: tuple[int, int], batch_size: int,
                 seed: int, boost: dict[int, float] | None = None) -> None:
        from medseg.transforms import segmentation_augmentation

        self.cases = cases
        self.preprocessing = preprocessing
        self.patch = patch
        self.batch_size = batch_size
        self.seed = seed
        self.boost = boost
        self.augment = segmentation_augmentation(preprocessing.augmentation)
        self.windows = [(w.center, w.width) for w in preprocessing.windows]

    def __call__(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from medseg.transforms.intensity import window_stacks

        sampler = SliceSampler(self.cases, self.preprocessing.stack, self.patch, seed=self.seed * 1000 + epoch,
                               augmentation=self.preprocessing.augmentation, boost=self.boost)
        self.augment.set_random_state(seed=self.seed * 1000 + epoch)
        position_rng = np.random.default_rng([self.seed, epoch, 11])
        dropout = self.preprocessing.augmentation.position_dropout
        while True:
            drawn = [sampler.draw() for _ in range(self.batch_size)]
            stacks, labels = zip(*(sampler.take(n, index) for n, index in drawn), strict=True)
            images = window_stacks(torch.from_numpy(np.stack(stacks)), self.windows)
            label_tensor = torch.from_numpy(np.stack(labels)[:, None].astype(np.int64))
            out_images, out_labels = [], []
            for image, label in zip(images, label_tensor, strict=True):
                sample = self.augment({"image": image, "label": label})
                out_images.append(_plain(sample["image"]).float())
                out_labels.append(_plain(sample["label"]).round().long())
            batch = torch.stack(out_images)
            if self.preprocessing.position_channel:   # after the intensity augmentation, which must not touch it
                heights = [slice_positions(self.cases[n].image.shape[0], known=position_rng.random() >= dropout)[i]
                           for n, i in drawn]
                batch = append_position(batch, torch.stack(heights))
            yield batch, torch.stack(out_labels)


def _plain(value) -> torch.Tensor:
    """A plain tensor (MONAI returns MetaTensors, whose bookkeeping slows the training step)."""
    tensor = torch.as_tensor(value)
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def _validator(cases: list[CachedCase], preprocessing, labels: dict[int, str], device: torch.device,
               batch_size: int):
    from medseg.infer.predict import dice_per_class, predict_volume

    windows = [(w.center, w.width) for w in preprocessing.windows]
    foreground = [value for value in labels if value != 0]

    def validate(model: nn.Module) -> dict[str, float]:
        per_class: dict[int, list[float]] = {value: [] for value in foreground}
        for case in cases:
            positions = slice_positions(case.image.shape[0]) if preprocessing.position_channel else None
            probs = predict_volume(model, torch.from_numpy(case.image), windows, preprocessing.stack,
                                   batch_size=batch_size, device=device, positions=positions)
            scores = dice_per_class(probs.argmax(0), case.label, foreground)
            for value, score in scores.items():
                if not np.isnan(score):
                    per_class[value].append(score)
        metrics = {f"val_dice_{labels[v]}": float(np.mean(s)) for v, s in per_class.items() if s}
        metrics["val_dice"] = float(np.mean(list(metrics.values()))) if metrics else 0.0
        model.train()
        return metrics

    return validate


def _sample_boost(config: TrainConfig, labels: dict[int, str]) -> dict[int, float]:
    """`schedule.sample_boost` by label value; an unknown label name is a config error."""
    by_name = {name: value for value, name in labels.items()}
    unknown = sorted(set(config.schedule.sample_boost) - set(by_name))
    if unknown:
        raise ConfigError(f"schedule.sample_boost names labels {unknown} that the label map lacks "
                          f"(it has {sorted(by_name)})")
    bad = {name: factor for name, factor in config.schedule.sample_boost.items() if not factor > 0}
    if bad:
        raise ConfigError(f"schedule.sample_boost factors must be > 0 (1 = no boost), got {bad}")
    return {by_name[name]: float(factor) for name, factor in config.schedule.sample_boost.items()}


def train_segmentation(config: TrainConfig, *, resume: bool = False, progress: bool = True,
                       config_path: Path | None = None) -> TrainSummary:
    """Train a 2.5D segmentation model as `config` says; checkpoints land in `config.output`."""
    from medseg import __version__
    from medseg.models import ModelCard, create_model, save_checkpoint

    setup = prepare_run(config, config_path)
    preprocessing, device, amp, run_dir, cache_dir = (setup.preprocessing, setup.device, setup.amp, setup.run_dir,
                                                      setup.cache_dir)
    if preprocessing.modality != "ct" or preprocessing.spacing is None:
        raise ConfigError("segmentation training needs a CT preprocessing config with a target spacing")

    labels = _label_map(config)
    boost = _sample_boost(config, labels)
    train_cases = _cases(config, config.data.train_splits, preprocessing, cache_dir, progress)
    val_cases = _cases(config, config.data.val_splits, preprocessing, cache_dir, progress)
    log.info("training on %d cases, validating on %d", len(train_cases), len(val_cases))

    architecture_args = {"in_channels": preprocessing.in_channels, "out_channels": max(labels) + 1,
                         "spatial_dims": 2, **config.model.args}
    log.info("model %s %s", config.model.architecture, architecture_args)
    model = create_model(config.model.architecture, pretrained=config.model.pretrained, **architecture_args)
    from medseg.train.losses import segmentation_loss

    loss = segmentation_loss(config.loss.name, class_weights=config.loss.class_weights,
                             label_smoothing=config.loss.label_smoothing)
    schedule = config.schedule
    settings = loop_settings(config, amp, monitor="val_dice")

    def save_model(path: Path, net: nn.Module, metrics: dict[str, float]) -> None:
        card = ModelCard.from_model(net, task=config.task, labels=labels,
                                    preprocessing=preprocessing.model_dump(mode="json"),
                                    spacing=list(preprocessing.spacing), medseg_version=__version__,
                                    metrics={k: float(v) for k, v in metrics.items()},
                                    extra={"seed": config.seed, "train_cases": len(train_cases)})
        save_checkpoint(path, net, card)

    trainer = Trainer(model, loss, _Batches(train_cases, preprocessing, schedule.patch, schedule.batch_size,
                                            config.seed, boost),
                      _validator(val_cases, preprocessing, labels, device, schedule.batch_size), settings, run_dir,
                      save_model, device=device, progress=progress)
    if resume:
        trainer.resume()
    return trainer.fit()
