"""``trainer.budget``: durations, the cosine over the budget, and the decision to stop before an epoch that would
end past it (with a fake clock and trainer: the real run is in tests/e2e/test_plan.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medexp.callbacks.budget import TimeBudget, cosine_factor, parse_duration
from medexp.errors import ConfigError


@pytest.mark.parametrize("text, seconds", [("20m", 1200), ("1.5h", 5400), ("1h30m", 5400), ("90s", 90), ("90", 90),
                                           (45, 45), (2.5, 2.5), (" 2 m ", 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "20 minutes", "0m", "-5", "m", True])
def test_a_bad_duration_is_one_line_naming_the_forms(text):
    with pytest.raises(ConfigError, match="20m"):
        parse_duration(text)


def test_cosine_runs_from_one_to_zero():
    assert cosine_factor(0) == 1 and cosine_factor(1) == 0 and cosine_factor(0.5) == pytest.approx(0.5)
    assert cosine_factor(2) == 0 and cosine_factor(-1) == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_trainer(max_steps: float = float("inf")):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return SimpleNamespace(
        optimizers=[optimizer], estimated_stepping_batches=max_steps, global_step=0, current_epoch=0,
        should_stop=False, sanity_checking=False, is_global_zero=True, datamodule=None,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision))


def run_epoch(callback, trainer, clock, train_s: float, val_s: float) -> None:
    callback.on_train_epoch_start(trainer, None)
    callback.on_train_batch_start(trainer, None, None, 0)
    clock.now += train_s
    callback.on_validation_epoch_start(trainer, None)
    clock.now += val_s
    callback.on_validation_epoch_end(trainer, None)
    callback.on_train_epoch_end(trainer, None)
    trainer.current_epoch += 1


def test_stops_before_the_epoch_that_would_end_past_the_budget(capsys):
    clock, trainer = Clock(), fake_trainer()
    callback = TimeBudget(100, started_at=clock.now, clock=clock)
    clock.now += 10  # start-up and data loading count too
    callback.on_fit_start(trainer, None)
    epochs = 0
    while not trainer.should_stop:
        run_epoch(callback, trainer, clock, train_s=12, val_s=3)
        epochs += 1
    # 10 s start + 5 epochs of 15 s = 85 s; a sixth would end at 100 s, and the test (~3 s) would overrun
    assert epochs == 5 and clock.now - 1000 == 85
    assert "stopping after epoch 5" in capsys.readouterr().out


def test_learning_rate_follows_a_cosine_over_the_time_left_for_training():
    clock, trainer = Clock(), fake_trainer()
    callback = TimeBudget(100, started_at=clock.now, clock=clock)
    callback.on_fit_start(trainer, None)
    group = trainer.optimizers[0].param_groups[0]
    callback.on_train_batch_start(trainer, None, None, 0)
    assert group["lr"] == pytest.approx(0.1)
    clock.now += 50
    callback.on_train_batch_start(trainer, None, None, 0)
    assert group["lr"] == pytest.approx(0.05)
    clock.now += 60
    callback.on_train_batch_start(trainer, None, None, 0)
    assert group["lr"] == 0.0


def test_max_epochs_ends_the_cosine_first_when_the_steps_run_out_before_the_time():
    clock, trainer = Clock(), fake_trainer(max_steps=10)
    callback = TimeBudget(1000, started_at=clock.now, clock=clock)
    callback.on_fit_start(trainer, None)
    trainer.global_step = 5
    callback.on_train_batch_start(trainer, None, None, 0)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)
