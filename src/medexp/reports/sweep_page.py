"""The page of a sweep over folds or seeds (its parent run): each run's metrics, their mean ± std and the t
interval of the mean."""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from medexp.reports import stats
from medexp.reports.html_helpers import number_text, table_html, write_page


def write_sweep_page(runs: Sequence[Mapping], spread: Mapping[str, tuple[float, float, int]], folder: Path,
                     title: str, intro: str = "") -> Path:
    """``folder/index.html`` of a sweep that repeats one experiment: per metric each run's value (``runs``: rows
    with ``run`` and the metrics), the mean ± sample std (``spread``: ``summary.mean_and_std``) and the 95%
    interval of the mean (Student's t, n - 1 degrees of freedom)."""
    names = [html.escape(str(run["run"])) for run in runs]
    rows = []
    for metric, (mean, std, n) in spread.items():
        interval = stats.mean_interval(mean, std, n)
        values = [run.get(metric) for run in runs]
        rows.append([html.escape(metric), *(number_text(v if isinstance(v, (int, float)) else None) for v in values),
                     f"{number_text(mean)} ± {number_text(std)}", f"{number_text(interval.low)} - {number_text(interval.high)}",
                     str(n)])
    sections = [f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)} Mean ± sample standard deviation over the "
                "complete runs; the interval is the 95% confidence interval of the mean (t distribution with "
                "n - 1 degrees of freedom; cross-validation folds share training cases, so over folds it runs "
                "narrow).</p>",
                "<h2 id='metrics'>Metrics per run</h2>"
                + table_html(["metric", *names, "mean ± std", "95% CI of the mean", "runs"], rows)]
    return write_page(folder, title, sections)
