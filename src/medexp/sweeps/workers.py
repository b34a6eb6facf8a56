"""Several sweepers on one study: started independently (one per host or GPU) with the same storage and study name,
they share the study, together run exactly ``n_trials`` trials and agree on one MLflow parent run.

- ``study_lock``: one sweeper at a time claims trials (counts RUNNING + COMPLETE + PRUNED, asks the missing ones),
  reaps stale trials and opens the MLflow parent: a PostgreSQL/MySQL advisory lock, a file lock for sqlite.
  Optuna's ``MaxTrialsCallback`` counts only after a trial ends, so two workers both start one at ``n - 1``.
- ``Heartbeat``: each sweeper stamps its live trials (Optuna's RDB heartbeat) and names itself on them
  (``medexp.worker`` = host:pid), so ``reap_stale_trials`` fails only trials whose sweeper is gone: a silent
  heartbeat, or a dead pid on this host. Another worker's live trials are left alone.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterable, Iterator

import optuna
from optuna.trial import TrialState

from medexp.redact import redact_text

log = logging.getLogger(__name__)

HEARTBEAT_S = 15  # how often a sweeper stamps its running trials
GRACE_S = 90  # a trial not stamped for this long belongs to a sweeper that is gone (another host's clock is not used)
WORKER_ATTR = "medexp.worker"


def heartbeat_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage with Optuna's trial heartbeat on (all string storage URLs are RDB ones)."""
    # Optuna warns that heartbeats are meant for Study.optimize; this sweeper asks and tells, and beats itself
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
    with warnings.catch_warnings():  # experimental since Optuna 2.9, unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)


@contextlib.contextmanager
def study_lock(storage: str, study_name: str) -> Iterator[None]:
    """Hold the study's lock: across hosts for PostgreSQL and MySQL (advisory locks), across processes of this host
    for sqlite (a lock file beside the database)."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(storage)
    backend = url.get_backend_name()
    digest = hashlib.sha256(f"medexp-study:{study_name}".encode()).digest()
    if backend == "sqlite":
        import fcntl

        path = f"{url.database or 'optuna'}.{digest[:6].hex()}.lock"
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if backend == "postgresql":
        key = int.from_bytes(digest[:8], "big", signed=True)
        acquire, release = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
    elif backend in ("mysql", "mariadb"):
        key = f"medexp-{digest[:16].hex()}"
        acquire, release = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"
    else:
        log.warning("%s: no lock for this database, sweepers started at once on one study may run more than "
                    "n_trials trials: use PostgreSQL, MySQL or sqlite", redact_text(storage))
        yield
        return
    # its own connection, closed afterwards: the lock belongs to the session, never left in a pool
    engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(acquire), {"k": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(release), {"k": key})
    finally:
        engine.dispose()


def n_claimed_trials(study: optuna.Study) -> int:
    """Trials that take a place among ``n_trials``: running (some worker's), complete and pruned."""
    return len(study.get_trials(deepcopy=False,
                                states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)))


def claim(study: optuna.Study, trial: optuna.Trial) -> None:
    """Name this sweeper on a trial it just asked and stamp it; call under ``study_lock``, before anyone reaps."""
    trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    study._storage.record_heartbeat(trial._trial_id)


def reap_stale_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose sweeper is gone, so they neither count nor block; returns their numbers.

    Gone: its heartbeat is older than ``GRACE_S``; or it ran on this host under a pid that no longer lives; or it was
    never claimed by a sweeper (a killed older sweep). Call under ``study_lock``.
    """
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():  # experimental since Optuna 2.9, unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # silent heartbeats
    left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    orphans = [t for t in left if _orphaned(t)]
    for trial in orphans:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    failed = sorted(running - {t.number for t in left} | {t.number for t in orphans})
    if failed:
        log.warning("study %s: marked %d trial(s) left RUNNING by a stopped sweeper as FAIL: %s",
                    study.study_name, len(failed), failed)
    return failed


def live_trials(storage: str, study_name: str) -> set[int]:
    """Numbers of the study's trials still running somewhere, stale ones reaped first; empty for a new study.
    Call under ``study_lock``."""
    try:
        study = optuna.load_study(study_name=study_name, storage=heartbeat_storage(storage))
    except KeyError:  # no such study yet
        return set()
    reap_stale_trials(study)
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def _orphaned(trial: optuna.trial.FrozenTrial) -> bool:
    worker = trial.user_attrs.get(WORKER_ATTR)
    if worker is None:
        return True
    host, _, pid = str(worker).rpartition(":")
    return host == socket.gethostname() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Heartbeat:
    """Stamps this sweeper's running trials every ``HEARTBEAT_S`` from a daemon thread, while jobs run elsewhere."""

    def __init__(self, study: optuna.Study) -> None:
        self._storage = study._storage
        self._trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="medexp-optuna-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def tracking(self, trials: Iterable[optuna.Trial]) -> Iterator[None]:
        ids = {t._trial_id for t in trials}
        with self._lock:
            self._trial_ids |= ids
        try:
            yield
        finally:
            with self._lock:
                self._trial_ids -= ids

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                ids = list(self._trial_ids)
            for trial_id in ids:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception as e:  # a database hiccup must not kill the sweep; the next beat retries
                    log.warning("heartbeat of trial id %d failed: %s", trial_id, e)
