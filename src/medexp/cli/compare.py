"""``medexp-compare``: rank the MLflow runs of an experiment (or of one sweep) and write an HTML + PNG report.

    medexp-compare                               # every run of every experiment
    medexp-compare medexp                        # every run of experiment "medexp"
    medexp-compare medexp --sweep <parent run id | sweep name> --metric val/auroc
"""
from __future__ import annotations

import argparse
from pathlib import Path

from medexp.cli import user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="medexp-compare", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("experiment", nargs="?",
                   help="MLflow experiment name (the config's tracking.experiment; default: every experiment)")
    p.add_argument("--sweep", help="only the runs of this sweep: its parent run id or its sweep name")
    p.add_argument("--metric", help="rank by this metric (default: the sweep's, else the runs' optimized_metric; "
                   "a validation metric by its best value, best/<metric>, where the runs logged it)")
    p.add_argument("--mode", choices=["max", "min"], help="higher or lower is better (default: the sweep's, else max)")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db)")
    p.add_argument("--out", type=Path,
                   help="report folder (default: outputs/compare/<experiment>[-<sweep>]-<date>-<time>, one per call)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with user_errors():
        from medexp.workflows.compare import compare_runs

        page, png = compare_runs(args.experiment, args.sweep, args.metric, args.mode, args.tracking_uri, args.out)
        print(f"report: {page} ({png.name})")


if __name__ == "__main__":
    main()
