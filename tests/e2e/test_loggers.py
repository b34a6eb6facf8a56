"""Loggers users expect beside MLflow: TensorBoard event files (logger=tensorboard, or with MLflow), a tags list
that reaches the MLflow run's tags, and a train.log that keeps the run's summary."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SMALL = ["trainer.max_epochs=1", "data.num_train=64", "data.num_val=32", "data.num_test=32",
         "callbacks.progress_bar.refresh_rate=0"]


def train(tmp_path: Path, *args: str, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "medexp-train"), *SMALL, *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})


@pytest.mark.slow
def test_tensorboard_beside_mlflow_and_tags_on_the_run(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = train(tmp_path, "logger=[mlflow,tensorboard]", "tags=[baseline,small data]", uri=tracking_uri)
    assert done.returncode == 0, done.stderr[-2000:]
    events = sorted((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    scalars = {tag for path in events for tag in EventAccumulator(str(path)).Reload().Tags()["scalars"]}
    assert {"val/auroc", "best/val/auroc", "train/loss", "test/auroc"} <= set(scalars), scalars
    (run,) = MlflowClient(tracking_uri).search_runs(["1"])
    assert run.data.tags["baseline"] == "true" and run.data.tags["small data"] == "true"
    # the run's log file keeps what it printed at its end (it used to stay empty); the terminal shows it once
    log = (tmp_path / "run" / "train.log").read_text()
    assert "medexp: run finished" in log and "test/auroc:" in log and "Runs table: http" in log
    assert done.stdout.count("medexp: run finished") == 1 and "[medexp.summary]" not in done.stdout


@pytest.mark.slow
def test_a_tag_mlflow_cannot_hold_is_one_line_before_training(tmp_path, tracking_uri):
    done = train(tmp_path, "tags=[ok,'not:ok']", uri=tracking_uri)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "tags=['ok', 'not:ok'] is not valid: it must be a list of names" in done.stderr
