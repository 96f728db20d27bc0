"""The training loop itself (`medseg.train.trainer`): LR schedule, gradient accumulation, early stopping and
exact resume, on a tiny registered model and synthetic seeded batches (no images, no manifest)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional

from medseg.errors import ConfigError
from medseg.models import ModelCard, create_model, load_checkpoint, register_model, save_checkpoint
from medseg.models import registry as registry_module
from medseg.train.trainer import LoopSettings, Trainer, warmup_cosine

TINY = "test_trainer_tiny"
CLASSES = 3
SIDE = 8


def _tiny(*, in_channels: int = 2, out_channels: int = CLASSES, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Dropout(dropout),
                         nn.Conv2d(8, out_channels, 1))


@pytest.fixture(autouse=True, scope="module")
def _registered_tiny_model() -> Iterator[None]:
    register_model(TINY, overwrite=True)(_tiny)
    try:
        yield
    finally:
        registry_module._REGISTRY.pop(TINY, None)


class _SliceCE(nn.Module):
    """Cross-entropy on `(B, 1, H, W)` label maps, as the segmentation task's batches come."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return functional.cross_entropy(logits, labels[:, 0])


def _model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(TINY, dropout=dropout)


def _batch(generator: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(size, 2, SIDE, SIDE, generator=generator)
    labels = torch.randint(0, CLASSES, (size, 1, SIDE, SIDE), generator=generator)
    return images, labels


def _batches(size: int, seed: int = 0) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """Endless batches, seeded by (seed, epoch) like the real tasks' batch makers."""

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        while True:
            yield _batch(generator, size)

    return batches


_VAL = _batch(torch.Generator().manual_seed(12345), 4)


def _val_score(model: nn.Module) -> dict[str, float]:
    """A metric that depends on every weight: minus the loss on a fixed batch (higher is better)."""
    model.eval()
    with torch.no_grad():
        loss = _SliceCE()(model(_VAL[0]), _VAL[1])
    model.train()
    return {"val_score": -float(loss)}


def _save(path: Path, net: nn.Module, metrics: dict[str, float]) -> None:
    save_checkpoint(path, net, ModelCard.from_model(net, task="test", metrics=metrics))


def _settings(**changes) -> LoopSettings:
    base = {"epochs": 3, "steps_per_epoch": 4, "lr": 1e-2, "weight_decay": 1e-4, "warmup_steps": 3,
            "min_lr_ratio": 0.1, "monitor": "val_score"}
    return LoopSettings(**(base | changes))


def _trainer(model: nn.Module, run_dir: Path, settings: LoopSettings, batches=None, validate=_val_score) -> Trainer:
    return Trainer(model, _SliceCE(), batches or _batches(2), validate, settings, run_dir, _save, progress=False)


def _weights(source: nn.Module | Path) -> dict[str, torch.Tensor]:
    model = load_checkpoint(source)[0] if isinstance(source, Path) else source
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (max |diff| {(a[key] - b[key]).abs().max():.3g})"


def _lr_per_step(trainer: Trainer) -> list[float]:
    """The learning rate each optimizer step is taken with, recorded as the steps happen."""
    seen: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, *_: seen.append(optimizer.param_groups[0]["lr"]))
    return seen


# ------------------------------------------------------------------------------------------- LR schedule


def test_warmup_cosine_factor_at_chosen_steps() -> None:
    total, warmup, floor = 100, 10, 0.02
    assert warmup_cosine(0, total, warmup, floor) == pytest.approx(0.1)           # first step: 1/warmup
    assert warmup_cosine(4, total, warmup, floor) == pytest.approx(0.5)
    assert warmup_cosine(9, total, warmup, floor) == pytest.approx(1.0)           # end of the ramp
    assert warmup_cosine(10, total, warmup, floor) == pytest.approx(1.0)          # cosine starts at the peak
    assert warmup_cosine(55, total, warmup, floor) == pytest.approx(floor + (1 - floor) * 0.5)  # half-way
    assert warmup_cosine(100, total, warmup, floor) == pytest.approx(floor)       # the floor at `total`
    assert warmup_cosine(250, total, warmup, floor) == pytest.approx(floor)       # and it stays there
    assert warmup_cosine(0, total, 0, floor) == pytest.approx(1.0)                # no warm-up: starts at the peak
    assert warmup_cosine(50, total, 0, floor) == pytest.approx(floor + (1 - floor) * 0.5)


