"""Several sweepers on one study (medexp.sweeps.workers), without a cluster: the sqlite lock, claims, and which
RUNNING trials count as stale. The same on PostgreSQL with two real workers: tests/e2e/test_cluster.py; pruning across
two workers on PostgreSQL: the last test here."""
from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from medexp.sweeps import workers
from tests.e2e.test_cluster import cluster, toy_worker  # noqa: F401  (cluster is a fixture: the local PostgreSQL)


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

    from medexp.tracking.sweep_parent import SweepRecord, close_parent_run

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


@pytest.mark.slow
def test_a_worker_prunes_its_trial_on_the_other_workers_reports(tmp_path, cluster, tracking_uri):  # noqa: F811
    """Worker A completes two good trials; then worker B, started on its own, runs a bad one. The median pruner waits
    for two complete trials and B has none of its own, so only A's reports can stop B's trial at its first epoch."""
    url, name = cluster["MEDEXP_PG_URL"], f"pruning-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    good = {"optimizer.lr": 1e-3, "optimizer.weight_decay": 1e-4, "data.batch_size": 64}  # the toy objective's best
    for _ in range(2):
        study.enqueue_trial(good)  # the next trials asked take these values, whichever worker asks
    args = ["hparams_search=optuna", f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={name}",
            "toy.epochs=3", "++hydra.sweeper.pruner_kwargs={n_startup_trials:2,n_warmup_steps:0}"]

    def run_worker(label: str, n_trials: int) -> str:
        worker = toy_worker(tmp_path / label, *args, f"hydra.sweeper.n_trials={n_trials}")
        assert worker.wait(timeout=600) == 0, (tmp_path / label / "worker.log").read_text()[-3000:]
        return f"{socket.gethostname()}:{worker.pid}"  # as the worker names itself on the trials it claims

    a = run_worker("a", 2)
    study.enqueue_trial({**good, "optimizer.lr": 3e-2})  # the search space's worst learning rate
    b = run_worker("b", 3)

    trials = optuna.load_study(study_name=name, storage=url).trials
    assert [(t.state, t.user_attrs[workers.WORKER_ATTR]) for t in trials] == [
        (TrialState.COMPLETE, a), (TrialState.COMPLETE, a), (TrialState.PRUNED, b)]
    pruned = trials[2]
    assert list(pruned.intermediate_values) == [0]  # stopped at its first report, 2 epochs early
    seen = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete < pruned.datetime_complete]
    assert len(seen) == 2 and {t.user_attrs[workers.WORKER_ATTR] for t in seen} == {a}
    assert pruned.intermediate_values[0] < min(t.intermediate_values[0] for t in seen)
