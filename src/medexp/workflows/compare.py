"""``medexp-compare``: rank the MLflow runs of an experiment (or of one sweep, or of every experiment) by a metric,
print the table and write the HTML + PNG report (``medexp.tracking.compare`` reads and ranks them)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def compare_runs(experiment: str | None, sweep: str | None = None, metric: str | None = None, mode: str | None = None,
                 tracking_uri: str | None = None, out: Path | None = None) -> tuple[Path, Path]:
    """Close the store's orphaned runs, print the ranked table; write the report into ``out`` (default:
    ``outputs/compare/<experiment or all>[-<sweep>]-<date>-<time>``, one per call) and return its page and plot."""
    from medexp.tracking.client import open_client
    from medexp.tracking.compare import compare, format_table, write_report
    from medexp.tracking.http import bound_mlflow_http
    from medexp.tracking.orphans import close_orphans
    from medexp.tracking.store import default_tracking_uri

    output_root = Path(os.environ.get("MEDEXP_OUTPUT_ROOT", "outputs"))
    uri = tracking_uri or default_tracking_uri(str(output_root))
    bound_mlflow_http()
    client = open_client(uri)
    repaired = close_orphans(client, closed_by="medexp-compare").summary(elsewhere=False)
    if repaired:  # runs whose process group was killed: compared as the FAILED runs they are
        print(repaired)
    comparison = compare(client, experiment, sweep, metric, mode)
    print(format_table(comparison))
    name = "-".join([experiment or "all", *([sweep] if sweep else []), time.strftime("%Y%m%d-%H%M%S")])
    return write_report(comparison, out or output_root / "compare" / name)
