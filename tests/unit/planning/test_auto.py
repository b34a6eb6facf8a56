"""``experiment=auto``: which overrides describe the data and the plan, and what the training command keeps."""
from __future__ import annotations

from medexp.planning.auto import auto_arguments, config_dir, split_arguments


def test_plan_options_go_to_the_plan_and_data_overrides_to_both():
    plan, train = split_arguments(["experiment=auto", "data=pneumoniamnist", "data.root=/d", "budget=10m",
                                   "device=cpu", "seed=3", "paths.output_root=/o", "-m"])
    assert plan == ["data=pneumoniamnist", "data.root=/d", "budget=10m", "device=cpu", "paths.output_root=/o"]
    # the plan's copy of the data config replaces data=...; a data value set by hand still wins over the plan
    assert train == ["data.root=/d", "seed=3", "paths.output_root=/o", "-m"]


def test_without_auto_nothing_changes_and_looking_plans_nothing():
    assert auto_arguments(["data=synthetic", "seed=1"]) is None
    assert auto_arguments(["experiment=auto", "budget=5m", "--cfg", "job"]) == ["experiment=auto", "--cfg", "job"]


def test_config_dir_in_either_spelling():
    assert config_dir(["--config-dir", "/c", "x=1"]) == "/c"
    assert config_dir(["--config-dir=/c"]) == "/c" and config_dir(["-cd", "/c"]) == "/c" and config_dir([]) is None
