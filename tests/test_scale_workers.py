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
