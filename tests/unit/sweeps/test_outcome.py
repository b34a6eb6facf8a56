"""What a finished Hydra job tells the sweep: COMPLETE with a finite objective, PRUNED only for Optuna's own
TrialPruned, FAIL for everything else, with the reason kept."""
from __future__ import annotations

import math

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus

from medexp.sweeps.outcome import COMPLETE, FAIL, PRUNED, job_outcome, objective_value


def finished(returned) -> JobReturn:
    return JobReturn(status=JobStatus.COMPLETED, _return_value=returned)


def raised(error: BaseException) -> JobReturn:
    return JobReturn(status=JobStatus.FAILED, _return_value=error)


def test_a_completed_job_with_a_finite_objective_is_complete():
    outcome = job_outcome(finished({"val/auroc": 0.75, "test/auroc": 0.7}), "val/auroc")
    assert (outcome.state, outcome.value, outcome.error) == (COMPLETE, 0.75, None)


@pytest.mark.parametrize("returned", [{"val/auroc": math.nan}, {"val/auroc": math.inf}, {"val/loss": 0.3}, None,
                                      {"val/auroc": "n/a"}])
def test_a_completed_job_without_a_finite_objective_fails_saying_what_it_returned(returned):
    outcome = job_outcome(finished(returned), "val/auroc")
    assert outcome.state == FAIL and outcome.value is None
    assert str(outcome.error) == f"the task returned no finite 'val/auroc' (got {returned!r})"


def test_only_optunas_trial_pruned_prunes_a_trial():
    pruned = optuna.TrialPruned("epoch 2")
    outcome = job_outcome(raised(pruned), "val/auroc")
    assert (outcome.state, outcome.error) == (PRUNED, pruned)

    class TrialPruned(Exception):  # the same name, not Optuna's
        pass

    assert job_outcome(raised(TrialPruned()), "val/auroc").state == FAIL
    crash = RuntimeError("out of memory")
    assert (job_outcome(raised(crash), "val/auroc").state, job_outcome(raised(crash), "val/auroc").error) == (FAIL, crash)


def test_objective_values_are_read_as_finite_floats():
    assert objective_value({"m": "0.25"}, "m") == 0.25
    assert objective_value({"m": 3}, "m") == 3.0
    assert objective_value({"m": -math.inf}, "m") is None
    assert objective_value([("m", 1.0)], "m") is None  # not a mapping
