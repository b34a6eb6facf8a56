"""Search spaces, per-trial seeds and run names: the small pieces a researcher must be able to trust."""
from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from medexp.errors import ConfigError
from medexp.redact import redact_text
from medexp.sweeps.seeds import sampler_seed, trial_seed
from medexp.sweeps.space import grid_values, override_value, search_space
from medexp.tracking.sweep_parent import run_name, swept_values


def test_config_search_space_forms():
    fixed, space = search_space({
        "optimizer.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "model.width": {"type": "int", "low": 16, "high": 128, "step": 16},
        "model": {"type": "categorical", "choices": ["cnn", "resnet18"]},
        "optimizer": ["adam", "sgd"],
        "data.batch_size": "choice(32,64)",
    }, ["data=synthetic"])
    assert fixed == ["data=synthetic"]
    assert space == {
        "optimizer.lr": FloatDistribution(1e-5, 1e-2, log=True),
        "model.width": IntDistribution(16, 128, step=16),
        "model": CategoricalDistribution(["cnn", "resnet18"]),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
        "data.batch_size": CategoricalDistribution([32, 64]),
    }


def test_command_line_sweeps_join_and_fixed_values_leave_the_space():
    fixed, space = search_space({"optimizer.lr": {"type": "float", "low": 1e-5, "high": 1e-2},
                                 "data.batch_size": [32, 64]},
                                ["data.batch_size=128", "model=cnn,resnet18", "optimizer.lr=tag(log,interval(1e-4,1e-1))",
                                 "model.depth=range(2,9,2)", "dropout=interval(0,0.5)", "layers=tag(int,interval(1,4))"])
    assert fixed == ["data.batch_size=128"]
    assert space == {
        "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "model": CategoricalDistribution(["cnn", "resnet18"]),
        "model.depth": IntDistribution(2, 8, step=2),
        "dropout": FloatDistribution(0.0, 0.5),
        "layers": IntDistribution(1, 4),
    }


@pytest.mark.parametrize("params,message", [
    ({}, "no search space"),
    ({"x": {"type": "float", "low": 0}}, "'high'"),
    ({"x": {"type": "uniform", "low": 0, "high": 1}}, "unknown type"),
    ({"x": 3}, "expected a list"),
])
def test_bad_search_spaces_name_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        search_space(params, [])


def test_grid_values_need_finite_points():
    assert grid_values({"a": IntDistribution(1, 5, step=2), "b": FloatDistribution(0, 1, step=0.5)}) == {
        "a": [1, 3, 5], "b": [0.0, 0.5, 1.0]}
    with pytest.raises(ConfigError, match="sampler=grid needs finite values for lr"):
        grid_values({"lr": FloatDistribution(1e-4, 1e-2, log=True)})


@pytest.mark.parametrize("value,text", [
    (3e-4, "0.0003"), (64, "64"), (True, "true"), (None, "null"), ("resnet18", "resnet18"),
    ("a b,c", "'a b,c'"), ("it's", "'it\\'s'"),
])
def test_sampled_values_become_valid_overrides(value, text):
    assert override_value(value) == text


def test_trial_seeds_are_distinct_reproducible_and_differ_between_sweeps():
    seeds = [trial_seed(0, n) for n in range(100)]
    assert len(set(seeds)) == 100 and seeds == [trial_seed(0, n) for n in range(100)]
    assert set(seeds).isdisjoint(trial_seed(1, n) for n in range(100))
    assert sampler_seed(0, 0) != sampler_seed(0, 3)  # a resumed study samples anew
    assert all(0 <= s < 2**31 - 1 for s in seeds)


def test_run_names_hold_only_swept_keys():
    overrides = ["data.root=/x", "model=resnet18", "optimizer.lr=0.0003", "seed=123", "optuna_trial=3"]
    values = swept_values(overrides, ["model", "optimizer.lr"])
    assert run_name("grid", 3, values) == "model=resnet18,optimizer.lr=3e-4"
    assert run_name("optuna", 3, values) == "trial-3 model=resnet18,lr=3e-4"
    assert run_name("optuna", 1, {"model.lr": "0.25", "optimizer.lr": "0.1"}) == "trial-1 model.lr=0.25,optimizer.lr=0.1"
    assert run_name("grid", 2, {}) == "job-2"


def test_storage_passwords_stay_out_of_logs_and_tags():
    assert redact_text("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    assert redact_text("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"
