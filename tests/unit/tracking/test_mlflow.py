"""MlflowRunLogger: what it sends to the store and when."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

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
