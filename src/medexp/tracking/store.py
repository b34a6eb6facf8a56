"""Where MLflow keeps things: one tracking URI, and artifacts beside a local sqlite store."""
from __future__ import annotations

import os
from pathlib import Path

# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, tokens); this value is what its
# own "Model training" toggle writes, and opens the runs table
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
RUN_ID_FILE = "mlflow_run_id"  # in the run directory: a resumed run logs into the same MLflow run


def local_store_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for servers and other stores."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):])
    return None


def artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """Artifacts of a local sqlite store live in ``mlartifacts/<experiment>`` beside the database, so the store and
    its artifacts move together and ``make ui`` serves both; a server decides for itself (None)."""
    db = local_store_path(tracking_uri)
    if db is None:
        return None
    return (db.parent / "mlartifacts" / experiment_name).resolve().as_uri()


def get_or_create_experiment(client, experiment_name: str, tracking_uri: str) -> str:
    """The id of ``experiment_name``, creating it (with artifacts beside a local store) if it does not exist."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    db = local_store_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    try:
        return client.create_experiment(experiment_name, artifact_location=artifact_location(tracking_uri, experiment_name),
                                        tags=EXPERIMENT_KIND_TAGS)
    except Exception:  # another process created it between our lookup and create
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise
        return experiment.experiment_id


def default_tracking_uri(output_root: str) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else an absolute sqlite store in the outputs folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output_root).resolve() / 'mlflow.db'}"
