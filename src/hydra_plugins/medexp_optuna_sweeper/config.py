"""The sweeper's config schema, registered as ``hydra/sweeper=medexp_optuna`` (see ``conf/hparams_search/optuna.yaml``)."""
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class MedexpOptunaSweeperConf:
    _target_: str = "hydra_plugins.medexp_optuna_sweeper.optuna_sweeper.MedexpOptunaSweeper"
    # total trials the study should hold (complete + pruned); re-running a study only adds the missing ones
    n_trials: int = 20
    # trials launched at once (ask n_jobs, launch them through hydra/launcher, tell); pair with hydra/launcher=joblib
    n_jobs: int = 1
    # a persistent Optuna storage URL: jobs report intermediate values to it, and a killed sweep resumes from it
    storage: str | None = None
    study_name: str | None = None
    # maximize | minimize (max | min accepted, as in task.monitor_mode)
    direction: str = "maximize"
    # key of the task's returned metrics to optimise, also reported each validation for pruning
    metric: str = "val/auroc"
    # tpe | random | cmaes | grid, seeded from `seed` and the study's trial count
    sampler: str = "tpe"
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    # median | hyperband | none
    pruner: str = "median"
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)
    # the search space: config key -> {type: float|int|categorical, ...}, a list, or a sweep string;
    # null: only the keys swept on the command line
    params: dict[str, Any] | None = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="medexp_optuna", node=MedexpOptunaSweeperConf,
                             provider="medexp")
