"""Several sweepers on one study (medexp.sweeps.workers), without a cluster: the sqlite lock, claims, and which
RUNNING trials count as stale. The same on PostgreSQL with two real workers: tests/test_cluster.py."""
from __future__ import annotations

import subprocess
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from medexp.sweeps import workers


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(study_name="s", storage=workers.heartbeat_storage(f"sqlite:///{tmp_path}/o.db"))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_reaping_fails_only_trials_whose_sweeper_is_gone(study):
    import socket

    mine, dead, unclaimed, elsewhere = (study.ask() for _ in range(4))
    workers.claim(study, mine)
    workers.claim(study, dead)
    dead.set_user_attr(workers.WORKER_ATTR, f"{socket.gethostname()}:{dead_pid()}")
    workers.claim(study, elsewhere)  # another host's live sweeper: its heartbeat is fresh
    elsewhere.set_user_attr(workers.WORKER_ATTR, "another-host:1")

    assert workers.reap_stale_trials(study) == [dead.number, unclaimed.number]
    states = {t.number: t.state for t in study.trials}
    assert states == {mine.number: TrialState.RUNNING, dead.number: TrialState.FAIL,
                      unclaimed.number: TrialState.FAIL, elsewhere.number: TrialState.RUNNING}
    assert workers.n_claimed_trials(study) == 2


def test_a_silent_heartbeat_is_stale_wherever_its_sweeper_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "GRACE_S", 1)
    study = optuna.create_study(study_name="s", storage=workers.heartbeat_storage(f"sqlite:///{tmp_path}/o.db"))
    trial = study.ask()
    workers.claim(study, trial)
    trial.set_user_attr(workers.WORKER_ATTR, "another-host:1")
    assert workers.reap_stale_trials(study) == []
    time.sleep(2.1)  # the database clock counts whole seconds
    assert workers.reap_stale_trials(study) == [trial.number]


def test_the_study_lock_excludes_other_holders(tmp_path):
    storage = f"sqlite:///{tmp_path}/o.db"
    entered = threading.Event()

    def other():
        with workers.study_lock(storage, "s"):
            entered.set()

    with workers.study_lock(storage, "s"):
        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(0.5)
        with workers.study_lock(storage, "another study"):  # other studies are not held up
            pass
    assert entered.wait(5)
    thread.join()


def test_the_parent_stays_running_while_another_worker_runs_a_trial(tracking_uri):
    from mlflow.tracking import MlflowClient

    from medexp.tracking.sweep import SweepRecord, close_parent_run

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("workers")
    parent = client.create_run(experiment, run_name="study").info.run_id
    record = SweepRecord(tracking_uri, experiment, parent, "study", "optuna", ["optimizer.lr"], "val/score", True, 0)
    tags = {"mlflow.parentRunId": parent, "sweep.trial": "0"}
    client.create_run(experiment, run_name="trial-0", tags={**tags, "sweep.state": "COMPLETE"})
    other = client.create_run(experiment, run_name="trial-1", tags={**tags, "sweep.trial": "1"}).info.run_id

    close_parent_run(record)  # this worker is done, the other one still runs trial 1
    assert client.get_run(parent).info.status == "RUNNING"
    client.set_tag(other, "sweep.state", "COMPLETE")
    client.set_terminated(other, "FINISHED")
    close_parent_run(record)  # the last worker to end closes it
    assert client.get_run(parent).info.status == "FINISHED"
