"""A training run fills MLflow 3's Logged models: its MLflow model is one LoggedModel (logged once, its artifacts
where ``runs:/<run id>/model`` still finds them), linked to the run at the best checkpoint's step, with the run's
params and that step's metrics, and the registered version points at it."""
from __future__ import annotations

import mlflow
from mlflow.entities import LoggedModelStatus

from medexp.workflows.train import run_experiment


def test_a_runs_model_is_a_logged_model_of_its_run_with_the_best_steps_metrics(make_cfg, tracking_uri, tmp_path):
    cfg = make_cfg("data.num_train=64", "data.num_val=32", "data.num_test=32", "trainer.max_epochs=2",
                   "callbacks.progress_bar.refresh_rate=0", "tracking.register_as=logged_model_test")
    run_experiment(cfg)
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs(["1"])
    (model,) = client.search_logged_models(["1"])
    assert model.name == "model" and model.source_run_id == run.info.run_id
    assert model.status == LoggedModelStatus.READY and model.params["optimizer.lr"] == run.data.params["optimizer.lr"]
    (output,) = run.outputs.model_outputs
    monitored = client.get_metric_history(run.info.run_id, "val/auroc")
    best = max(monitored, key=lambda metric: (metric.value, -metric.step))  # the first of equal bests is kept
    assert output.model_id == model.model_id and output.step == best.step
    linked = {metric.key: metric.value for metric in model.metrics}
    assert linked["val/auroc"] == best.value == run.data.metrics["best/val/auroc"]
    assert {metric.step for metric in model.metrics} == {best.step}
    # logged once: the run's own artifacts hold no second copy, yet its URI and the registry find the model
    assert "model" not in [artifact.path for artifact in client.list_artifacts(run.info.run_id)]
    version = client.get_model_version("logged_model_test", "1")
    assert version.source == model.artifact_location and version.run_id == run.info.run_id
    for uri in (f"runs:/{run.info.run_id}/model", "models:/logged_model_test/1", f"models:/{model.model_id}"):
        assert mlflow.pyfunc.load_model(uri).metadata.model_id == model.model_id
