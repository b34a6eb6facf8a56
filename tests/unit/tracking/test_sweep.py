"""Sweep run names: only the swept keys, short and readable."""
from __future__ import annotations

from medexp.tracking.sweep import run_name, swept_values


def test_run_names_hold_only_swept_keys():
    overrides = ["data.root=/x", "model=resnet18", "optimizer.lr=0.0003", "seed=123", "optuna_trial=3"]
    values = swept_values(overrides, ["model", "optimizer.lr"])
    assert run_name("grid", 3, values) == "model=resnet18,optimizer.lr=3e-4"
    assert run_name("optuna", 3, values) == "trial-3 model=resnet18,lr=3e-4"
    assert run_name("optuna", 1, {"model.lr": "0.25", "optimizer.lr": "0.1"}) == "trial-1 model.lr=0.25,optimizer.lr=0.1"
    assert run_name("grid", 2, {}) == "job-2"
