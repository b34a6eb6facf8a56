"""Pruning inside a training job launched by the Optuna sweeper.

The sweeper passes ``optuna_trial=<number>``; the job loads that trial from the study's storage, reports the
monitored metric after each validation and, when the pruner says so, stops training cleanly. After ``fit`` the
entry point tags its MLflow run and calls :func:`raise_if_pruned`, so the sweeper tells Optuna PRUNED.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pytorch_lightning as pl

from medexp.sweeps import optuna_sweeper_config

log = logging.getLogger(__name__)



class OptunaPruningCallback(pl.Callback):
    """Reports ``metric`` to an Optuna trial after each validation and stops training when the trial is pruned.

    Only rank 0 talks to the study; under DDP it broadcasts the decision so every rank stops at the same epoch.
    It never raises inside Lightning: it sets ``trainer.should_stop`` and ``pruned``, and the caller raises after fit.
    """

    def __init__(self, study_name: str, storage: str, trial_number: int, metric: str,
                 pruner: str = "median", pruner_kwargs: Mapping[str, Any] | None = None) -> None:
        self.study_name = study_name
        self.storage = storage
        self.trial_number = trial_number
        self.metric = metric
        self.pruner = pruner
        self.pruner_kwargs = dict(pruner_kwargs or {})
        self.pruned = False
        self.pruned_at: int | None = None
        self._trial = None
        self._last_step: int | None = None
        self._warned_missing = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: only here are the epoch's logged metrics in callback_metrics
        if trainer.sanity_checking:
            return
        should_prune = trainer.is_global_zero and self._report(trainer)
        if trainer.strategy.broadcast(should_prune, src=0):
            self.pruned = True
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True

    def _report(self, trainer: pl.Trainer) -> bool:
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            if not self._warned_missing:
                log.warning("pruning: metric %r is not logged (have: %s); this trial cannot be pruned",
                            self.metric, sorted(trainer.callback_metrics))
                self._warned_missing = True
            return False
        step = trainer.current_epoch
        if step == self._last_step:
            return False  # validated twice in one epoch (val_check_interval < 1): the first report stands
        self._last_step = step
        trial = self._live_trial()
        trial.report(float(value), step=step)
        # a trial at its last epoch has paid for its training: let it finish (and be tested) instead
        return not _is_last_epoch(trainer) and trial.should_prune()

    def _live_trial(self):
        if self._trial is None:
            from medexp.sweeps.study import build_pruner, load_trial

            pruner = build_pruner(self.pruner, self.pruner_kwargs)
            self._trial = load_trial(self.study_name, self.storage, pruner, self.trial_number)
        return self._trial


def _is_last_epoch(trainer: pl.Trainer) -> bool:
    return trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs


def make_pruning_callback(cfg: Mapping[str, Any]) -> OptunaPruningCallback | None:
    """The pruning callback of an Optuna trial, or None outside trials of medexp's Optuna sweeper."""
    trial_number = cfg.get("optuna_trial")
    if trial_number is None:
        return None
    sweeper = optuna_sweeper_config()
    if sweeper is None:
        return None
    return OptunaPruningCallback(study_name=sweeper.study_name, storage=sweeper.storage,
                                 trial_number=int(trial_number), metric=sweeper.metric,
                                 pruner=sweeper.pruner, pruner_kwargs=sweeper.pruner_kwargs)


def raise_if_pruned(callbacks: Iterable[Any]) -> None:
    """Raise ``optuna.TrialPruned`` if a pruning callback stopped training; call after fit (and after tagging)."""
    for callback in callbacks:
        if isinstance(callback, OptunaPruningCallback) and callback.pruned:
            import optuna

            raise optuna.TrialPruned(f"trial {callback.trial_number} pruned after epoch {callback.pruned_at} "
                                     f"on {callback.metric}")
