"""An MLflow client whose store is usable: a new local sqlite store is created (or an old one migrated) by one
process at a time.

MLflow creates a sqlite store's tables, or runs its schema migrations, when the first client opens it; several
processes doing that at once (runs started together on a new store, a sweep's parallel jobs) fail with "table ...
already exists" and an SQL dump. A file lock beside the database (``mlflow.db.lock``) serialises that step; opening
a store that is ready only takes the lock for a moment.
"""
from __future__ import annotations

from typing import Any

from medexp.errors import ConfigError
from medexp.tracking.store import local_store_path

STORE_LOCK_TIMEOUT_S = 300.0  # a migration takes seconds; this much waiting means a process hangs holding it


def open_client(tracking_uri: str) -> Any:
    """``MlflowClient(tracking_uri)``, its store created or migrated under the store's file lock if it is local."""
    from mlflow.tracking import MlflowClient

    db = local_store_path(tracking_uri)
    if db is None:
        return MlflowClient(tracking_uri)
    from filelock import FileLock, Timeout

    db.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{db}.lock")
    try:
        with lock.acquire(timeout=STORE_LOCK_TIMEOUT_S):
            return MlflowClient(tracking_uri)  # opens the store: creates or migrates it if it must
    except Timeout:
        raise ConfigError(f"the MLflow store {db} stayed locked for {STORE_LOCK_TIMEOUT_S:.0f} s ({lock.lock_file}): "
                          "another process is creating or migrating it, or hangs; stop that process") from None
