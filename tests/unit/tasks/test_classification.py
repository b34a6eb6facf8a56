"""The classification task's metric names."""
from __future__ import annotations

from medexp.tasks.classification import metric_key


def test_metric_keys_keep_mlflow_characters():
    assert metric_key("pleural thickening") == "pleural thickening"
    assert metric_key("a/b (c)") == "a_b _c_"
