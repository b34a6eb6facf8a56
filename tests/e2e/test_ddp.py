"""DDP over 2 CPU processes (gloo): trains, checkpoints, resumes; metrics equal single-process ones; multirun + DDP
gives exactly one run per job, not a sweep per rank."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SMALL = ["data.num_train=256", "data.num_val=100", "data.num_test=101", "callbacks.progress_bar.refresh_rate=0",
         "+trainer.limit_train_batches=2"]


def train(*args: str, cwd: Path, uri: str, multirun: bool = False) -> subprocess.CompletedProcess:
    flags = ["-m"] if multirun else []
    done = subprocess.run([str(BIN / "medexp-train"), *flags, "trainer=ddp_cpu", *SMALL, *args], cwd=cwd, text=True,
                          capture_output=True, timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def runs(uri: str):
    client = MlflowClient(uri)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_ddp_trains_resumes_and_matches_single_process_metrics(tmp_path, tracking_uri):
    from medexp.workflows.evaluate import evaluate_checkpoint

    run_dir = tmp_path / "run"
    train("trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path, uri=tracking_uri)
    resumed = train("trainer.max_epochs=2", f"hydra.run.dir={run_dir}", "ckpt_path=last", cwd=tmp_path,
                    uri=tracking_uri)
    assert resumed.stdout.count("medexp: resuming from ") == 1, resumed.stdout[-3000:]  # rank 0 only
    assert "last.ckpt (saved in epoch 0, step " in resumed.stdout
    client, (run,) = runs(tracking_uri)  # the resumed run logged into the same MLflow run
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")][-1] >= 2
    import torch

    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    single = evaluate_checkpoint(str(best), tracking_uri, "eval", log_to="none")
    # 101 test images over 2 ranks: unpadded shards, so the gathered metrics see every image exactly once
    assert single["test/auroc"] == pytest.approx(run.data.metrics["test/auroc"], abs=1e-6)
    assert single["test/accuracy"] == pytest.approx(run.data.metrics["test/accuracy"], abs=1e-6)


def test_multirun_with_ddp_runs_each_job_once(tmp_path, tracking_uri):
    sweep = tmp_path / "multirun"
    done = train("model=cnn,resnet18", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                 uri=tracking_uri, multirun=True)
    assert (done.stdout + done.stderr).count("Launching 2 jobs") == 1
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    _, found = runs(tracking_uri)
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
