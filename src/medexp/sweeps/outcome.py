"""What a finished Hydra job means for a sweep: COMPLETE with an objective, PRUNED, or FAIL (Optuna's words)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"


@dataclass
class JobOutcome:
    state: str
    value: float | None = None
    error: BaseException | None = None


def job_outcome(job: JobReturn, metric: str) -> JobOutcome:
    """Classify a job: the sweeper tells Optuna this, and the MLflow callback records the same on the child run."""
    if job.status == JobStatus.COMPLETED:
        value = objective_value(job.return_value, metric)
        if value is not None:
            return JobOutcome(COMPLETE, value)
        return JobOutcome(FAIL, error=ValueError(f"the task returned no finite {metric!r} (got {job.return_value!r})"))
    error = job._return_value
    if _is_pruned(error):
        return JobOutcome(PRUNED, error=error)
    return JobOutcome(FAIL, error=error)


def objective_value(returned: Any, metric: str) -> float | None:
    """``returned[metric]`` as a finite float, or None."""
    if not isinstance(returned, Mapping) or metric not in returned:
        return None
    try:
        value = float(returned[metric])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _is_pruned(error: Any) -> bool:
    if error is None or type(error).__name__ != "TrialPruned":
        return False
    import optuna  # only reached for a job that raised something called TrialPruned

    return isinstance(error, optuna.TrialPruned)
