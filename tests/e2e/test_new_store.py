"""No run trains before its tracking store is usable: a store that cannot be opened stops the run in one line
before any training, and runs started together on a new store all get it (one creates it, under a lock)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent
SMALL = ["data.num_train=128", "data.num_val=32", "data.num_test=32", "callbacks.progress_bar.refresh_rate=0"]


def train(tmp_path: Path, uri: str, name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "medexp-train"), "trainer.max_epochs=1", *SMALL, *args,
                             f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_store_that_cannot_be_opened_stops_the_run_before_it_trains(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"not a database, but a file someone put here\n" * 100)
    trainer = train(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "run", "trainer.max_epochs=50")
    out, err = trainer.communicate(timeout=600)
    assert trainer.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: cannot open MLflow run at sqlite:///{tmp_path / 'mlflow.db'}: ")
    assert "file is not a database" in line
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # not one epoch trained


@pytest.mark.slow
def test_runs_started_together_on_a_new_store_all_finish(tmp_path):
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    trainers = [train(tmp_path, uri, f"run{seed}", f"seed={seed}") for seed in range(3)]
    results = [(t.communicate(timeout=900), t.returncode) for t in trainers]
    assert [code for _, code in results] == [0, 0, 0], "\n".join(err[-2000:] for (_, err), _ in results)
    assert not any("already exists" in err for (_, err), _ in results)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("medexp").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
