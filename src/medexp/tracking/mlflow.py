"""MLflow for a training run: the logger, what a run records about itself, and its artifacts.

``MlflowRunLogger`` is a Lightning logger whose MLflow work runs on one background thread, in order: importing
MLflow, opening (or migrating) the store, creating the run, and every write after that. Training starts while a
fresh sqlite store still migrates (3-7 s), and per-epoch writes never stall a step. ``end`` waits for the queue and
closes the run with its status; a write that failed surfaces there, never silently.

``RunRecorder`` (a callback, rank zero only under DDP) writes what a run should carry besides metrics: the flattened
config as params, git state, overrides, dataset fingerprint, config/checkpoint/plots as artifacts.
"""
from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from medexp.errors import MedexpError
from medexp.tracking.store import get_or_create_experiment

RUN_ID_FILE = "mlflow_run_id"  # in the run directory: a resumed run logs into the same MLflow run
MAX_PARAM_LENGTH = 500


class MlflowRunLogger(Logger):
    """One MLflow run, written from a background thread (see the module docstring)."""

    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None):
        super().__init__()
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self._run_name, self._tags, self._run_id = run_name, dict(tags or {}), run_id
        self._client = None
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._pending: list[Future] = []
        self._opened = self._queue.submit(self._open) if rank_zero_only.rank == 0 else None
        self._lock = threading.Lock()

    def _open(self) -> None:
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        client = MlflowClient(self.tracking_uri)
        if self._run_id is None:
            experiment_id = get_or_create_experiment(client, self.experiment_name, self.tracking_uri)
            tags = {**self._tags, **({MLFLOW_RUN_NAME: self._run_name} if self._run_name else {})}
            self._run_id = client.create_run(experiment_id, tags=tags, run_name=self._run_name).info.run_id
        else:
            client.update_run(self._run_id, status="RUNNING")
        self._client = client

    def _wait_open(self):
        try:
            self._opened.result()
        except Exception as exc:
            raise MedexpError(f"cannot open MLflow run at {self.tracking_uri}: {type(exc).__name__}: {exc}; check "
                              "MLFLOW_TRACKING_URI / tracking.uri, or run with logger=csv") from None
        return self._client

    # -- what callers use -------------------------------------------------------------------------------------
    @property
    @rank_zero_experiment
    def experiment(self):
        """The ``MlflowClient`` (waits until the run exists)."""
        return self._wait_open()

    @property
    def run_id(self) -> str | None:
        if self._opened is None:
            return None
        self._wait_open()
        return self._run_id

    def submit(self, work: Callable[[Any, str], Any]) -> None:
        """Run ``work(client, run_id)`` on the background thread, after everything submitted before it."""
        if self._opened is None:
            return
        with self._lock:
            self._pending.append(self._queue.submit(lambda: work(self._client, self._run_id)))

    def flush(self) -> None:
        """Wait for every queued write; raise the first that failed."""
        if self._opened is None:
            return
        self._wait_open()
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def end(self, status: str) -> None:
        """Flush, then close the run as FINISHED, FAILED or KILLED."""
        if self._opened is None:
            return
        try:
            self.flush()
        finally:
            if self._client is not None:
                self._client.set_terminated(self._run_id, status)

    # -- Lightning's Logger interface -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.experiment_name

    @property
    def version(self) -> str | None:
        return self._run_id

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(dict(params)).items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            chunk = items[start : start + 100]
            self.submit(lambda client, run_id, chunk=chunk: client.log_batch(run_id, params=chunk))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step or 0) for k, v in metrics.items()]
        self.submit(lambda client, run_id: client.log_batch(run_id, metrics=batch))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning calls this after fit and test; the run stays open until ``end``, except on failure."""
        if status == "failed":
            self.end("FAILED")
        else:
            self.flush()


def build_mlflow_logger(tracking_uri: str, experiment_name: str, run_name: str | None = None,
                        tags: Mapping[str, str] | None = None, run_id: str | None = None) -> MlflowRunLogger:
    return MlflowRunLogger(tracking_uri, experiment_name, run_name=run_name, tags=tags, run_id=run_id)


def git_state(path: Path) -> dict[str, str]:
    """Commit and dirty flag of the repository holding ``path`` (empty outside a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 1e-3}}`` -> ``{"optimizer.lr": 1e-3}``; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class RunRecorder(pl.Callback):
    """Records a run's params, tags and artifacts in its MLflow run (rank zero only, on the logger's queue).

    - fit start: flattened resolved config as params; tags (git, overrides, dataset fingerprint); config.yaml
      (the resolved config, unlike Hydra's .hydra/config.yaml), dataset fingerprint JSON; the run id into the run
      directory for resume;
    - fit end: the best checkpoint, and the task's validation report where it has one (segmentation overlays);
    - test end: the task's test report (``task.write_test_report(folder) -> [files]``, where the task has one).
    """

    def __init__(self, logger: MlflowRunLogger, config: Mapping[str, Any], run_dir: Path, tags: Mapping[str, str],
                 fingerprint: Callable[[], Mapping[str, Any]], resumed: bool = False):
        self.logger, self.config, self.run_dir = logger, config, Path(run_dir)
        self.tags, self.fingerprint = dict(tags), fingerprint
        self.resumed = resumed

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        self.logger.submit(lambda client, run_id: (self.run_dir / RUN_ID_FILE).write_text(run_id))
        if self.resumed:  # params are immutable in MLflow; the resumed run keeps the ones it started with
            return
        fingerprint = dict(self.fingerprint())
        self.logger.log_hyperparams(self.config)
        tags = {**self.tags, "dataset.sha256": str(fingerprint.get("sha256", ""))}
        self.logger.submit(lambda client, run_id: client.log_batch(
            run_id, tags=[_tag(k, v) for k, v in tags.items()]))
        self._log_file(self._write("dataset_fingerprint.json", json.dumps(fingerprint, indent=2, default=str)))
        self._log_file(self._write("config.yaml", yaml.safe_dump(dict(self.config), sort_keys=False)), "config")
        overrides = self.run_dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            self._log_file(overrides, "config")

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).is_file():
            self._log_file(Path(best), "checkpoints")
        self._log_report(pl_module, "write_validation_report")

    @rank_zero_only
    def on_test_end(self, trainer, pl_module) -> None:
        self._log_report(pl_module, "write_test_report")

    def _log_report(self, pl_module, writer: str) -> None:
        if not hasattr(pl_module, writer):
            return
        folder = self.run_dir / "report"
        folder.mkdir(exist_ok=True)
        for path in getattr(pl_module, writer)(folder):
            self._log_file(path, "report")

    def _write(self, name: str, text: str) -> Path:
        path = self.run_dir / name
        path.write_text(text)
        return path

    def _log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.logger.submit(lambda client, run_id: client.log_artifact(run_id, str(path), artifact_path))


def _tag(key: str, value: Any):
    from mlflow.entities import RunTag

    return RunTag(key, str(value))


def end_run(logger: MlflowRunLogger, status: str) -> None:
    """Close the run with ``FINISHED``, ``FAILED`` or ``KILLED`` (Lightning only knows success/failed)."""
    if rank_zero_only.rank == 0:
        logger.end(status)
