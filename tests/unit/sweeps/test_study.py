"""Optuna samplers built from the config."""
from __future__ import annotations

import optuna
import pytest

from tests.e2e.test_sweep_app import mlflow_store, run_toy, sweep_runs  # noqa: F401  (mlflow_store is a fixture)


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_samplers_from_config(sampler):
    from medexp.sweeps.space import search_space
    from medexp.sweeps.study import build_sampler

    pytest.importorskip("cmaes") if sampler == "cmaes" else None
    _, space = search_space({"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}, [])
    study = optuna.create_study(direction="maximize", sampler=build_sampler(sampler, {}, 0, space))
    for _ in range(3):
        trial = study.ask(space)
        study.tell(trial, -abs(trial.params["optimizer.lr"] - 1e-3))
    assert len(study.trials) == 3
