"""Hyperparameter sweeps: the Optuna sweeper's logic, in-job pruning, per-trial seeds and sweep summaries.

The Hydra plugin in ``hydra_plugins/medexp_optuna_sweeper`` is a thin shell around ``medexp.sweeps.optuna_sweeper``;
MLflow parent/child runs of any sweep live in ``medexp.tracking.sweep``. Optuna is imported only where it is used:
``study``, ``space`` and ``optuna_sweeper`` import it, this package and ``seeds``/``outcome``/``summary`` do not.
"""
from __future__ import annotations

# hydra.sweeper._target_ of medexp's Optuna sweeper: how jobs and callbacks recognise an Optuna sweep
OPTUNA_SWEEPER_TARGET = "hydra_plugins.medexp_optuna_sweeper.optuna_sweeper.MedexpOptunaSweeper"


def redact_url(url: str | None) -> str:
    """A storage URL without its password, fit for logs and MLflow tags."""
    if not url or "@" not in url or "://" not in url:
        return url or ""
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
