"""A training command that is stopped from outside leaves its MLflow run closed, never RUNNING for ever.

Ctrl-C (SIGINT) ends the run KILLED through the trainer; SIGKILL gives the trainer no say, and the MLflow writer
process (``medexp.tracking.writer``) closes the run FAILED when its stdin closes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def heed_ctrl_c() -> None:
    """A shell without job control starts background commands with SIGINT ignored, and their children inherit
    that: a suite run as ``make test &`` from a script would see Ctrl-C ignored, not mishandled."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def the_run(client: MlflowClient):
    experiment = client.get_experiment_by_name("medexp")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return runs[0] if runs else None


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGKILL, "FAILED"), (signal.SIGINT, "KILLED")])
def test_a_stopped_training_closes_its_run(tmp_path, tracking_uri, stop, status):
    log = tmp_path / "trainer.log"
    with open(log, "w") as output:
        trainer = subprocess.Popen(
            [str(BIN / "medexp-train"), "trainer.max_epochs=1000", "data.num_train=256", "data.num_val=64",
             "data.num_test=64", "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"},
            stdout=output, stderr=subprocess.STDOUT, preexec_fn=heed_ctrl_c,
        )
    client = MlflowClient(tracking_uri)
    try:  # stop it once it has logged an epoch: mid-training
        run = wait_for(lambda: (r := the_run(client)) and "train/loss" in r.data.metrics and r, 120, "an epoch")
        trainer.send_signal(stop)
        try:  # a graceful stop on a loaded machine may take a while: what it printed says where it was
            trainer.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 120 s after {stop!r}:\n{log.read_text()[-3000:]}") from None
    finally:
        trainer.kill()
    closed = wait_for(lambda: (r := client.get_run(run.info.run_id)).info.status != "RUNNING" and r, 60,
                      "the run to be closed")
    assert closed.info.status == status
    if stop == signal.SIGKILL:
        assert "exited without closing" in closed.data.tags["medexp.ended_by"]
