"""The runs table a medexp experiment opens with in MLflow's UI: the choices and learning rate a user compares, the
best value of the monitored validation metric (sorted best first: the figure a model is chosen by) and the test
metric of the same quantity beside it (reported, never the sort key: choosing on the test set biases it).

MLflow has no server-side default column set (mlflow#4713, #12764): each browser keeps its own. Since 3.15 it keeps
*shared views* of the runs table as experiment tags, ``mlflow.sharedViewState.<key>`` holding the table's state as
JSON, opened by a link with ``?viewStateShareKey=<key>``. medexp writes one such view, ``medexp``, for each
experiment it logs to, and every link it prints opens it. The compare view's parallel-coordinates plot starts on
these params because the others are not logged (``medexp.tracking.mlflow.comparable_params``), and its metric axis
on the monitored validation metric, which ``MlflowRunLogger`` logs before any training curve.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

VIEW_KEY = "medexp"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# the training (not GenAI) view of MLflow 3's UI, with medexp's columns
RUNS_QUERY = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
# params shown when a run has them (the UI orders them by name); the others are a click away under "Columns"
SHOWN_PARAMS = ("model", "data", "optimizer", "optimizer.lr", "data.fold", "seed")


def column(kind: str, key: str) -> str:
    """The runs table's name for a param, metric or tag column (``metrics.`test/auroc```)."""
    return f"{kind}.`{key}`"


def key_metrics(monitor: str, tested: bool) -> list[str]:
    """The metric runs are chosen by first (the best value of the monitored validation metric, that of the kept
    checkpoint), then the test value of the same quantity where there is a test split."""
    _, _, quantity = monitor.partition("/")
    return [f"best/{monitor}", *([f"test/{quantity}"] if tested and quantity else [])]


def runs_view(config: Mapping, params: Mapping[str, object]) -> str:
    """The ``medexp`` view of the runs table for a run of ``config`` logging ``params``: its JSON, as the UI's
    "Share view" writes it (sort key, direction and selected columns)."""
    task = config.get("task") or {}
    monitor = str(task.get("monitor", "val/loss"))
    metrics = key_metrics(monitor, bool(config.get("test", True)))
    shown = [column("params", key) for key in SHOWN_PARAMS if key in params]
    return json.dumps({"orderByKey": column("metrics", metrics[0]), "orderByAsc": task.get("monitor_mode") == "min",
                       "selectedColumns": [*shown, *(column("metrics", key) for key in metrics)]})
