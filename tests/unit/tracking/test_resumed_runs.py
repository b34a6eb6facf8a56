"""What a run reopened later records: a resumed training keeps its name and logs no step twice; a resumed Optuna
study's parent and an interrupted sweep's parent carry no stale ``medexp.ended_by``."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from medexp.tracking.orphans import ENDED_BY_TAG, PID_TAG


def killed_run(tracking_uri: str) -> str:
    """A run that logged the learning rate at the start of its second epoch (step 32), then was killed."""
    from medexp.tracking.mlflow import MlflowRunLogger

    first = MlflowRunLogger(tracking_uri, "medexp", run_name="first-name")
    first.wait_until_open()
    first.log_metrics({"lr-Adam": 1e-3}, step=0)
    first.log_metrics({"val/auroc": 0.7, "train/loss": 0.5}, step=32)
    first.log_metrics({"lr-Adam": 1e-3}, step=32)
    first.log_tags({ENDED_BY_TAG: "writer: the training process exited without closing the run (killed?)"})
    first.end("FAILED")
    return first.version


def test_a_resumed_training_logs_no_step_twice_and_keeps_its_name(tracking_uri):
    from medexp.tracking.attach import Tracking
    from medexp.tracking.mlflow import MlflowRunLogger

    run_id = killed_run(tracking_uri)
    # resumed from last.ckpt at the end of the first epoch (step 32): the second epoch starts again there
    again = MlflowRunLogger(tracking_uri, "medexp", run_id=run_id, resumed=True)
    again.wait_until_open()
    described = Tracking(mlflow=again, run_name="cnn-synthetic-seed0-235959", tracking_uri=tracking_uri).describe()
    again.log_metrics({"lr-Adam": 1e-3}, step=32)
    again.log_metrics({"val/auroc": 0.8, "train/loss": 0.4}, step=64)
    again.log_metrics({"lr-Adam": 1e-3}, step=64)
    again.end("FINISHED")

    client = MlflowClient(tracking_uri)
    assert [m.step for m in client.get_metric_history(run_id, "train/lr")] == [0, 32, 64]
    assert [m.step for m in client.get_metric_history(run_id, "val/auroc")] == [32, 64]
    assert described[0].startswith(f"MLflow run: first-name ({run_id})")  # the name the store has
    assert again.run_name == "first-name"
    assert ENDED_BY_TAG not in client.get_run(run_id).data.tags


def test_an_evaluation_logged_to_the_training_run_adds_its_point(tracking_uri):
    from medexp.tracking.mlflow import MlflowRunLogger

    run_id = killed_run(tracking_uri)
    evaluation = MlflowRunLogger(tracking_uri, "medexp", run_id=run_id, step_offset=32)
    evaluation.log_metrics({"val/auroc": 0.75}, step=0)
    evaluation.end("FINISHED")
    assert [m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, "val/auroc")] == [32, 32]


def test_a_resumed_optuna_parent_drops_the_stale_ended_by_tag(tracking_uri):
    import os

    from medexp.tracking.sweep import _open_study_parent

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
