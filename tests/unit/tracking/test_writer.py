"""The MLflow writer process: a dead writer is said at the next log, training goes on, and the run's end fails
naming where its results are."""
from __future__ import annotations

import os
import signal
import socket

import pytest

from tests.e2e.test_run_status import wait_for


def test_a_dead_writer_is_said_at_the_next_log_and_fails_the_end_not_the_training(tracking_uri, capsys):
    from medexp.errors import MedexpError
    from medexp.tracking.mlflow import MlflowRunLogger
    from medexp.tracking.writer import writer_process

    logger = MlflowRunLogger(tracking_uri, "medexp", run_name="doomed", results_dir="/runs/doomed")
    logger.wait_until_open()
    logger.log_metrics({"val/loss": 1.0}, step=0)
    writer = writer_process()
    os.kill(writer._proc.pid, signal.SIGKILL)

    def next_log_says_so() -> str | None:
        logger.log_metrics({"val/loss": 0.5}, step=1)  # training goes on: its results are in the run folder
        return capsys.readouterr().err

    said = wait_for(next_log_says_so, 30, "the logger to notice")
    assert said.count("\n") == 1 and "writer process has exited" in said and "training goes on" in said
    with pytest.raises(MedexpError, match=r"the run's results are safe in /runs/doomed \(metrics.json"):
        logger.end("FINISHED")
    assert writer_process() is not writer  # the next run gets a fresh writer


def test_a_write_to_a_server_that_is_gone_is_told_from_other_failures(monkeypatch):
    from mlflow.tracking import MlflowClient

    from medexp.tracking.writer import server_gone

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name("medexp")
    except Exception as exc:  # noqa: BLE001 - whatever MLflow wraps it in
        gone = exc
    assert server_gone(gone)
    assert not server_gone(ValueError("a param of another value was logged before"))
