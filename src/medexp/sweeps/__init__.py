"""Hyperparameter sweeps: the Optuna sweeper's logic, in-job pruning, per-trial seeds and sweep summaries.

The Hydra plugin in ``hydra_plugins/medexp_optuna_sweeper`` is a thin shell around ``medexp.sweeps.optuna_sweeper``;
MLflow parent/child runs of any sweep live in ``medexp.tracking.sweep``. Optuna is imported only where it is used:
``study``, ``space`` and ``optuna_sweeper`` import it, this package and ``seeds``/``outcome``/``summary`` do not.
"""
from __future__ import annotations

# hydra.sweeper._target_ of medexp's Optuna sweeper: how jobs and callbacks recognise an Optuna sweep
OPTUNA_SWEEPER_TARGET = "hydra_plugins.medexp_optuna_sweeper.optuna_sweeper.MedexpOptunaSweeper"


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
