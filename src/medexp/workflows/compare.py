"""``medexp-compare``: rank the MLflow runs of an experiment (or of one sweep) by a metric, print the table and
write the HTML + PNG report (``medexp.tracking.compare`` reads and ranks them)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def compare_runs(experiment: str, sweep: str | None = None, metric: str | None = None, mode: str | None = None,
                 tracking_uri: str | None = None, out: Path | None = None) -> tuple[Path, Path]:
    """Print the ranked table; write the report into ``out`` (default: ``outputs/compare/<experiment>[-<sweep>]-
    <date>-<time>``, one per call) and return its page and plot."""
    from medexp.tracking.compare import compare, format_table, write_report
    from medexp.tracking.store import default_tracking_uri, open_client

    output_root = Path(os.environ.get("MEDEXP_OUTPUT_ROOT", "outputs"))
    uri = tracking_uri or default_tracking_uri(str(output_root))
    comparison = compare(open_client(uri), experiment, sweep, metric, mode)
    print(format_table(comparison))
    name = "-".join([experiment, *([sweep] if sweep else []), time.strftime("%Y%m%d-%H%M%S")])
    return write_report(comparison, out or output_root / "compare" / name)
