"""Sweep summaries: ranking and the mean ± std a fold or seed sweep reports."""
from __future__ import annotations

import math

import pytest

from medexp.sweeps.summary import mean_and_std, rank


def test_mean_and_std_over_folds():
    rows = [{"test/dice": 0.80}, {"test/dice": 0.82}, {"test/dice": 0.78}, {"test/dice": None}, {"other": "x"}]
    (mean, std, n), = mean_and_std(rows, ["test/dice"]).values()
    assert n == 3 and mean == pytest.approx(0.80) and std == pytest.approx(0.02)
    assert mean_and_std(rows[:1], ["test/dice"]) == {}  # one run has no spread


def test_rank_puts_missing_values_last():
    rows = [{"v": 0.5}, {"v": float("nan")}, {"v": 0.9}]
    assert [r["v"] for r in rank(rows, "v", maximize=True)][:2] == [0.9, 0.5]
    assert math.isnan(rank(rows, "v", maximize=True)[2]["v"])
