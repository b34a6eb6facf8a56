"""The runs table a printed link opens sorts by the best validation value, the test value beside it, never by it."""
from __future__ import annotations

import json

from medexp.tracking.views import key_metrics, runs_view


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