def test_every_optimizer_step_uses_the_scheduled_learning_rate(tmp_path: Path) -> None:
    settings = _settings(epochs=3, steps_per_epoch=4, warmup_steps=3, lr=1e-2, min_lr_ratio=0.1)
    trainer = _trainer(_model(), tmp_path, settings)
    used = _lr_per_step(trainer)
    summary = trainer.fit()
    total, warmup = 12, 3
    expected = [1e-2 * ((k + 1) / warmup if k < warmup
                        else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))))
                for k in range(total)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert max(used) == pytest.approx(1e-2) and used[:3] == sorted(used[:3]) and used[3:] == sorted(used[3:])[::-1]
    # the `lr` column is the rate of the next step: after the last epoch, the floor
    assert [row["lr"] for row in summary.history] == pytest.approx([expected[4], expected[8], 1e-3])


# ---------------------------------------------------------------------------------- gradient accumulation


def _gradients_per_step(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    seen: list[dict[str, torch.Tensor]] = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: seen.append({name: p.grad.clone() for name, p in trainer.model.named_parameters()}))
    return seen


def test_accumulated_micro_batches_equal_one_large_batch(tmp_path: Path) -> None:
    micro, accum = 2, 3

    def large(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        small = _batches(micro)(epoch)
        while True:
            parts = [next(small) for _ in range(accum)]
            yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    runs = {}
    for name, batches, steps in (("accumulated", _batches(micro), accum), ("large", large, 1)):
        trainer = _trainer(_model(), tmp_path / name, _settings(epochs=1, steps_per_epoch=3, grad_accum=steps),
                           batches=batches)
        gradients = _gradients_per_step(trainer)
        summary = trainer.fit()
        runs[name] = gradients, _weights(trainer.model), summary.history[0]["train_loss"]

    (grads_a, weights_a, loss_a), (grads_b, weights_b, loss_b) = runs["accumulated"], runs["large"]
    assert len(grads_a) == len(grads_b) == 3
    for step_a, step_b in zip(grads_a, grads_b, strict=True):   # the same gradient, not just the same direction
        for key in step_a:                                       # (AdamW would hide a missing 1/accum factor)
            torch.testing.assert_close(step_a[key], step_b[key], rtol=1e-5, atol=1e-7)
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=1e-5, atol=1e-6)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert not torch.equal(weights_a["0.weight"], _weights(_model())["0.weight"])   # it did train


# ------------------------------------------------------------------------------------------ early stopping


def _scripted(values: list[float], snapshots: list[dict[str, torch.Tensor]]):
    """A validation that returns `values` in turn and remembers the weights it was shown."""
    scores = iter(values)

    def validate(model: nn.Module) -> dict[str, float]:
        snapshots.append(_weights(model))
        return {"val_score": next(scores)}

    return validate


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_early_stopping_after_patience_epochs_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []
    settings = _settings(epochs=10, steps_per_epoch=2, patience=2)
    trainer = _trainer(_model(), tmp_path, settings, validate=_scripted([0.3, 0.5, 0.4, 0.5, 0.9, 1.0], snapshots))
    summary = trainer.fit()

    # best 0.5 at epoch 2; epoch 3 (0.4) and epoch 4 (0.5, equal is no improvement) are the two bad epochs
    assert (summary.epochs_run, summary.stopped_early, summary.best_epoch, summary.best_metric) == (4, True, 2, 0.5)
    assert len(snapshots) == 4 and [row["epoch"] for row in _csv_rows(tmp_path / "metrics.csv")] == ["1", "2", "3", "4"]
    _assert_same_weights(_weights(tmp_path / "best.safetensors"), snapshots[1])
    _assert_same_weights(_weights(tmp_path / "last.safetensors"), snapshots[3])
    assert load_checkpoint(tmp_path / "best.safetensors")[1].metrics["epoch"] == 2
    assert not torch.equal(snapshots[1]["0.weight"], snapshots[3]["0.weight"])

    # resuming a run that stopped early does not train on
    again = _trainer(_model(seed=5), tmp_path, settings, validate=_scripted([2.0], []))
    again.resume()
    resumed = again.fit()
    assert (resumed.epochs_run, resumed.stopped_early, resumed.best_epoch) == (4, True, 2)
    _assert_same_weights(_weights(again.model), snapshots[3])


