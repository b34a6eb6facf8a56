"""Hyperparameter sweeps: the Optuna sweeper's logic, in-job pruning, per-trial seeds and sweep summaries.

The Hydra plugin in ``hydra_plugins/medexp_optuna_sweeper`` is a thin shell around ``medexp.sweeps.optuna_loop``;
MLflow parent/child runs of any sweep live in ``medexp.tracking.sweep_parent``. Optuna is imported only where it is used:
``study``, ``space`` and ``optuna_loop`` import it, this package and ``seeds``/``outcome``/``summary`` do not.
"""
from __future__ import annotations

# hydra.sweeper._target_ of medexp's Optuna sweeper: how jobs and callbacks recognise an Optuna sweep
OPTUNA_SWEEPER_TARGET = "hydra_plugins.medexp_optuna_sweeper.optuna_sweeper.MedexpOptunaSweeper"
# overrides saying where and how a sweep runs, not what it searches: workers of one study (on hosts with their own
# output disks, sweep dirs and launchers) may differ in them
WHERE_NOT_WHAT = ("hydra.", "hydra/", "paths.")


def default_study_name(config) -> str:
    """The study a sweep belongs to when ``hydra.sweeper.study_name`` is not given: ``<name>-<data>-<model>-<digest>``,
    the digest taken over the sweep's command line, search space, objective and storage. The same sweep command
    resumes (or, started on several hosts, joins) the same study; a sweep of other data, model or space gets its
    own. Pure: the MLflow sweep callback names the parent run with it before the sweeper runs."""
    import hashlib
    import json

    from omegaconf import OmegaConf

    hydra = config.hydra
    sweeper = OmegaConf.to_container(hydra.sweeper, resolve=False)
    identity = {
        # where and how it runs (sweep dir, launcher, n_trials, sampler) does not change what is searched
        "overrides": sorted(str(o) for o in hydra.overrides.task
                            if not str(o).lstrip("+~").startswith(WHERE_NOT_WHAT) or ".params." in str(o)),
        "params": search_params(config), "metric": sweeper.get("metric"), "direction": sweeper.get("direction"),
    }
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    choices = hydra.runtime.choices
    parts = [str(config.get("name", "medexp")), str(choices.get("data", "data")), str(choices.get("model", "model"))]
    return "-".join([*parts, digest])


def search_params(config) -> dict:
    """The search space a sweep's config gives: ``hydra.sweeper.params``, or on an experiment ``medexp-plan`` wrote
    the space centred on the plan (``plan.search``), which replaces the generic space of ``hparams_search=optuna``
    (``plan.search=null`` keeps that one)."""
    from omegaconf import OmegaConf

    planned = OmegaConf.select(config, "plan.search", default=None)
    optuna = config.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER_TARGET
    chosen = planned if planned and optuna else config.hydra.sweeper.get("params")
    return OmegaConf.to_container(chosen, resolve=True) if OmegaConf.is_config(chosen) else dict(chosen or {})


def planned_values(config, keys) -> dict:
    """The composed config's value of each key, where it has one: on a planned experiment, the plan's values (a
    value the command line fixed is not searched, so not asked for)."""
    from omegaconf import OmegaConf

    values = {}
    for key in keys:
        value = OmegaConf.select(config, key, default=None)
        if value is not None:
            values[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return values


def study_name(config) -> str:
    """``hydra.sweeper.study_name``, or the default derived from the sweep (``default_study_name``)."""
    return str(config.hydra.sweeper.get("study_name") or default_study_name(config))


def optuna_sweeper_config():
    """``hydra.sweeper`` when this job belongs to medexp's Optuna sweeper, else None.

    Checks the sweeper, not the run mode: DDP ranks relaunched for a trial run in RUN mode with the same config.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    return sweeper if sweeper.get("_target_") == OPTUNA_SWEEPER_TARGET else None


def register_optuna_sweeper() -> None:
    """Make Hydra see the Optuna sweeper even where its plugin scan cannot.

    Hydra finds plugins by listing the ``hydra_plugins`` namespace package; setuptools' editable installs
    (``pip install -e .`` with a mapped package dir) import ``src/hydra_plugins/...`` fine but hide it from that
    listing. Importing the plugin registers its config (``hydra/sweeper=medexp_optuna``); this registers the class.
    Idempotent, and harmless where the scan did find it. Call before ``@hydra.main`` runs.
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.medexp_optuna_sweeper.optuna_sweeper import MedexpOptunaSweeper

    Plugins.instance().register(MedexpOptunaSweeper)
