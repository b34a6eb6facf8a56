"""Slurm job identity and resume after a requeue, from the environment Slurm gives a job (no cluster needed; the
real requeue is tests/e2e/test_cluster.py), and multi-node DDP as a 2-task ``srun`` job in the local cluster."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from medexp.checkpoints import resolve_resume
from medexp.distributed import slurm_job_id, slurm_requeued
from tests.e2e.test_cluster import cluster  # noqa: F401  (a fixture: the local Slurm, started as the cluster tests start it)
from tests.e2e.test_scale_ddp import BIN, SMALL, assert_one_run_with_single_process_metrics

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    for name in SLURM_VARS:
        monkeypatch.delenv(name, raising=False)


def test_an_array_task_is_named_as_scontrol_takes_it(monkeypatch):
    assert slurm_job_id() is None
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert slurm_job_id() == "41"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert slurm_job_id() == "40_1"


def test_only_a_requeued_slurm_job_resumes_from_its_own_last_checkpoint(tmp_path, monkeypatch):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert resolve_resume(None, tmp_path) is None  # outside Slurm: a fresh run
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert not slurm_requeued() and resolve_resume(None, tmp_path) is None  # first start of the job
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resolve_resume(None, tmp_path) == str(last)
    last.unlink()
    assert resolve_resume(None, tmp_path) is None  # stopped before it saved anything: starts over


@pytest.mark.slow
def test_a_two_task_srun_job_trains_one_ddp_run_with_single_process_metrics(tmp_path, cluster, tracking_uri):  # noqa: F811
    """srun starts medexp-train once per task; Lightning's SLURMEnvironment makes task t rank t of one gloo world
    (rendezvous on the job's first node, port from the job id). One node hosts both tasks here: this cluster has one.
    Lightning refuses ``--ntasks`` without ``--ntasks-per-node``, which the preset also reads its devices from."""
    run_dir, job_name = tmp_path / "run", f"medexp-ddp-{uuid.uuid4().hex[:8]}"
    command = ["srun", f"--partition={cluster['MEDEXP_SLURM_PARTITION']}", "--nodes=1", "--ntasks-per-node=2",
               f"--job-name={job_name}", f"--output={tmp_path}/task%t.log", str(BIN / "medexp-train"),
               "trainer=ddp_multinode", "trainer.accelerator=cpu", *SMALL, f"hydra.run.dir={run_dir}"]
    try:
        done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=600)
    finally:  # a timed-out srun is killed and leaves its job behind, pending or running
        subprocess.run(["scancel", f"--name={job_name}"], check=False)
    logs = [(tmp_path / f"task{t}.log").read_text() if (tmp_path / f"task{t}.log").is_file() else "" for t in (0, 1)]
    assert done.returncode == 0, f"{done.stderr}\n{logs[0][-2000:]}\n{logs[1][-2000:]}"
    for rank, text in enumerate(logs):  # each Slurm task is the rank of its task id, in one world of 2
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text, text[-2000:]
        assert "SLURM auto-requeueing enabled" in text  # Lightning took the rendezvous from Slurm, not its defaults

    run = assert_one_run_with_single_process_metrics(tracking_uri, run_dir)
    assert (run.data.params["trainer.num_nodes"], run.data.params["trainer.devices"]) == ("1", "2")
