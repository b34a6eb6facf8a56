"""A sweep against a real MLflow tracking server on loopback (what `make server` runs), read back over HTTP."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_sweep_app import run_toy, sweep_runs


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port: int, store: Path) -> list[str]:
    """`make server`, on a given port and store: sqlite backend, artifacts proxied into a folder beside it."""
    return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "mlartifacts"), "--workers", "1"]


def wait_until_serving(uri: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until the MLflow server at ``uri`` answers ``/health``; its log is the message if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                return
        except OSError:
            pass
        assert server.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"mlflow server did not come up in {timeout:.0f} s"
        time.sleep(0.5)


@pytest.fixture
def tracking_server(tmp_path, monkeypatch):
    port = free_loopback_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(server_command(port, tmp_path / "server"), stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(uri, server, tmp_path / "server.log", timeout=90)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.slow
def test_optuna_sweep_round_trip_through_a_server(tmp_path, tracking_server):
    from mlflow.tracking import MlflowClient

    run_toy(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=served",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}")

    client = MlflowClient(tracking_server)
    (parent,), children = sweep_runs(client)
    assert parent.info.status == "FINISHED" and parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert sorted(c.info.run_name.split()[0] for c in children) == ["trial-0", "trial-1"]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(len(client.get_metric_history(c.info.run_id, "val/score")) == 1 for c in children)
    assert {f.path for f in client.list_artifacts(parent.info.run_id, "summary")} >= {
        "summary/summary.csv", "summary/summary.md", "summary/objective.png", "summary/best_params.yaml"}
    csv = Path(client.download_artifacts(parent.info.run_id, "summary/summary.csv", str(tmp_path))).read_text()
    assert csv.splitlines()[0].startswith("trial,run,state,optimizer.lr") and len(csv.splitlines()) == 3