def test_patience_counts_epochs_when_validating_every_other_epoch(tmp_path: Path) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []
    settings = _settings(epochs=12, steps_per_epoch=1, patience=3, val_every=2)
    summary = _trainer(_model(), tmp_path, settings, validate=_scripted([0.5, 0.4, 0.4, 0.4, 0.4], snapshots)).fit()
    # validated at epochs 2, 4, 6: best at 2, and by epoch 6 there were 4 epochs without improvement (>= 3)
    assert (summary.epochs_run, summary.stopped_early, summary.best_epoch, len(snapshots)) == (6, True, 2, 3)
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert [row["val_score"] for row in rows] == ["", "0.5", "", "0.4", "", "0.4"]


def test_a_monitored_metric_that_validation_never_reports_is_an_error(tmp_path: Path) -> None:
    trainer = _trainer(_model(), tmp_path, _settings(epochs=2, steps_per_epoch=1, monitor="val_dice"))
    with pytest.raises(ConfigError, match="val_dice"):
        trainer.fit()


# ---------------------------------------------------------------------------------------------- resume


class _InterruptedError(Exception):
    pass


def _interrupt_at(epoch: int, batches):
    """Batches that stop the run (as Ctrl-C would) when epoch `epoch` (0-based) asks for its data."""

    def interrupted(current: int):
        if current == epoch:
            raise _InterruptedError
        return batches(current)

    return interrupted


