"""What a tracking store hands back: a run's or a registered model's artifacts (downloaded), the best checkpoints
of a sweep's children. ``medexp.checkpoints`` asks here when a checkpoint is named by an MLflow URI or a sweep; the
store is the one ``MLFLOW_TRACKING_URI`` names (MLflow's default otherwise)."""
from __future__ import annotations

import os
from pathlib import Path

from medexp.errors import ConfigError, DataError


def current_store() -> str:
    """The store of this process's environment, not a URI an earlier caller set with ``mlflow.set_tracking_uri``."""
    import mlflow

    return os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def download(uri: str) -> Path:
    """The local copy of an artifact URI (``runs:/<id>/<path>``, ``models:/<name>/<version>``): a file or a folder."""
    import mlflow

    store = current_store()
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=store))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the user needs the URI and the store
        raise DataError(f"cannot fetch the MLflow model {uri} from {store}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0]}; set MLFLOW_TRACKING_URI to the store "
                        "that holds it") from None


def sweep_best_checkpoints(sweep: str) -> list[str]:
    """``runs:/<child>/checkpoints/<best>`` of every finished child of the sweep (searched in every experiment of
    the store ``MLFLOW_TRACKING_URI`` names)."""
    from mlflow.tracking import MlflowClient

    from medexp.tracking.compare import _find_parent

    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or None)
    for experiment in client.search_experiments():
        try:
            parent = _find_parent(client, experiment.experiment_id, sweep)
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
