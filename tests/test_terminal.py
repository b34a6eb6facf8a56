"""What the terminal shows during and after a run: the bar's loss and monitored metric, no library noise."""
from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import torch


def test_the_progress_bar_shows_the_loss_and_the_monitored_metric_not_v_num():
    from medexp.callbacks.progress import MetricsProgressBar

    trainer = SimpleNamespace(callback_metrics={"train/loss": torch.tensor(0.123456), "val/auroc": torch.tensor(0.9),
                                                "val/loss": torch.tensor(0.3)})
    shown = MetricsProgressBar().get_metrics(trainer, SimpleNamespace(monitor="val/auroc"))
    assert shown == {"loss": "0.1235", "val/auroc": "0.9"}


def test_library_noise_is_silenced_and_only_that(caplog):
    from medexp.quiet import quiet_libraries

    quiet_libraries()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()  # filters go after simplefilter: the order a run has
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=2)
        warnings.warn("The number of training batches (4) is smaller than the logging interval", UserWarning, stacklevel=2)
        warnings.warn("inverse has been called but no invertible transforms have been supplied", stacklevel=2)
        warnings.warn("something a user should see", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["something a user should see"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").warning("a real warning")
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").warning("nvImageCodec is not available; skipping")
    assert [r.getMessage() for r in caplog.records] == ["a real warning"]


def test_a_new_store_opens_on_medexp_s_runs_table_and_prints_no_library_chatter(tmp_path):
    """A first run into a fresh store: its printed link opens the ``medexp`` view of the runs table, whose every
    column is a param or metric the run logged and whose sort key is the test metric of the monitored quantity;
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
    assert view["orderByKey"] == "metrics.`test/auroc`" and view["orderByAsc"] is False
    # MLflow's compare view plots the first metric a run logged: the monitored one, not the learning rate
    assert list(client.get_run(run.info.run_id).data.metrics)[0] == "val/auroc"
    assert "train/lr" in run.data.metrics


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
