"""MLflow for a training run: the logger, what a run records about itself, and its artifacts.

``MlflowRunLogger`` is a Lightning logger that hands every MLflow write to the writer process
(``medexp.tracking.writer``): opening (or migrating) the store, creating the run and each write after that happen
off the trainer's process, in order, so training never waits for MLflow and a killed trainer's run still ends FAILED.
Training starts only once the run is open (``wait_until_open``: a store that cannot be opened stops the run before
it trains). A write that fails later (the tracking server died) is said at once in one line, and training goes on
without MLflow, its results kept in the run folder; ``end`` waits until everything is written, closes the run with
its status and raises the failure, naming that folder.

``RunRecorder`` (a callback, rank zero only under DDP) writes what a run should carry besides metrics: the flattened
config as params, git state, overrides, dataset fingerprint, config/checkpoint/plots as artifacts.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import yaml
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from medexp.errors import MedexpError
from medexp.redact import redact_text
from medexp.tracking.orphans import owner_tags
from medexp.tracking.store import RUN_ID_FILE
from medexp.tracking.views import key_metrics, runs_view
from medexp.tracking.writer import writer_process

MAX_PARAM_LENGTH = 500
OPEN_TIMEOUT_S = 300.0  # a new sqlite store waits for others' migrations; a server fails sooner (tracking.http)


class MlflowRunLogger(Logger):
    """One MLflow run, written by the writer process (see the module docstring); inert on ranks other than zero."""

    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None, step_offset: int = 0,
                 results_dir: str | None = None, resumed: bool = False, keep_state: bool = False,
                 metric_prefix: str = ""):
        """The logger of the ``logger/mlflow`` config. ``resumed``: a training resumed from a checkpoint into its
        run, whose metrics of the steps it repeats (the learning rate at the step it resumes from) are in the run
        already. ``keep_state``: add to the run ``run_id`` and leave it as it is (status, end time: an evaluation of a
        finished run); ``metric_prefix`` goes before every metric name, and then Lightning's ``epoch`` counter,
        which would say 0 at the training run's last step, is not logged."""
        super().__init__()
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.step_offset = step_offset  # metrics of a later evaluation land after the training run's last step
        self.results_dir = results_dir  # where the run keeps its results whatever happens to MLflow (run folder)
        self.metric_prefix = metric_prefix
        self._handle = uuid.uuid4().hex
        self._ended_ids: tuple[str | None, str | None, str | None] = (None, None, None)
        self._said_failure = False
        self.leading_metrics: list[str] = []  # logged first in their batch (see log_metrics)
        self._training_only: list[tuple] | None = [] if run_id is None else None  # a resumed run has its order
        self._writer = writer_process() if rank_zero_only.rank == 0 else None
        if self._writer is not None:
            self._writer.send("open", self._handle, uri=tracking_uri, experiment=experiment_name, run_name=run_name,
                              tags={str(k): str(v) for k, v in (tags or {}).items()}, run_id=run_id,
                              owner=owner_tags(), skip_logged_steps=resumed, keep_state=keep_state)

    # -- what callers use -------------------------------------------------------------------------------------
    @property
    def experiment(self) -> MlflowRunLogger:
        """This logger: Lightning touches ``experiment`` before training, and that must not wait for MLflow."""
        return self

    def log_tags(self, tags: Mapping[str, Any]) -> None:
        self._send("tags", tags={str(k): str(v) for k, v in tags.items()})

    def log_dataset(self, name: str, digest: str, source: str, profile: Mapping[str, Any]) -> None:
        """The run's training data in MLflow's Datasets column (``log_inputs``): name, digest, where it came from."""
        self._send("dataset", name=name, digest=digest, source=source, profile=json.dumps(profile, default=str))

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self._send("artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def log_model(self, folder: Path, register_as: str | None = None, monitor: str | None = None,
                  monitor_mode: str = "max") -> None:
        """Log the files ``medexp.export.model.write_model_files`` wrote as the run's MLflow model (``model``, a
        LoggedModel linked to the step of the best ``monitor`` value), registered as a new version of
        ``register_as`` if given."""
        self._send("model", folder=str(Path(folder).resolve()), register_as=register_as, monitor=monitor,
                   monitor_mode=monitor_mode)

    def set_runs_view(self, state: str) -> None:
        """The experiment's ``medexp`` view of the runs table (``medexp.tracking.views``)."""
        self._send("experiment_view", state=state)

    def write_run_id(self, path: Path) -> None:
        """Write the run id into ``path`` once the run exists (for ``ckpt_path=last`` resumes)."""
        self._send("run_id_file", path=str(Path(path).resolve()))

    def wait_until_open(self, timeout: float = OPEN_TIMEOUT_S) -> None:
        """Wait until the store is open and the run exists; raise (one line) if it cannot be."""
        if self._writer is None:
            return
        if not self._writer.wait_opened(self._handle, timeout):
            raise MedexpError(f"the MLflow store {redact_text(self.tracking_uri)} did not open a run within "
                              f"{timeout:.0f} s; check MLFLOW_TRACKING_URI / tracking.uri, or run with logger=csv")
        if self._writer.errors.get(self._handle):
            raise MedexpError(self._writer.errors[self._handle])

    def end(self, status: str) -> None:
        """Write everything, then close the run as FINISHED, FAILED or KILLED (a ``keep_state`` run keeps its
        own status); raise if MLflow failed the run."""
        if self._writer is None:
            return
        self._send_held_curves()  # Lightning's finalize normally has; a failure outside its loops has not
        reply = self._writer.request("end", self._handle, status=status)
        # kept for whoever names the run afterwards (the writer forgets it now)
        writer = self._writer
        self._ended_ids = (writer.run_ids.get(self._handle), writer.experiment_ids.get(self._handle),
                           writer.run_names.get(self._handle))
        writer.forget(self._handle)
        self._writer = None
        if reply.get("error"):
            raise MedexpError(reply["error"] + self._where_results_are())

    def _where_results_are(self) -> str:
        """Said with a failure after the run opened (one that stops it from opening is said as it is)."""
        if self.results_dir is None or self.version is None:
            return ""
        return f"; the run's results are safe in {self.results_dir} (metrics.json, checkpoints/)"

    def _send(self, op: str, **fields: Any) -> None:
        if self._writer is not None and not self._failed():
            self._writer.send(op, self._handle, **fields)

    def _failed(self) -> bool:
        """Whether the writer failed this run; said once, on stderr: training goes on without MLflow."""
        error = self._writer.errors.get(self._handle)
        if error and not self._said_failure and self.version is not None:  # else wait_until_open raises it
            self._said_failure = True
            print(f"medexp: {error}; training goes on without MLflow{self._where_results_are()}", file=sys.stderr,
                  flush=True)
        return error is not None

    # -- Lightning's Logger interface -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.experiment_name

    @property
    def version(self) -> str | None:
        """The run id once known; never waits (the progress bar asks at every refresh)."""
        return self._writer.run_ids.get(self._handle) if self._writer is not None else self._ended_ids[0]

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment's id once the run is open; never waits."""
        return self._writer.experiment_ids.get(self._handle) if self._writer is not None else self._ended_ids[1]

    @property
    def run_name(self) -> str | None:
        """The run's name as the store has it (a resumed run keeps its first one) once open; never waits."""
        return self._writer.run_names.get(self._handle) if self._writer is not None else self._ended_ids[2]

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self._send("params", params=[(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(dict(params)).items()])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        stamp = int(time.time() * 1000)
        step = (step or 0) + self.step_offset
        rows = [(f"{self.metric_prefix}{metric_name(k)}", metric_value(v), stamp, step) for k, v in metrics.items()
                if not (self.metric_prefix and k == "epoch")]
        # MLflow lists a run's metrics in the order they were first logged, and its compare view plots the first
        # one the runs share: training curves logged from the first step (the learning rate) wait for the first
        # evaluation, with their own steps and times, and the run's key metrics (``leading_metrics``) go first in
        # it. The cost: the UI shows the training curves from the first evaluation on (the terminal from the start)
        if self._training_only is not None:
            if all(name.startswith("train/") for name, *_ in rows):
                self._training_only.extend(rows)
                if self._writer is not None:  # held back, but a dead writer is still said now
                    self._failed()
                return
            rank = {name: i for i, name in enumerate(self.leading_metrics)}
            rows = sorted(rows, key=lambda row: (rank.get(row[0], len(rank)), row[0].startswith("train/")))
            rows, self._training_only = rows + self._training_only, None
        self._send("metrics", metrics=rows)

    def _send_held_curves(self) -> None:
        """A run that never evaluated gets its training curves all the same (see ``log_metrics``)."""
        if self._training_only and self._writer is not None:
            self._writer.send("metrics", self._handle, metrics=self._training_only)
        self._training_only = None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning calls this after fit and after test, and on any exception (Ctrl-C included) as "failed".

        The run stays open: ``end`` closes it with the status only the caller knows (FINISHED, FAILED, KILLED),
        and a process that exits without ``end`` has it closed FAILED by the writer. Nor does success wait for the
        writer here: that would hold up the test that comes next."""
        self._send_held_curves()
        if self._writer is not None:
            self._failed()


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


# config groups that say where and how a run is recorded, not what it is: kept in config.yaml, not as params
_NOT_COMPARED = ("callbacks", "logger", "paths", "tracking", "hydra", "plan")  # plan: tags and artifacts
_PATH_NAMES = ("dir", "dirpath", "root", "path", "data_dir", "output_dir")


def comparable_params(config: Mapping[str, Any], choices: Mapping[str, str],
                      overridden: Sequence[str] = ()) -> dict[str, Any]:
    """The params a user compares runs by: the option chosen in each group (``model=resnet18``, ``data=...``) and
    every hyperparameter, without ``_target_``/``_partial_`` plumbing, file paths and the recording groups (all of
    which stay in the ``config.yaml`` artifact). A network's architecture is what its option names; its keys become
    params only where the command line changed them (``model.channels=...``): otherwise two models' different keys
    would fill the compare view's plot instead of ``model`` and the learning rate."""
    params = {group: option for group, option in choices.items() if "/" not in group}
    for key, value in flatten(config).items():
        parts = key.split(".")
        if parts[0] in _NOT_COMPARED or parts[-1].startswith("_") or parts[-1] in _PATH_NAMES:
            continue
        if parts[0] == "model" and not any(key == o or key.startswith(f"{o}.") for o in overridden):
            continue
        if isinstance(value, str) and value.startswith("/"):  # an absolute path under another name
            continue
        params[key] = value
    return params


def metric_name(key: str) -> str:
    """Lightning's LearningRateMonitor names its metric ``lr-<Optimizer>``: as ``train/lr`` it sorts among the
    training curves, not before the test metrics the compare view should pick first (the optimizer is a param)."""
    return "train/lr" if key.startswith("lr-") and "/" not in key else key


def metric_value(value: float) -> float:
    """A metric as its source holds it: a float32 (most tensors) becomes the float64 of its shortest decimal form,
    0.88 rather than 0.8799999952316284; other values stay as they are."""
    value = float(value)
    single = np.float32(value)
    return float(str(single)) if np.isfinite(single) and float(single) == value else value


class RunRecorder(pl.Callback):
    """Records a run's params, tags and artifacts in its MLflow run (rank zero only, on the logger's queue).

    - fit start: flattened resolved config as params; tags (git, overrides, dataset fingerprint); config.yaml
      (the resolved config, unlike Hydra's .hydra/config.yaml), dataset fingerprint JSON, ``attachments`` (the
      plan's files, ``medexp.tracking.plan``); the run id into the run directory for resume;
    - fit end: the best checkpoint; the run's MLflow model from it where the task has one (the files
      ``model_files(best checkpoint, data module, task, folder)`` writes, given by the caller: training passes
      ``medexp.export.model.write_run_model``; registered as a new version of ``tracking.register_as`` if set); the
      task's validation report where it has one (segmentation overlays);
    - test end: the task's test report and page (``task.write_test_report(folder)``, ``task.write_test_page(data
      module, folder, title)``, declared on ``BaseTask``).
    """

    def __init__(self, logger: MlflowRunLogger, config: Mapping[str, Any], run_dir: Path, tags: Mapping[str, str],
                 fingerprint: Callable[[], Mapping[str, Any]], resumed: bool = False,
                 choices: Mapping[str, str] | None = None, overridden: Sequence[str] = (),
                 model_files: Callable[[Path, Any, Any, Path], Path | None] | None = None,
                 attachments: Sequence[tuple[Path, str]] = ()):
        self.model_files = model_files
        self.attachments = list(attachments)  # (file, artifact folder) logged at the start: the plan's files
        self.logger, self.config, self.run_dir = logger, config, Path(run_dir)
        self.tags, self.fingerprint = dict(tags), fingerprint
        self.resumed = resumed
        self.choices, self.overridden = dict(choices or {}), list(overridden)

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        self.logger.wait_until_open()  # nothing trains before its store is usable
        self.logger.write_run_id(self.run_dir / RUN_ID_FILE)
        if self.resumed:  # params are immutable in MLflow; the resumed run keeps the ones it started with
            return
        fingerprint = dict(self.fingerprint())
        params = comparable_params(self.config, self.choices, self.overridden)
        self.logger.log_hyperparams(params)
        self.logger.set_runs_view(runs_view(self.config, params))
        task = self.config.get("task") or {}
        self.logger.leading_metrics = key_metrics(str(task.get("monitor", "val/loss")), bool(self.config.get("test", True)))
        tags = {**self.tags, "dataset.sha256": str(fingerprint.get("sha256", ""))}
        self.logger.log_tags(tags)
        digest = str(fingerprint.get("sha256") or fingerprint.get("split_sha256") or "")
        data = self.config.get("data") or {}
        name = str(data.get("name") or fingerprint.get("dataset") or self.choices.get("data", "data"))
        sizes = fingerprint.get("sizes") or fingerprint.get("cases_per_split") or {}
        self.logger.log_dataset(name, digest[:16], str(fingerprint.get("source") or data.get("root") or name),
                                {"splits": sizes, "sha256": digest})
        self._log_file(self._write("dataset_fingerprint.json", json.dumps(fingerprint, indent=2, default=str)))
        self._log_file(self._write("config.yaml", yaml.safe_dump(dict(self.config), sort_keys=False)), "config")
        overrides = self.run_dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            self._log_file(overrides, "config")
        for path, folder in self.attachments:
            self._log_file(path, folder)

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best and Path(best).is_file():
            self._log_file(Path(best), "checkpoints")
            self._log_model(Path(best), trainer.datamodule, pl_module)
        self._log_report(pl_module.write_validation_report)

    def _log_model(self, best: Path, datamodule, task) -> None:
        folder = self.model_files(best, datamodule, task, self.run_dir / "model") if self.model_files else None
        if folder is not None:
            self.logger.log_model(folder, (self.config.get("tracking") or {}).get("register_as"), task.monitor,
                                  task.monitor_mode)

    @rank_zero_only
    def on_test_end(self, trainer, pl_module) -> None:
        self._log_report(pl_module.write_test_report)
        self._log_report(lambda folder: pl_module.write_test_page(trainer.datamodule, folder,
                                                                  f"Test report: {self.run_dir.name}"))

    def _log_report(self, write: Callable[[Path], list[Path]]) -> None:
        folder = self.run_dir / "report"
        folder.mkdir(exist_ok=True)
        for path in write(folder):
            self._log_file(path, "report")

    def _write(self, name: str, text: str) -> Path:
        path = self.run_dir / name
        path.write_text(text)
        return path

    def _log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.logger.log_artifact(path, artifact_path)

