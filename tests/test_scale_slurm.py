"""Slurm job identity and resume after a requeue, from the environment Slurm gives a job (no cluster needed; the
real requeue is tests/test_cluster.py)."""
from __future__ import annotations

import pytest

from medexp.distributed import slurm_job_id, slurm_requeued
from medexp.workflows.build import resolve_ckpt_path

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
    assert resolve_ckpt_path(None, tmp_path) is None  # outside Slurm: a fresh run
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert not slurm_requeued() and resolve_ckpt_path(None, tmp_path) is None  # first start of the job
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resolve_ckpt_path(None, tmp_path) == str(last)
    last.unlink()
    assert resolve_ckpt_path(None, tmp_path) is None  # stopped before it saved anything: starts over
