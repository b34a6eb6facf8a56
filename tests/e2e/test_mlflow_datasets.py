"""A run's training data fills MLflow 3's Datasets column: name, digest and source, with its splits' sizes."""
from __future__ import annotations

import json

from medexp.workflows.train import run_experiment


def test_a_run_logs_its_training_data_as_an_mlflow_dataset_input(make_cfg, tracking_uri):
    from mlflow.tracking import MlflowClient

    cfg = make_cfg("data.num_train=64", "data.num_val=32", "data.num_test=32", "trainer.max_epochs=1",
                   "callbacks.progress_bar.refresh_rate=0")
    run_experiment(cfg)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs(["1"])
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.digest == run.data.tags["dataset.sha256"][:16]
    assert json.loads(given.dataset.profile)["splits"] == {"train": 64, "val": 32, "test": 32}
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "training")]
