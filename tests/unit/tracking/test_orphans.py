"""Runs left RUNNING when their whole process group died are closed FAILED by the next run on the store,
``medexp-compare`` and ``medexp-runs repair``: those of this host whose owning process is gone, no others."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from medexp.tracking.orphans import (
    ENDED_BY_TAG,
    HOST_TAG,
    PID_STARTED_TAG,
    PID_TAG,
    close_orphans,
    owner_tags,
    process_start_time,
    reopen_run,
)
from tests.e2e.test_run_status import wait_for


def gone_process() -> tuple[int, float]:
    """The pid and start time of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = wait_for(lambda: process_start_time(child.pid), 10, "the child's start time")
    child.kill()
    child.wait()
    return child.pid, started


def running_run(client: MlflowClient, name: str, **owner: str) -> str:
    experiment = client.get_experiment_by_name("medexp") or client.get_experiment(client.create_experiment("medexp"))
    return client.create_run(experiment.experiment_id, run_name=name, tags=owner).info.run_id


@pytest.fixture
def orphans(tracking_uri):
    """Four RUNNING runs: a dead owner, a live one, a reused pid (a live process started later), another host."""
    client = MlflowClient(tracking_uri)
    host, pid, started = socket.gethostname(), *gone_process()
    me = owner_tags()
    runs = {
        "dead": running_run(client, "dead", **{HOST_TAG: host, PID_TAG: str(pid), PID_STARTED_TAG: f"{started:.0f}"}),
        "alive": running_run(client, "alive", **me),
        "reused": running_run(client, "reused", **{**me, PID_STARTED_TAG: f"{float(me[PID_STARTED_TAG]) - 3600:.0f}"}),
        "elsewhere": running_run(client, "elsewhere", **{**me, HOST_TAG: "another-host"}),
    }
    return client, runs


def test_only_runs_whose_process_is_gone_on_this_host_are_closed(orphans):
    client, runs = orphans
    repair = close_orphans(client, closed_by="test")

    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"dead": "FAILED", "alive": "RUNNING", "reused": "FAILED", "elsewhere": "RUNNING"}
    assert sorted(r.info.run_name for r in repair.closed) == ["dead", "reused"]
    assert [r.info.run_name for r in repair.elsewhere] == ["elsewhere"]
    ended_by = client.get_run(runs["dead"]).data.tags[ENDED_BY_TAG]
    assert ended_by.startswith("test: process ") and "is gone" in ended_by
    assert "\n" not in repair.summary() and "closed 2 orphaned run(s) FAILED" in repair.summary()
    assert "another host" in repair.summary() and "another host" not in repair.summary(elsewhere=False)
    assert close_orphans(client).closed == []  # nothing left to close


def test_the_next_run_on_the_store_closes_orphans(orphans):
    from medexp.tracking.mlflow import MlflowRunLogger

    client, runs = orphans
    logger = MlflowRunLogger(client.tracking_uri, "medexp", run_name="next")
    logger.wait_until_open()
    wait_for(lambda: client.get_run(runs["dead"]).info.status == "FAILED", 30, "the writer to close the orphan")
    logger.end("FINISHED")
    new = client.get_run(logger.version)
    assert new.info.status == "FINISHED" and new.data.tags[PID_TAG] == str(os.getpid())  # owned by its trainer
    assert client.get_run(runs["alive"]).info.status == "RUNNING"


def test_medexp_runs_repair(orphans, capsys):
    from medexp.cli.runs import main

    client, runs = orphans
    main(["repair", "--tracking-uri", client.tracking_uri])
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "closed 2 orphaned run(s) FAILED" in out and "dead (" in out
    assert client.get_run(runs["dead"]).info.status == "FAILED"
    main(["repair", "--tracking-uri", client.tracking_uri, "--experiment", "medexp"])
    assert "closed" not in capsys.readouterr().out


def test_medexp_runs_repair_without_a_store_is_one_line(tmp_path, capsys):
    from medexp.cli.runs import main

    with pytest.raises(SystemExit) as stop:
        main(["repair", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: no MLflow store at {tmp_path / 'none.db'}: give --tracking-uri or " \
                                      "set MLFLOW_TRACKING_URI\n"
    assert not (tmp_path / "none.db").exists()


def test_a_reopened_run_is_owned_by_its_new_process_and_not_ended_by_anything(tracking_uri):
    client = MlflowClient(tracking_uri)
    pid, started = gone_process()
    run_id = running_run(client, "resumed", **{HOST_TAG: socket.gethostname(), PID_TAG: str(pid)})
    client.set_tag(run_id, ENDED_BY_TAG, "writer: killed")
    client.set_terminated(run_id, "FAILED")
    reopen_run(client, run_id)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and ENDED_BY_TAG not in run.data.tags
    assert run.data.tags[PID_TAG] == str(os.getpid())
    assert close_orphans(client).closed == []
