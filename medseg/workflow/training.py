"""`train` steps of a workflow: the same code path as `medseg train CONFIG.yaml [--set ...]`."""

from __future__ import annotations

import logging
from pathlib import Path

from medseg.workflow.schema import Workflow

__all__ = ["run_training_steps"]

log = logging.getLogger(__name__)


def run_training_steps(workflow: Workflow, *, progress: bool = True) -> list[Path]:
    """Run each train step in order; a step whose run folder already holds best.safetensors is skipped when
    `skip_if_exists` (so a rerun of a demo workflow reuses its models). Returns the best checkpoints."""
    from medseg.train.config import load_train_config

    produced = []
    for step in workflow.steps:
        if step.kind != "train":
            continue
        config = load_train_config(step.config, dict(step.set))
        best = Path(config.output) / "best.safetensors"
        if step.skip_if_exists and best.is_file():
            log.info("train %s: %s exists, skipped", step.config, best)
            produced.append(best)
            continue
        if config.task == "classification":
            from medseg.train.classification import train_classification as train
        else:
            from medseg.train.segmentation import train_segmentation as train
        summary = train(config, progress=progress, config_path=Path(step.config))
        log.info("train %s: best %.4f at epoch %d", step.config, summary.best_metric, summary.best_epoch)
        produced.append(best)
    return produced
