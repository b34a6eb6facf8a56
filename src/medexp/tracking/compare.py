"""Compare runs as MLflow holds them: a ranked table of key params and metrics, and an HTML + PNG report.

Reads MLflow only (no bookkeeping of its own), so it works for runs from any machine that logged to the store.
Runs of one sweep (a parent run id or a sweep name), or every top-level/child run of an experiment (of every
experiment unless one is named).
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medexp.errors import ConfigError
from medexp.sweeps.summary import Row, is_number, plot_ranked, rank, to_html_table, to_text, write_csv
from medexp.tracking.artifacts import find_sweep_parent
from medexp.tracking.sweep_parent import OBJECTIVE_METRIC, PARAM_TAG, param_tag

MAX_PARAM_COLUMNS = 8
# params that differ between runs without being hyperparameters
_NOT_HYPERPARAMETERS = ("paths.", "tracking.", "hydra", "optuna_trial", "name", "ckpt_path", "logger.")


@dataclass
class Comparison:
    title: str
    metric: str
    maximize: bool
    columns: list[str]
    rows: list[Row]  # ranked, best first


def compare(client: Any, experiment: str | None = None, sweep: str | None = None, metric: str | None = None,
            mode: str | None = None) -> Comparison:
    """Rank the runs of ``experiment`` (every experiment when None; or of one sweep: parent run id or sweep name)
    by ``metric``: by default the monitored validation metric's best value (``best/val/...``, the kept
    checkpoint's), never a test metric, which is shown beside it."""
    experiments = _experiments(client, experiment)
    parent = find_sweep_parent(client, [e.experiment_id for e in experiments], sweep) if sweep else None
    filter_string = f"tags.mlflow.parentRunId = '{parent.info.run_id}'" if parent else ""
    ids = [parent.info.experiment_id] if parent else [e.experiment_id for e in experiments]
    runs = [r for r in client.search_runs(ids, filter_string, max_results=10000)
            if "sweep.kind" not in r.data.tags]  # sweep parents summarise; they are not compared
    if not runs:
        raise ConfigError(f"no runs to compare in experiment {experiment!r}" + (f" under sweep {sweep!r}" if sweep else ""))
    parent_tags = parent.data.tags if parent else {}
    metric = metric or parent_tags.get("sweep.metric") or _common_param(runs, "optimized_metric") or _a_val_metric(runs)
    if not metric.startswith("best/") and any(f"best/{metric}" in r.data.metrics for r in runs):
        metric = f"best/{metric}"  # a validation curve's last value is not the checkpoint's that is kept
    mode = mode or parent_tags.get("sweep.direction") or _common_param(runs, "task.monitor_mode") or "max"
    maximize = mode.startswith("max")
    keys = _key_params(runs)
    names = {e.experiment_id: e.name for e in experiments}
    several = len({r.info.experiment_id for r in runs}) > 1
    rows = [{**({"experiment": names.get(r.info.experiment_id)} if several else {}), **_row(r, keys, metric)}
            for r in runs]
    tests = sorted({k for r in runs for k in r.data.metrics if k.startswith("test")})
    columns = [*(["experiment"] if several else []), "run", "state", *keys, metric, *tests, "run_id"]
    scope = experiment if experiment else "all experiments"
    title = scope + (f" / {parent.info.run_name}" if parent else "") + f": {len(rows)} runs by {metric}"
    return Comparison(title, metric, maximize, columns, rank(rows, metric, maximize))


def _experiments(client: Any, experiment: str | None) -> list:
    """The named experiment, or every experiment of the store."""
    if experiment is None:
        return list(client.search_experiments())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ConfigError(f"no MLflow experiment {experiment!r} in this store (experiments: {names})")
    return [exp]


def write_report(comparison: Comparison, out_dir: Path) -> tuple[Path, Path]:
    """``report.html`` (the table, the plot) and ``ranking.png`` (and ``runs.csv``) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png, page = out_dir / "ranking.png", out_dir / "report.html"
    plot_ranked(comparison.rows, "run", comparison.metric, comparison.title, png)
    write_csv(comparison.rows, comparison.columns, out_dir / "runs.csv")
    direction = "higher" if comparison.maximize else "lower"
    page.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(comparison.title)}</title>"
        "<style>body{font-family:sans-serif} table{border-collapse:collapse} "
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>"
        f"<h1>{html.escape(comparison.title)}</h1><p>Ranked by {html.escape(comparison.metric)} ({direction} is better).</p><img src='{png.name}'>{to_html_table(comparison.rows, comparison.columns)}")
    return page, png


def format_table(comparison: Comparison) -> str:
    return comparison.title + "\n\n" + to_text(comparison.rows, [c for c in comparison.columns if c != "run_id"])


def _row(run: Any, keys: list[str], metric: str) -> Row:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row: Row = {"run": run.info.run_name, "state": tags.get("sweep.state") or tags.get("trial_state") or run.info.status}
    # a swept value, else the param, else the option chosen in that group (runs logged before params held choices)
    row.update({k: tags.get(param_tag(k), params.get(k, tags.get(f"choice.{k}"))) for k in keys})
    # a sweep job records the value it was compared on; a plain run, the metric's last logged value
    row[metric] = metrics.get(OBJECTIVE_METRIC) if OBJECTIVE_METRIC in metrics else metrics.get(metric)
    row.update({k: v for k, v in metrics.items() if k.startswith("test")})
    row["run_id"] = run.info.run_id
    return row


def _key_params(runs: list) -> list[str]:
    """The swept keys where runs carry them; else the params whose values differ between the runs."""
    swept = [k[len(PARAM_TAG):] for k in dict.fromkeys(t for r in runs for t in r.data.tags if t.startswith(PARAM_TAG))]
    if swept:
        return swept[:MAX_PARAM_COLUMNS]
    values: dict[str, set] = {}
    for run in runs:
        chosen = {k[len("choice."):]: v for k, v in run.data.tags.items() if k.startswith("choice.")}
        for key, value in {**chosen, **run.data.params}.items():
            values.setdefault(key, set()).add(value)
    differing = [k for k, v in values.items() if len(v) > 1 and not k.startswith(_NOT_HYPERPARAMETERS)]
    return sorted(differing)[:MAX_PARAM_COLUMNS]


def _common_param(runs: list, key: str) -> str | None:
    counts = Counter(r.data.params[key] for r in runs if key in r.data.params)
    return counts.most_common(1)[0][0] if counts else None


def _a_val_metric(runs: list) -> str:
    keys = sorted({k for r in runs for k, v in r.data.metrics.items() if is_number(v)})
    chosen = next((k for k in keys if k.startswith("val")), keys[0] if keys else None)
    if chosen is None:
        raise ConfigError("the runs have no metrics to rank by")
    return chosen
