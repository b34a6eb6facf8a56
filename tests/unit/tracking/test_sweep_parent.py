"""Sweep run names: only the swept keys, short and readable."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from medexp.tracking.orphans import ENDED_BY_TAG, PID_TAG
from medexp.tracking.sweep_parent import run_name, swept_values


def test_run_names_hold_only_swept_keys():
    overrides = ["data.root=/x", "model=resnet18", "optimizer.lr=0.0003", "seed=123", "optuna_trial=3"]
    values = swept_values(overrides, ["model", "optimizer.lr"])
    assert run_name("grid", 3, values) == "model=resnet18,optimizer.lr=3e-4"
    assert run_name("optuna", 3, values) == "trial-3 model=resnet18,lr=3e-4"
    assert run_name("optuna", 1, {"model.lr": "0.25", "optimizer.lr": "0.1"}) == "trial-1 model.lr=0.25,optimizer.lr=0.1"
    assert run_name("grid", 2, {}) == "job-2"


def test_a_resumed_optuna_parent_drops_the_stale_ended_by_tag(tracking_uri):
    import os

    from medexp.tracking.sweep_parent import _open_study_parent

    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("medexp")
    tags = {"sweep.kind": "optuna", "sweep.name": "study", "sweep.storage": "sqlite:///optuna.db"}
    parent = client.create_run(experiment_id, run_name="study", tags=tags).info.run_id
    client.set_tag(parent, ENDED_BY_TAG, "writer: the training process exited without closing the run (killed?)")
    client.set_terminated(parent, "FAILED")

    assert _open_study_parent(client, experiment_id, tags, live=set()) == parent
    reopened = client.get_run(parent)
    assert reopened.info.status == "RUNNING" and ENDED_BY_TAG not in reopened.data.tags
    assert reopened.data.tags[PID_TAG] == str(os.getpid())  # this sweeper owns it now
