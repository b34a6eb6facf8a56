"""The tracking seam of ``medexp-eval``: where a re-evaluation's metrics go, and how that ends.

``log_to=same`` adds them to the checkpoint's training run (found by the run id medexp-train wrote beside its
checkpoints), at that run's last step, named ``eval/<metric>`` (``eval/test/auroc``), and leaves the run as it was:
its status, start and end time, and the history of every metric it logged (its own ``test/auroc`` included) stay as
training left them. Why not a child run: the metrics belong to that run's model, where the runs table shows them
beside its own, and a finished run stays one row. ``log_to=new`` opens a run of its own, closed FINISHED or FAILED;
``log_to=none`` logs nothing.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medexp.errors import DataError, MedexpError
from medexp.tracking.store import RUN_ID_FILE

LOG_TO = ("same", "new", "none")
EVAL_PREFIX = "eval/"


@dataclass
class EvaluationTracking:
    """The evaluation's loggers (for Lightning), where they write (one phrase for the terminal), and ``close``."""

    loggers: list[Any]
    where: str

    def close(self, failed: bool) -> None:
        """Write everything; a run of its own ends FAILED or FINISHED, the training run keeps its state. On failure
        the error that stopped the evaluation is the one to show."""
        for logger in self.loggers:
            if failed:
                with contextlib.suppress(MedexpError):
                    logger.end("FAILED")
                continue
            try:
                logger.end("FINISHED")
            except MedexpError as exc:
                raise MedexpError(f"{exc}; medexp-eval logs to MLFLOW_TRACKING_URI (or tracking.uri=...), or use "
                                  "log_to=new / log_to=none") from None


def check_log_to(log_to: str) -> None:
    if log_to not in LOG_TO:
        raise DataError(f"log_to={log_to!r}: use one of {', '.join(LOG_TO)}")


def attach_evaluation(ckpt_path: str, tracking_uri: str, experiment: str, log_to: str,
                      global_step: int) -> EvaluationTracking:
    """The tracking of an evaluation of ``ckpt_path`` (whose training ended at ``global_step``), as ``log_to``
    says (see the module docstring)."""
    from medexp.tracking.mlflow import MlflowRunLogger

    check_log_to(log_to)
    if log_to == "none":
        return EvaluationTracking([], "not logged (log_to=none)")
    run_id_file = Path(ckpt_path).resolve().parent.parent / RUN_ID_FILE
    if log_to == "same" and run_id_file.is_file():
        run_id = run_id_file.read_text().strip()
        logger = MlflowRunLogger(tracking_uri, experiment, run_id=run_id, step_offset=global_step,
                                 keep_state=True, metric_prefix=EVAL_PREFIX)
        return EvaluationTracking([logger], f"logged to the training run {run_id} at step {global_step} "
                                            f"({EVAL_PREFIX}<metric>)")
    logger = MlflowRunLogger(tracking_uri, experiment, run_name=f"eval-{Path(ckpt_path).stem}",
                             tags={"evaluated_checkpoint": str(Path(ckpt_path).resolve())})
    return EvaluationTracking([logger], f"logged to a new run in experiment {experiment!r}")