def test_resume_continues_bit_exactly(tmp_path: Path) -> None:
    """4 epochs in one go == 2 epochs, a crash, and a resume in a fresh process-like Trainer: same weights,
    optimizer state, learning rates, metrics and best checkpoint, bit for bit (dropout draws included)."""
    settings = _settings(epochs=4, steps_per_epoch=3, warmup_steps=4, grad_accum=2)

    torch.manual_seed(7)
    whole = _trainer(_model(dropout=0.3), tmp_path / "whole", settings)
    expected = whole.fit()

    torch.manual_seed(7)
    first = _trainer(_model(dropout=0.3), tmp_path / "split", settings, batches=_interrupt_at(2, _batches(2)))
    with pytest.raises(_InterruptedError):
        first.fit()
    assert [row["epoch"] for row in _csv_rows(tmp_path / "split" / "metrics.csv")] == ["1", "2"]

    torch.manual_seed(999)          # another RNG state and other initial weights: resume must restore both
    second = _trainer(_model(seed=3, dropout=0.3), tmp_path / "split", settings)
    second.resume()
    assert second.epoch == 2
    resumed = second.fit()
    rng_after_fit = torch.get_rng_state()

    _assert_same_weights(_weights(second.model), _weights(whole.model))
    _assert_same_weights(_weights(tmp_path / "split" / "last.safetensors"), _weights(tmp_path / "whole" /
                                                                                     "last.safetensors"))
    _assert_same_weights(_weights(tmp_path / "split" / "best.safetensors"), _weights(tmp_path / "whole" /
                                                                                     "best.safetensors"))
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in second.optimizer.state_dict()["state"].values()]
    for (avg, sq), (avg0, sq0) in zip(moments, [(s["exp_avg"], s["exp_avg_sq"])
                                                for s in whole.optimizer.state_dict()["state"].values()], strict=True):
        assert torch.equal(avg, avg0) and torch.equal(sq, sq0)

    def timeless(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert timeless(resumed.history) == timeless(expected.history) and len(expected.history) == 4
    assert (resumed.epochs_run, resumed.best_epoch, resumed.best_metric) == (4, expected.best_epoch,
                                                                             expected.best_metric)
    assert second.scheduler.get_last_lr() == whole.scheduler.get_last_lr()
    assert torch.equal(rng_after_fit, torch.load(whole.state_path, weights_only=True)["torch_rng"])


def test_resume_without_a_saved_run_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to resume"):
        _trainer(_model(), tmp_path, _settings()).resume()


def test_resume_uses_the_state_file_weights_when_the_checkpoint_pair_was_torn(tmp_path: Path) -> None:
    """A crash between writing last.safetensors and last_state.pt leaves the two from different epochs; the
    resumed run must continue from one consistent epoch (the state file's), not mix them."""
    settings = _settings(epochs=3, steps_per_epoch=2)
    torch.manual_seed(1)
    whole = _trainer(_model(), tmp_path / "whole", settings)
    whole.fit()

    torch.manual_seed(1)
    first = _trainer(_model(), tmp_path / "torn", settings, batches=_interrupt_at(2, _batches(2)))
    with pytest.raises(_InterruptedError):
        first.fit()
    # the torn pair: last.safetensors from a later (here: a foreign) model, last_state.pt from epoch 2
    _save(tmp_path / "torn" / "last.safetensors", _model(seed=42), {"epoch": 3})
    second = _trainer(_model(seed=3), tmp_path / "torn", settings)
    second.resume()
    second.fit()
    _assert_same_weights(_weights(second.model), _weights(whole.model))


# ------------------------------------------------------------------------------------- weight average (EMA)


def test_ema_checkpoints_hold_the_moving_average_of_every_step_and_resume_exactly(tmp_path: Path) -> None:
    decay = 0.5
    settings = _settings(epochs=2, steps_per_epoch=5, ema_decay=decay)
    trainer = _trainer(_model(), tmp_path / "ema", settings)
    expected: dict[str, torch.Tensor] = {}

    updates = [0]

    def average(*_args) -> None:        # the EMA by hand, after each optimizer step (first step: a copy)
        d = min(decay, (1 + updates[0]) / (10 + updates[0]))                # warm-up: recent weights first
        for key, value in trainer.model.state_dict().items():
            value = value.detach().clone().float()
            expected[key] = value if key not in expected else d * expected[key] + (1 - d) * value
        updates[0] += 1

    trainer.optimizer.register_step_post_hook(average)
    trainer.fit()
    saved = _weights(tmp_path / "ema" / "last.safetensors")
    for key, value in expected.items():
        assert torch.allclose(saved[key], value, atol=1e-6), key
    raw = _weights(trainer.model)
    assert any(not torch.equal(saved[key], raw[key]) for key in raw)   # the raw weights are not what is saved

    whole = _trainer(_model(), tmp_path / "whole", _settings(epochs=3, steps_per_epoch=3, ema_decay=decay))
    whole.fit()
    split = _trainer(_model(), tmp_path / "split", _settings(epochs=3, steps_per_epoch=3, ema_decay=decay),
                     batches=_interrupt_at(2, _batches(2)))
    with pytest.raises(_InterruptedError):
        split.fit()
    again = _trainer(_model(seed=3), tmp_path / "split", _settings(epochs=3, steps_per_epoch=3, ema_decay=decay))
    again.resume()
    again.fit()
    _assert_same_weights(_weights(tmp_path / "split" / "last.safetensors"),
                         _weights(tmp_path / "whole" / "last.safetensors"))
    assert "ema" in torch.load(tmp_path / "split" / "last_state.pt", weights_only=True)
    no_average = _trainer(_model(), tmp_path / "plain", _settings(epochs=1, steps_per_epoch=2))
    no_average.fit()
    with pytest.raises(ConfigError, match="weight average"):
        _trainer(_model(), tmp_path / "plain", _settings(epochs=2, steps_per_epoch=2, ema_decay=decay)).resume()
