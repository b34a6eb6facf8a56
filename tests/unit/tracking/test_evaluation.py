"""``medexp.tracking.evaluation``: where ``medexp-eval``'s metrics go. That a finished training run keeps its
status, times and histories is tested end to end in test_training (``test_eval_reproduces_...``)."""
from __future__ import annotations

import pytest

from medexp.errors import DataError
from medexp.tracking.evaluation import attach_evaluation, check_log_to


def test_an_unknown_destination_is_one_line():
    with pytest.raises(DataError, match="log_to='elsewhere': use one of same, new, none"):
        check_log_to("elsewhere")


def test_log_to_none_logs_nothing_and_closes_cleanly(tmp_path):
    tracking = attach_evaluation(str(tmp_path / "best.ckpt"), "sqlite:///unused.db", "eval", "none", 12)
    assert tracking.loggers == [] and "not logged" in tracking.where
    tracking.close(failed=False)
    tracking.close(failed=True)
