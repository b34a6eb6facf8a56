"""Processes opening a new sqlite store together: one creates it, under a file lock, and the others use it."""
from __future__ import annotations

import subprocess
import sys

OPEN_AND_LOG = """
import sys
from medexp.tracking.client import open_client
from medexp.tracking.store import get_or_create_experiment
client = open_client(sys.argv[1])
experiment = get_or_create_experiment(client, "medexp", sys.argv[1])
client.set_terminated(client.create_run(experiment).info.run_id)
"""


def test_four_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_AND_LOG, uri], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], "\n".join(e[-1500:] for e in errors)
    assert not any("already exists" in e for e in errors)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("medexp").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] * 4
