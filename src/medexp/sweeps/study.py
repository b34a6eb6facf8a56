"""Optuna studies as the sweeper and its jobs see them: samplers and pruners by name, persistent storage, resume.

Samplers and pruners are not stored in Optuna's database, so the sweeper (which asks and tells) and each job
(which reports intermediate values and asks whether to prune) build them from the same ``hydra.sweeper`` config.
Imported only by the Optuna sweeper and the pruning callback, so Optuna stays off every other path.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from medexp.errors import ConfigError
from medexp.redact import redact_text
from medexp.sweeps import WHERE_NOT_WHAT
from medexp.sweeps.space import grid_values

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "cmaes", "grid")
PRUNERS = ("median", "hyperband", "none")
# Defaults tuned for sweeps of tens of trials, each a few to tens of epochs; `*_kwargs` in config override them.
_PRUNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "median": {"n_startup_trials": 3, "n_warmup_steps": 1},
    "hyperband": {"min_resource": 1, "reduction_factor": 3},
    "none": {},
}
_SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "tpe": {"n_startup_trials": 5},
    "random": {},
    "cmaes": {},
    "grid": {},
}


def direction(name: str) -> str:
    """``maximize``/``minimize`` from either Optuna's words or Lightning's ``max``/``min`` (``task.monitor_mode``)."""
    words = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
    if name not in words:
        raise ConfigError(f"hydra.sweeper.direction={name!r}: use maximize or minimize (or max/min)")
    return words[name]


def build_sampler(name: str, kwargs: Mapping[str, Any], seed: int,
                  space: Mapping[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    """The sampler called ``name`` (tpe | random | cmaes | grid), seeded, with config keyword arguments on top."""
    if name not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler={name!r}: choose one of {', '.join(SAMPLERS)}")
    options = {**_SAMPLER_DEFAULTS[name], **kwargs, "seed": seed}
    if name == "tpe":
        return optuna.samplers.TPESampler(**options)
    if name == "random":
        return optuna.samplers.RandomSampler(**options)
    if name == "grid":
        return _AskTellGridSampler(grid_values(space), **options)
    try:
        import cmaes  # noqa: F401  (Optuna imports it lazily, and fails only at the first trial)
    except ImportError:
        raise ConfigError("hydra.sweeper.sampler=cmaes needs the 'cmaes' package: pip install cmaes") from None
    return optuna.samplers.CmaEsSampler(**options)


def build_pruner(name: str, kwargs: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner called ``name`` (median | hyperband | none), with config keyword arguments on top."""
    if name not in PRUNERS:
        raise ConfigError(f"hydra.sweeper.pruner={name!r}: choose one of {', '.join(PRUNERS)}")
    options = {**_PRUNER_DEFAULTS[name], **kwargs}
    if name == "median":
        return optuna.pruners.MedianPruner(**options)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**options)
    return optuna.pruners.NopPruner()


def open_study(study_name: str, storage: str, direction_name: str, sampler: optuna.samplers.BaseSampler | None,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study, or load it to resume; a stored study optimising the other way is a config error."""

    if not storage:
        raise ConfigError("hydra.sweeper.storage is empty: jobs report to the study through a storage URL "
                          "(default sqlite:///<outputs>/optuna.db)")
    from medexp.sweeps.workers import heartbeat_storage

    wanted = direction(direction_name)
    study = optuna.create_study(study_name=study_name, storage=heartbeat_storage(storage), sampler=sampler, pruner=pruner,
                                direction=wanted, load_if_exists=True)
    if study.direction.name.lower() != wanted:
        raise ConfigError(f"study {study_name!r} in {redact_text(str(storage))} was created to {study.direction.name.lower()}; "
                          f"this sweep asks to {wanted}: use another hydra.sweeper.study_name")
    return study


SIGNATURE_ATTR = "medexp.signature"


def signature(config, metric: str, space: Mapping[str, BaseDistribution], fixed: list[str]) -> dict[str, Any]:
    """What a study searches: data, model, objective and search space (kept in the study, checked on resume)."""
    choices = config.hydra.runtime.choices
    return {"data": str(choices.get("data")), "model": str(choices.get("model")), "metric": metric,
            "space": {key: repr(dist) for key, dist in sorted(space.items())},
            "fixed": sorted(f for f in fixed if not f.lstrip("+~").startswith(WHERE_NOT_WHAT))}


def check_signature(study: optuna.Study, wanted: dict[str, Any], explicit: bool) -> None:
    """A new study keeps ``wanted``; one that has trials must have been made for the same search, or resuming it
    would mix trials of different questions (and, with a default name, silently report the old answer)."""
    stored = study.user_attrs.get(SIGNATURE_ATTR)
    if stored is None or not study.trials:
        study.set_user_attr(SIGNATURE_ATTR, wanted)
        return
    if stored == wanted:
        return
    differs = ", ".join(f"{key} {stored.get(key)!r} there, {wanted[key]!r} here" for key in wanted
                        if stored.get(key) != wanted[key])
    hint = ("use another hydra.sweeper.study_name, or leave it unset to get one named after this sweep"
            if explicit else "use another hydra.sweeper.study_name")
    raise ConfigError(f"study {study.study_name!r} holds {len(study.trials)} trial(s) of another search ({differs}): "
                      f"{hint}")


def n_counted_trials(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: complete and pruned ones. A failed trial taught nothing; resume redoes it."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def load_trial(study_name: str, storage: str, pruner: optuna.pruners.BasePruner, number: int) -> optuna.Trial:
    """The live trial ``number`` of a stored study, as a job reporting intermediate values needs it."""
    study = optuna.load_study(study_name=study_name, storage=_shared_storage(storage), pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


@functools.lru_cache(maxsize=4)
def _shared_storage(url: str) -> optuna.storages.BaseStorage:
    """One storage (engine, schema check) per URL and process: in-process trials then skip reconnecting each time."""
    return optuna.storages.get_storage(url)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its end-of-grid ``study.stop()``, which raises outside ``study.optimize``; the sweeper
    checks ``is_exhausted`` before each ask instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass
