"""Radiograph classification task: manifest -> preprocessed images -> Trainer -> operating points in the checkpoint.

Validation scores every epoch by macro ROC AUC (`val_macro_auc`, the checkpoint-selection metric). After
training, the best checkpoint's validation probabilities choose one threshold per class (Youden's J, or a
target sensitivity / specificity); the thresholds are written into that checkpoint's model card, so
`medseg classify` can make yes/no calls without the validation data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.train.classification_data import ClassificationBatches, ClassificationSet, load_classification_set
from medseg.train.config import TrainConfig, parse_operating_point
from medseg.train.run import loop_settings, prepare_run
from medseg.train.trainer import Trainer, TrainSummary

log = logging.getLogger(__name__)

__all__ = ["choose_thresholds", "predict_probabilities", "train_classification"]


@torch.inference_mode()
def predict_probabilities(model: nn.Module, images: np.ndarray, *, multilabel: bool, batch_size: int = 32,
                          device: torch.device | str = "cpu") -> np.ndarray:
    """`(N, C)` probabilities (sigmoid, or softmax when not multi-label) for `(N, H, W)` images."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.asarray(images[start:start + batch_size], dtype=np.float32))[:, None]
        logits = model(batch.to(device)).float()
        out.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _auc_metrics(probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    metrics: dict[str, float] = {}
    for column, name in enumerate(classes):
        truth = targets[:, column]
        if 0 < truth.sum() < len(truth):
            metrics[f"val_auc_{name}"] = float(roc_auc_score(truth, probs[:, column]))
    defined = [value for value in metrics.values()]
    metrics["val_macro_auc"] = float(np.mean(defined)) if defined else 0.0
    return metrics


def choose_thresholds(probs: np.ndarray, targets: np.ndarray, classes: list[str], operating_point: str
                      ) -> dict[str, float]:
    """One threshold per class (score >= threshold means positive) by the operating-point rule."""
    from medseg.evaluate.roc import choose_threshold

    rule, target = parse_operating_point(operating_point)
    thresholds = {}
    for column, name in enumerate(classes):
        truth = targets[:, column]
        if rule != "fixed" and not 0 < truth.sum() < len(truth):
            log.warning("class %s has no positives or no negatives in validation; threshold 0.5", name)
            thresholds[name] = 0.5
            continue
        thresholds[name] = float(choose_threshold(truth, probs[:, column], rule, target))
    return thresholds


def _class_weights(config: TrainConfig, data: ClassificationSet) -> tuple[list[float] | None, list[float] | None]:
    from medseg.train.class_losses import class_weights_from_counts, pos_weight_from_counts

    weights, pos_weight = config.loss.class_weights, config.loss.pos_weight
    total = len(data)
    if isinstance(weights, str):
        weights = class_weights_from_counts(data.positives, total, weights, beta=config.loss.beta)
    if pos_weight == "auto":
        pos_weight = pos_weight_from_counts(data.positives, total)
    for name, value in (("class_weights", weights), ("pos_weight", pos_weight)):
        if value is not None and len(value) != len(data.classes):
            raise ConfigError(f"loss.{name} has {len(value)} values for {len(data.classes)} classes {data.classes}")
    return weights, pos_weight


def _write_predictions(path: Path, data: ClassificationSet, probs: np.ndarray,
                       thresholds: dict[str, float] | None) -> None:
    from medseg.evaluate.predictions import PredictionRow, write_predictions

    write_predictions([PredictionRow(image, dict(zip(data.classes, map(float, probs[row]), strict=True)),
                                     None if not thresholds else
                                     {name: int(probs[row, c] >= thresholds[name])
                                      for c, name in enumerate(data.classes)})
                       for row, image in enumerate(data.image_ids)], path)


def train_classification(config: TrainConfig, *, resume: bool = False, progress: bool = True,
                         config_path: Path | None = None) -> TrainSummary:
    """Train a radiograph classifier as `config` says; checkpoints land in `config.output`."""
    from medseg import __version__
    from medseg.models import ModelCard, create_model, load_checkpoint, save_checkpoint
    from medseg.train.class_losses import class_balanced_sample_weights, classification_loss
    from medseg.transforms.mixing import BatchMixer

    setup = prepare_run(config, config_path)
    preprocessing, device, amp, run_dir, cache_dir = (setup.preprocessing, setup.device, setup.amp, setup.run_dir,
                                                      setup.cache_dir)
    if preprocessing.modality != "xray" or preprocessing.image_size is None:
        raise ConfigError("classification training needs an X-ray preprocessing config with an image_size")
    cls = config.classification

    def load(splits: list[str]) -> ClassificationSet:
        return load_classification_set(config.data.manifest, splits, preprocessing, classes=config.data.classes,
                                       unknown_labels=config.data.unknown_labels, cache_dir=cache_dir,
                                       progress=progress)

    train_set, val_set = load(config.data.train_splits), load(config.data.val_splits)
    if not cls.multilabel and not np.all(train_set.targets.sum(axis=1) == 1):
        raise ConfigError("classification.multilabel is false but some training cases have no class or several "
                          "classes set (a softmax needs exactly one per case)", config.data.manifest)
    log.info("training on %d radiographs (positives %s), validating on %d", len(train_set),
             dict(zip(train_set.classes, train_set.positives, strict=True)), len(val_set))

    classes = train_set.classes
    labels = dict(enumerate(classes))
    model_args = {"in_channels": 1, "out_channels": len(classes), **config.model.args}
    if config.model.pretrained is not None:
        model_args["pretrained"] = str(config.model.pretrained)
    model = create_model(config.model.architecture, **model_args)
    weights, pos_weight = _class_weights(config, train_set)
    loss = classification_loss(config.loss.name, multilabel=cls.multilabel, class_weights=weights,
                               pos_weight=pos_weight, gamma=config.loss.gamma,
                               label_smoothing=config.loss.label_smoothing)
    log.info("loss %s class_weights %s pos_weight %s", config.loss.name, weights, pos_weight)

    sample_weights = None
    if cls.sampler == "class_balanced":
        source = train_set.targets if cls.multilabel else train_set.targets.argmax(axis=1)
        sample_weights = class_balanced_sample_weights(source, cls.multilabel)
    mixer = None
    if cls.mixing != "none":
        generator = torch.Generator().manual_seed(config.seed)
        mixer = BatchMixer(cls.mixing, alpha=cls.mix_alpha, prob=cls.mix_prob, generator=generator)
    schedule = config.schedule
    batches = ClassificationBatches(train_set, preprocessing.augmentation, schedule.batch_size, config.seed,
                                    sample_weights=sample_weights, mixer=mixer)

    def validate(net: nn.Module) -> dict[str, float]:
        probs = predict_probabilities(net, val_set.images, multilabel=cls.multilabel,
                                      batch_size=schedule.batch_size * 2, device=device)
        return _auc_metrics(probs, val_set.targets, classes)

    def card_for(net: nn.Module, metrics: dict[str, float], thresholds: dict[str, float] | None = None) -> ModelCard:
        extra = {"seed": config.seed, "train_cases": len(train_set), "val_cases": len(val_set),
                 "multilabel": cls.multilabel, "classes": classes, "loss": config.loss.model_dump(mode="json"),
                 "train_positives": train_set.positives}
        if thresholds is not None:
            extra.update(thresholds=thresholds, operating_point=cls.operating_point)
        return ModelCard.from_model(net, task="classification", labels=labels,
                                    preprocessing=preprocessing.model_dump(mode="json"), medseg_version=__version__,
                                    metrics={k: float(v) for k, v in metrics.items()}, extra=extra)

    def save_model(path: Path, net: nn.Module, metrics: dict[str, float]) -> None:
        save_checkpoint(path, net, card_for(net, metrics))

    settings = loop_settings(config, amp, monitor="val_macro_auc")
    trainer = Trainer(model, loss, batches, validate, settings, run_dir, save_model, device=device,
                      progress=progress)
    if resume:
        trainer.resume()
    summary = trainer.fit()

    best_path = run_dir / "best.safetensors"
    best, best_card = load_checkpoint(best_path, device=device)
    probs = predict_probabilities(best, val_set.images, multilabel=cls.multilabel,
                                  batch_size=schedule.batch_size * 2, device=device)
    thresholds = choose_thresholds(probs, val_set.targets, classes, cls.operating_point)
    save_checkpoint(best_path, best, card_for(best, best_card.metrics, thresholds))
    _write_predictions(run_dir / "val_predictions.csv", val_set, probs, thresholds)
    log.info("operating points (%s) on validation: %s", cls.operating_point,
             ", ".join(f"{k} {v:.3f}" for k, v in thresholds.items()))
    return summary
