"""``medexp-runs repair``: close FAILED the MLflow runs left RUNNING by processes that are gone (a killed terminal,
SSH session, container or Slurm job took the whole process group), as ``medexp.tracking.orphans`` describes.

    medexp-runs repair                              # every experiment of the store
    medexp-runs repair --experiment medexp --tracking-uri http://127.0.0.1:5000
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from medexp.cli import user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="medexp-runs", description="Look after the MLflow runs of a store.")
    commands = p.add_subparsers(dest="command", required=True)
    repair = commands.add_parser("repair", help="close FAILED the RUNNING runs of this host whose process is gone")
    repair.add_argument("--experiment", help="only this MLflow experiment (default: every experiment)")
    repair.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with user_errors():
        from medexp.errors import ConfigError
        from medexp.redact import redact_text
        from medexp.tracking.client import open_client
        from medexp.tracking.http import bound_mlflow_http
        from medexp.tracking.orphans import close_orphans
        from medexp.tracking.store import default_tracking_uri, local_store_path

        uri = args.tracking_uri or default_tracking_uri(os.environ.get("MEDEXP_OUTPUT_ROOT", "outputs"))
        db = local_store_path(uri)
        if db is not None and not Path(db).is_file():
            raise ConfigError(f"no MLflow store at {db}: give --tracking-uri or set MLFLOW_TRACKING_URI")
        bound_mlflow_http()
        client = open_client(uri)
        experiment_ids = None
        if args.experiment:
            experiment = client.get_experiment_by_name(args.experiment)
            if experiment is None:
                raise ConfigError(f"no MLflow experiment {args.experiment!r} in {redact_text(uri)}")
            experiment_ids = [experiment.experiment_id]
        repair = close_orphans(client, experiment_ids, closed_by="medexp-runs repair")
        print(repair.summary() or f"medexp: no orphaned runs in {redact_text(uri)}")


if __name__ == "__main__":
    main()
