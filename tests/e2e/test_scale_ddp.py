"""trainer=ddp_multinode: 2 "nodes" x 1 process on loopback, started by torchrun with a c10d rendezvous (gloo),
train one run whose metrics equal a single process's on the same checkpoint and data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medexp.distributed import launch_layout
from tests.e2e.test_tracking_server import free_loopback_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SMALL = ["trainer.max_epochs=1", "data.num_train=256", "data.num_val=100", "data.num_test=101",
         "callbacks.progress_bar.refresh_rate=0", "+trainer.limit_train_batches=2"]


def test_launch_layout_comes_from_torchrun_or_slurm(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NUM_NODES",
                 "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    assert (launch_layout("nodes"), launch_layout("devices")) == (1, 1)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    assert (launch_layout("nodes"), launch_layout("devices")) == (2, 4)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun inside a Slurm allocation: torchrun's layout
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert (launch_layout("nodes"), launch_layout("devices")) == (3, 1)


def test_two_nodes_by_torchrun_train_one_run_with_single_process_metrics(tmp_path, tracking_uri):
    port, run_dir = free_loopback_port(), tmp_path / "run"
    command = [str(BIN / "torchrun"), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=medexp-test", "--no-python", str(BIN / "medexp-train"),
               "trainer=ddp_multinode", "trainer.accelerator=cpu", *SMALL, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]
    nodes = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    codes = [node.wait(timeout=600) for node in nodes]
    text = "".join((tmp_path / f"node{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], text[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text  # one world of 2 ranks, one per "node"

    assert_one_run_with_single_process_metrics(tracking_uri, run_dir)


def assert_one_run_with_single_process_metrics(tracking_uri: str, run_dir: Path):
    """The DDP run was tracked once (by rank 0) and finished, and its test metrics equal one process's evaluation
    of its best checkpoint on the same data. Returns the run."""
    from medexp.workflows.evaluate import evaluate_checkpoint

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    single = evaluate_checkpoint(str(best), tracking_uri, "eval", log_to="none")
    assert single["test/auroc"] == pytest.approx(run.data.metrics["test/auroc"], abs=1e-6)
    assert single["test/accuracy"] == pytest.approx(run.data.metrics["test/accuracy"], abs=1e-6)
    return run
