"""The runs view a new store opens on, and no library chatter while it is created.

The runs table a printed link opens sorts by the best validation value, the test value beside it, never by it."""
from __future__ import annotations

import json

from medexp.tracking.views import key_metrics, runs_view


def test_a_new_store_opens_on_medexp_s_runs_table_and_prints_no_library_chatter(tmp_path):
    """A first run into a fresh store: its printed link opens the ``medexp`` view of the runs table, whose every
    column is a param or metric the run logged and whose sort key is the best value of the monitored metric;
    MLflow's table-creation INFO lines and MONAI's DICOM-decoder notice are not printed."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from medexp.tracking.views import RUNS_QUERY, VIEW_TAG

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([str(Path(sys.executable).parent / "medexp-train"), "trainer.max_epochs=1",
                           "data.num_train=64", "data.num_val=32", "data.num_test=32", "optimizer.lr=0.002",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": store})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Creating initial MLflow database tables" not in done.stderr and "nvImageCodec" not in done.stderr
    client = MlflowClient(store)
    (run,) = client.search_runs(["1"])
    assert f"Runs table: http://127.0.0.1:5000/#/experiments/1/runs?{RUNS_QUERY}" in done.stdout
    view = json.loads(client.get_experiment("1").tags[VIEW_TAG])
    logged = {f"params.`{k}`" for k in run.data.params} | {f"metrics.`{k}`" for k in run.data.metrics}
    assert view["selectedColumns"][:2] == ["params.`model`", "params.`data`"]  # the choices first
    assert "params.`optimizer.lr`" in view["selectedColumns"]
    assert set(view["selectedColumns"]) <= logged, set(view["selectedColumns"]) - logged
    assert view["orderByKey"] == "metrics.`best/val/auroc`" and view["orderByAsc"] is False
    # MLflow's compare view plots the first metric a run logged: the monitored one, not the learning rate
    assert list(client.get_run(run.info.run_id).data.metrics)[0] == "best/val/auroc"
    assert "train/lr" in run.data.metrics


def test_the_runs_table_sorts_by_the_best_validation_value_with_test_beside_it():
    config = {"task": {"monitor": "val/auroc", "monitor_mode": "max"}, "test": True}
    view = json.loads(runs_view(config, {"model": "cnn", "data": "pneumoniamnist", "optimizer.lr": 0.001}))
    assert view["orderByKey"] == "metrics.`best/val/auroc`" and view["orderByAsc"] is False
    assert view["selectedColumns"][-2:] == ["metrics.`best/val/auroc`", "metrics.`test/auroc`"]


def test_a_loss_is_sorted_ascending_and_a_run_without_test_shows_no_test_column():
    view = json.loads(runs_view({"task": {"monitor": "val/loss", "monitor_mode": "min"}, "test": False}, {}))
    assert view["orderByKey"] == "metrics.`best/val/loss`" and view["orderByAsc"] is True
    assert key_metrics("val/loss", tested=False) == ["best/val/loss"]
    assert key_metrics("val/dice", tested=True) == ["best/val/dice", "test/dice"]
