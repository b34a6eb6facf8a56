"""MLflow for a training run: the logger, what a run records about itself, and its artifacts.

Metrics go through Lightning's ``MLFlowLogger`` once per epoch. Everything else a run should carry (the flattened
config as params, git state, overrides, dataset fingerprint, config/checkpoint/plots as artifacts) is written by
``RunRecorder``, a callback, so it happens on global rank zero only under DDP.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pytorch_lightning as pl
import yaml
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from medexp.tracking.store import artifact_location

RUN_ID_FILE = "mlflow_run_id"  # in the run directory: a resumed run logs into the same MLflow run


def build_mlflow_logger(tracking_uri: str, experiment_name: str, run_name: Optional[str] = None,
                        tags: Optional[Mapping[str, str]] = None, run_id: Optional[str] = None) -> MLFlowLogger:
    return MLFlowLogger(
        experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri, tags=dict(tags or {}),
        artifact_location=artifact_location(tracking_uri, experiment_name), run_id=run_id, log_model=False,
    )


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
    """Records a run's params, tags and artifacts in its MLflow run (rank zero only).

    - fit start: flattened resolved config as params; tags (git, overrides, dataset fingerprint); config.yaml,
      dataset fingerprint JSON; the run id into the run directory for resume;
    - fit end: the best checkpoint, and the task's validation report where it has one (segmentation overlays);
    - test end: the task's test report (``task.write_test_report(folder) -> [files]``, where the task has one).
    """

    def __init__(self, logger: MLFlowLogger, config: Mapping[str, Any], run_dir: Path, tags: Mapping[str, str],
                 fingerprint: Callable[[], Mapping[str, Any]], resumed: bool = False):
        self.logger, self.config, self.run_dir = logger, config, Path(run_dir)
        self.tags, self.fingerprint = dict(tags), fingerprint
        self.resumed = resumed

    @property
    def client(self):
        return self.logger.experiment

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        run_id = self.logger.run_id
        (self.run_dir / RUN_ID_FILE).write_text(run_id)
        if self.resumed:  # params are immutable in MLflow; the resumed run keeps the ones it started with
            self.client.update_run(run_id, status="RUNNING")
            return
        fingerprint = dict(self.fingerprint())
        self.logger.log_hyperparams(flatten(self.config))
        for key, value in {**self.tags, "dataset.sha256": fingerprint.get("sha256", "")}.items():
            self.client.set_tag(run_id, key, value)
        self._log_text(json.dumps(fingerprint, indent=2, default=str), "dataset_fingerprint.json")
        self._log_text(yaml.safe_dump(dict(self.config), sort_keys=False), "config.yaml", "config")
        overrides = self.run_dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            self.client.log_artifact(run_id, str(overrides), "config")

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).is_file():
            self.client.log_artifact(self.logger.run_id, best, "checkpoints")
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
            self.client.log_artifact(self.logger.run_id, str(path), "report")

    def _log_text(self, text: str, name: str, artifact_path: Optional[str] = None) -> None:
        path = self.run_dir / name
        path.write_text(text)
        self.client.log_artifact(self.logger.run_id, str(path), artifact_path)


def end_run(logger: MLFlowLogger, status: str) -> None:
    """Close the run with ``FINISHED``, ``FAILED`` or ``KILLED`` (Lightning only knows success/failed)."""
    if rank_zero_only.rank == 0 and logger._initialized:
        logger.experiment.set_terminated(logger.run_id, status)
