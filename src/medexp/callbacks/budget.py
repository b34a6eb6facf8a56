"""``trainer.budget=<time>``: training that fills a wall-clock budget and ends on time with a tested checkpoint.

The budget counts from the launch of the process (data loading, caching and the final test included). The learning
rate follows one cosine over the budget, so the schedule ends with the run whatever this machine's speed; an epoch
is only started when the slowest epoch so far, plus the test of the best checkpoint, still fits: a run is never cut
off mid-way, and always ends with its best checkpoint evaluated on test.
"""
from __future__ import annotations

import math
import re
import time

from pytorch_lightning.callbacks import Callback

from medexp.errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """``90`` or ``"90s"`` -> 90.0 seconds; ``"20m"``, ``"1.5h"``, ``"1h30m"`` also work."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ConfigError(f"budget {value!r} is not a duration: give e.g. 20m, 1.5h, 1h30m or 900s")
    seconds = sum(float(number) * _UNITS[unit or "s"] for number, unit in parts)
    if seconds <= 0:
        raise ConfigError(f"budget {value!r} is not a positive duration: give e.g. 20m")
    return seconds


def cosine_factor(progress: float) -> float:
    """Cosine decay from 1 at the start to 0 at the end (progress in [0, 1])."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


class TimeBudget(Callback):
    """Stops training when the next epoch would end past the budget; drives the learning rate on a cosine over
    whichever comes first, the budget's time or ``max_epochs``.

    Args:
        budget_s: wall-clock seconds for the whole run.
        started_at: when the run's process started (``time.time()``); the budget counts from there.
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, budget_s: float, started_at: float | None = None, clock=time.time) -> None:
        self.budget_s, self.clock = float(budget_s), clock
        self.started_at = started_at if started_at is not None else clock()
        self.deadline = self.started_at + self.budget_s
        self.base_lrs: list[list[float]] = []
        self.fit_started = self.epoch_started = self.validation_started = 0.0
        self.slowest_epoch_s = self.slowest_validation_s = 0.0
        self.test_per_validation = 1.0
        self.stopped_epoch: int | None = None

    # --------------------------------------------------------------------------------------------- schedule
    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_started = self.clock()
        self.base_lrs = [[group["lr"] for group in optimizer.param_groups] for optimizer in trainer.optimizers]
        self.test_per_validation = _test_per_validation(trainer)

    def progress(self, trainer) -> float:
        """How far through the run we are: the larger of the budget's time used (after fitting started, before the
        final test) and the steps done out of ``max_epochs``."""
        window = self.deadline - self.test_reserve_s() - self.fit_started
        by_time = (self.clock() - self.fit_started) / window if window > 0 else 1.0
        total = trainer.estimated_stepping_batches
        by_steps = trainer.global_step / total if total and math.isfinite(total) else 0.0
        return max(by_time, by_steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        factor = cosine_factor(self.progress(trainer))
        for optimizer, bases in zip(trainer.optimizers, self.base_lrs, strict=True):
            for group, base in zip(optimizer.param_groups, bases, strict=True):
                group["lr"] = base * factor

    # ------------------------------------------------------------------------------------------- stopping
    def test_reserve_s(self) -> float:
        """Time kept for testing the best checkpoint: the slowest validation, scaled by test cases per val case."""
        return self.slowest_validation_s * self.test_per_validation

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.validation_started = self.clock()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.slowest_validation_s = max(self.slowest_validation_s, self.clock() - self.validation_started)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_started = self.clock()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning validates at an epoch's end before this hook: the epoch's time includes its validation
        now = self.clock()
        self.slowest_epoch_s = max(self.slowest_epoch_s, now - self.epoch_started)
        overrun = now + self.slowest_epoch_s + self.test_reserve_s() > self.deadline
        # every rank stops if one would overrun (clocks differ slightly; ranks that disagree would hang)
        if trainer.strategy.reduce_boolean_decision(overrun, all=False) and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            if trainer.is_global_zero:
                print(f"\nmedexp: time budget {self.budget_s / 60:.4g} min: stopping after epoch "
                      f"{trainer.current_epoch + 1} ({now - self.started_at:.0f} s used; another epoch takes up to "
                      f"{self.slowest_epoch_s:.0f} s, the test ~{self.test_reserve_s():.0f} s)", flush=True)


def _test_per_validation(trainer) -> float:
    """Test batches per validation batch, so the test's time can be predicted from validation's; 1 when unknown
    (no test split, or a data module that cannot tell)."""
    datamodule = trainer.datamodule
    try:
        test, val = len(datamodule.test_dataloader()), len(datamodule.val_dataloader())
    except Exception:  # no test split (test=false), or loaders without a length
        return 1.0
    return test / val if val else 1.0
