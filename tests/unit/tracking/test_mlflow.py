"""MlflowRunLogger: what it sends to the store and when."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from medexp.tracking.orphans import ENDED_BY_TAG
from tests.e2e.test_run_status import wait_for


def test_training_curves_wait_for_the_first_evaluation_and_keep_their_steps(tracking_uri):
    """The key metrics come first in MLflow's list (the compare view plots the first shared one); the held-back
    training curves land whole, at their own steps, and a run that never evaluates still gets them."""
    from mlflow.tracking import MlflowClient

    from medexp.tracking.mlflow import MlflowRunLogger

    client = MlflowClient(tracking_uri)
    evaluated = MlflowRunLogger(tracking_uri, "medexp", run_name="evaluated")
    evaluated.leading_metrics = ["test/dice", "val/dice"]
    for step in range(3):
        evaluated.log_metrics({"train/lr": 0.01, "train/loss": 1.0 / (step + 1)}, step=step)
    evaluated.log_metrics({"val/loss": 0.5, "val/dice": 0.7, "train/loss_epoch": 0.4}, step=3)
    evaluated.log_metrics({"train/lr": 0.005}, step=4)
    evaluated.finalize("success")
    evaluated.end("FINISHED")
    run_id = evaluated._ended_ids[0]
    assert list(client.get_run(run_id).data.metrics)[0] == "val/dice"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "train/lr")] == [0, 1, 2, 4]

    for finalized in (True, False):  # stopped inside Lightning's loops, or failed outside them
        never = MlflowRunLogger(tracking_uri, "medexp", run_name="never evaluated")
        never.log_metrics({"train/loss": 1.0}, step=0)
        never.log_metrics({"train/loss": 0.5}, step=1)
        if finalized:
            never.finalize("failed")
        never.end("KILLED")
        assert [m.value for m in client.get_metric_history(never._ended_ids[0], "train/loss")] == [1.0, 0.5]


def test_a_resumed_run_drops_the_stale_ended_by_tag(tracking_uri):
    from medexp.tracking.mlflow import MlflowRunLogger
    from medexp.tracking.writer import ENDED_BY_TAG

    first = MlflowRunLogger(tracking_uri, "medexp", run_name="resumed")
    wait_for(lambda: first.version, 60, "the run to open")
    run_id = first.version
    first.log_tags({ENDED_BY_TAG: "writer: the training process exited without closing the run (killed?)"})
    first.end("FAILED")
    again = MlflowRunLogger(tracking_uri, "medexp", run_id=run_id)
    again.end("FINISHED")
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and ENDED_BY_TAG not in run.data.tags


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
