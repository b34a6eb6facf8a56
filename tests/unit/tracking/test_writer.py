"""The MLflow writer process: a dead writer is an error at the next log."""
from __future__ import annotations

import os
import signal

from tests.e2e.test_run_status import wait_for


def test_a_dead_writer_is_an_error_at_the_next_log_not_silence(tracking_uri):
    from medexp.errors import MedexpError
    from medexp.tracking.mlflow import MlflowRunLogger
    from medexp.tracking.writer import writer_process

    logger = MlflowRunLogger(tracking_uri, "medexp", run_name="doomed")
    logger.log_metrics({"train/loss": 1.0}, step=0)
    writer = writer_process()
    os.kill(writer._proc.pid, signal.SIGKILL)

    def next_log_fails() -> str | None:
        try:
            logger.log_metrics({"train/loss": 0.5}, step=1)
        except MedexpError as error:
            return str(error)
        return None

    assert "writer process has exited" in wait_for(next_log_fails, 30, "the logger to notice")
    assert writer_process() is not writer  # the next run gets a fresh writer
