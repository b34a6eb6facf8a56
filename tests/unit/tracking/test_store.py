"""Where MLflow keeps things: experiments created once, with their artifacts beside a local store and the tag that
opens MLflow's runs table; the store a run logs to when nothing says otherwise."""
from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from medexp.tracking.store import EXPERIMENT_KIND_TAGS, default_tracking_uri, get_or_create_experiment


def test_an_experiment_is_created_once_with_its_artifacts_beside_the_local_store(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, "lesions", tracking_uri)
    assert get_or_create_experiment(client, "lesions", tracking_uri) == experiment_id
    experiment = client.get_experiment(experiment_id)
    store = Path(tracking_uri[len("sqlite:///"):])
    assert experiment.artifact_location == (store.parent / "mlartifacts" / "lesions").resolve().as_uri()
    assert EXPERIMENT_KIND_TAGS.items() <= experiment.tags.items()
    assert [e.name for e in client.search_experiments() if e.name == "lesions"] == ["lesions"]


def test_the_default_store_is_the_environments_or_a_sqlite_file_in_the_outputs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(str(tmp_path / "outputs")) == f"sqlite:///{(tmp_path / 'outputs').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(str(tmp_path / "outputs")) == "http://127.0.0.1:5000"
