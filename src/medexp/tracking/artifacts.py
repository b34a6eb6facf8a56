"""What a tracking store hands back and takes outside a run's own logging: a run's or a registered model's
artifacts (downloaded), the best checkpoints of a sweep's children, the run a checkpoint belongs to, and an export
logged to that run. ``medexp.checkpoints`` asks here when a checkpoint is named by an MLflow URI or a sweep. The
store is the one a command names (``store``), else the one ``MLFLOW_TRACKING_URI`` names (MLflow's default
otherwise); nothing here sets it for anyone else."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medexp.errors import ConfigError, DataError
from medexp.tracking.store import RUN_ID_FILE


def current_store(store: str | None = None) -> str:
    """``store``, else the store of this process's environment (not a URI an earlier caller set with
    ``mlflow.set_tracking_uri``)."""
    import mlflow

    return store or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def download(uri: str, store: str | None = None, into: Path | None = None) -> Path:
    """The local copy of an artifact URI (``runs:/<id>/<path>``, ``models:/<name>/<version>``), a file or a folder,
    inside ``into`` (default: a folder MLflow chooses)."""
    import mlflow

    store = current_store(store)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=store,
                                                        dst_path=None if into is None else str(into)))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the user needs the URI and the store
        raise DataError(f"cannot fetch the MLflow model {uri} from {store}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0]}; set MLFLOW_TRACKING_URI to the store "
                        "that holds it") from None


def sweep_best_checkpoints(sweep: str) -> list[str]:
    """``runs:/<child>/checkpoints/<best>`` of every finished child of the sweep (searched in every experiment of
    the store ``MLFLOW_TRACKING_URI`` names)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or None)
    for experiment in client.search_experiments():
        try:
            parent = find_sweep_parent(client, experiment.experiment_id, sweep)
        except ConfigError:
            continue
        children = client.search_runs([experiment.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parent.info.run_id}' and status = 'FINISHED'")
        members = []
        for child in children:
            best = [a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")
                    if a.path.rsplit("/", 1)[-1].startswith("best")]
            members += [f"runs:/{child.info.run_id}/{path}" for path in best[:1]]
        if not members:
            raise ConfigError(f"sweep {sweep!r} has no finished child run with a best checkpoint to ensemble")
        return members
    raise ConfigError(f"no sweep {sweep!r} (a parent run id or sweep name) in {client.tracking_uri}: set "
                      "MLFLOW_TRACKING_URI to the store it was logged to")


def find_sweep_parent(client: Any, experiment_ids: str | list[str], sweep: str):
    """A sweep's parent run in one experiment or several, by run id or by sweep name (the latest of that name;
    children carry the name too)."""
    experiment_ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    by_name = client.search_runs(experiment_ids, f"tags.`sweep.name` = '{sweep}'", max_results=1000,
                                 order_by=["attributes.start_time DESC"])
    parents = [r for r in by_name if "sweep.kind" in r.data.tags]
    if not parents and len(sweep) == 32 and sweep.isalnum():
        parents = list(client.search_runs(experiment_ids, f"attributes.run_id = '{sweep}'", max_results=1))
    if not parents:
        raise ConfigError(f"no sweep {sweep!r} (a parent run id or sweep name) in "
                          f"{'this experiment' if len(experiment_ids) == 1 else 'any experiment'}")
    return parents[0]


def run_of_checkpoint(ckpt_path: str, store: str | None = None) -> str | None:
    """The MLflow run a checkpoint belongs to: the run of a ``runs:/`` or ``models:/`` URI, or the id medexp-train
    wrote into the checkpoint's run folder."""
    if ckpt_path.startswith("runs:/"):
        return ckpt_path.removeprefix("runs:/").split("/")[0]
    if ckpt_path.startswith("models:/"):
        from mlflow.tracking import MlflowClient

        name, _, version = ckpt_path.removeprefix("models:/").partition("/")
        return MlflowClient(current_store(store)).get_model_version(name, version).run_id
    run_id_file = Path(ckpt_path).resolve().parent.parent / RUN_ID_FILE
    return run_id_file.read_text().strip() if run_id_file.is_file() else None


def log_export(ckpt_path: str, output: Path, fmt: str, difference: float, store: str) -> str | None:
    """The file under ``export/`` and ``export/<fmt>_max_abs_difference`` in the checkpoint's run in ``store``; None
    when the checkpoint has no run there."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id = run_of_checkpoint(str(ckpt_path), store)
    if run_id is None:
        return None
    client = MlflowClient(store)
    try:
        client.get_run(run_id)
    except MlflowException:  # trained against another store: nothing to attach to here
        return None
    client.log_artifact(run_id, str(output), "export")
    client.log_metric(run_id, f"export/{fmt}_max_abs_difference", difference)
    return run_id
