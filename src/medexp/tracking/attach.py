"""The one seam between a run and its tracking.

The training flow calls ``prepare(cfg)`` first (checks the store answers, then lets the MLflow writer process open
it while torch imports) and ``attach(...)`` once its data and task exist; what it gets back (``Tracking``) holds the
Lightning loggers and callbacks to train with and ``closing()``, which ends the run with the status the flow's
outcome implies. Everything MLflow-specific (run names, sweep parents, tags, the writer) stays behind this module.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from medexp.errors import ConfigError
from medexp.hydra_setup import in_multirun
from medexp.redact import redact_file, redact_text
from medexp.tracking.http import http_unanswered
from medexp.tracking.plan import ARTIFACT_PATH, plan_files, plan_tags
from medexp.tracking.views import RUNS_QUERY

PROBE_TIMEOUT_S = 5.0
# MLflow 3's UI shows its GenAI view unless the link asks for model training (the experiment tag alone is not read
# by every 3.x UI)
TRAINING_VIEW = "workflowType=machine_learning"
ON_UNREACHABLE = ("fail", "local")


def mlflow_spec(cfg: DictConfig):
    spec = (cfg.get("logger") or {}).get("mlflow")
    return spec if spec is not None and "_target_" in spec else None


def launched_as_rank_zero() -> bool:
    """Rank zero as the launcher's environment says (Lightning is not imported yet to ask it)."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


# -- before the run -----------------------------------------------------------------------------------------------
def prepare(cfg: DictConfig) -> None:
    """Make sure the tracking store can be reached before any training (a few seconds at most), falling back to
    the local store with ``tracking.on_unreachable=local``; then start the writer process, which opens the store
    while this process imports torch."""
    register_as = (cfg.get("tracking") or {}).get("register_as")
    if register_as and mlflow_spec(cfg) is None:
        raise ConfigError(f"tracking.register_as={register_as} registers the run's model in MLflow, but this run "
                          "logs no MLflow run: drop logger= (MLflow is the default) or drop tracking.register_as")
    if mlflow_spec(cfg) is None or not launched_as_rank_zero():
        return
    uri = str(cfg.tracking.uri)
    problem = unreachable(uri)
    if problem is not None:
        policy = str(cfg.tracking.get("on_unreachable", "fail"))
        if policy not in ON_UNREACHABLE:
            raise ConfigError(f"tracking.on_unreachable={policy!r} is unknown: use one of {list(ON_UNREACHABLE)}")
        if policy == "fail":
            raise ConfigError(f"the MLflow store {redact_text(uri)} cannot be reached ({problem}): start it, fix "
                              "MLFLOW_TRACKING_URI / tracking.uri, set tracking.on_unreachable=local to log locally "
                              "instead, or run with logger=csv")
        local = f"sqlite:///{Path(cfg.paths.output_root).resolve() / 'mlflow.db'}"
        print(f"medexp: the MLflow store {redact_text(uri)} cannot be reached ({problem}); logging to {local} "
              "instead (tracking.on_unreachable=local)", file=sys.stderr)
        with open_dict(cfg):
            cfg.tracking.uri = local
        uri = local
    from medexp.tracking.writer import start_early

    start_early(uri)


def unreachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``uri`` cannot be used, or None: a server must accept a connection and answer HTTP within ``timeout``;
    a sqlite store's folder must be creatable and writable. Other stores are left to MLflow."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme in ("http", "https"):
        return http_unanswered(uri, timeout)
    if parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create {folder}: {exc.strerror or exc}"
        if not os.access(folder, os.W_OK):
            return f"{folder} is not writable"
    return None


# -- the run ------------------------------------------------------------------------------------------------------
@dataclass
class Tracking:
    """What a run trains with (``loggers``, ``callbacks``) and how it ends (``closing``)."""

    loggers: list = field(default_factory=list)
    callbacks: list = field(default_factory=list)
    mlflow: Any = None  # the MlflowRunLogger, if the run has one
    run_name: str | None = None
    tracking_uri: str | None = None

    @contextlib.contextmanager
    def closing(self) -> Iterator[Tracking]:
        """End the MLflow run: FINISHED, FAILED on an error, KILLED on Ctrl-C or a signal, FINISHED with the tag
        ``trial_state=PRUNED`` for a pruned Optuna trial."""
        try:
            yield self
        except BaseException as exc:
            if self.mlflow is not None:
                if type(exc).__name__ == "TrialPruned":
                    self.mlflow.log_tags({"trial_state": "PRUNED"})
                    self.mlflow.end("FINISHED")
                elif isinstance(exc, (KeyboardInterrupt, SystemExit)):  # Lightning: Ctrl-C -> sys.exit(1)
                    self.mlflow.end("KILLED")
                else:
                    self.mlflow.end("FAILED")
            raise
        if self.mlflow is not None:
            self.mlflow.end("FINISHED")

    def describe(self) -> list[str]:
        """Lines naming the run for the terminal: its MLflow name and where to look at it."""
        if self.mlflow is None:
            return []
        run_id = self.mlflow.version
        name = self.mlflow.run_name or self.run_name  # the store's: a resumed run keeps the name it started with
        lines = [f"MLflow run: {name} ({run_id}) in {redact_text(str(self.tracking_uri))}"]
        experiment_id = self.mlflow.experiment_id
        if run_id and experiment_id:
            uri = str(self.tracking_uri)
            served = uri.startswith(("http://", "https://"))
            base = f"{ui_base(uri)}/#/experiments/{experiment_id}"
            lines.append(f"MLflow UI:  {base}/runs/{run_id}?{TRAINING_VIEW}"
                         + ("" if served else "  (serve it with: make ui)"))
            lines.append(f"Runs table: {base}/runs?{RUNS_QUERY}")
        return lines


UI_ADDRESS_FILE = "mlflow-ui.url"  # written beside a local store by `make ui`: the address it serves the store on


def ui_base(uri: str) -> str:
    """Where the UI for ``uri`` is: the server itself; for a local store, ``MLFLOW_HOST``/``MLFLOW_PORT`` where
    set, else the address ``make ui`` last served this store on (a run started outside make, in another terminal
    than ``make ui MLFLOW_PORT=5001``), else ``make ui``'s default."""
    if uri.startswith(("http://", "https://")):
        parsed = urllib.parse.urlsplit(uri)
        return f"{parsed.scheme}://{parsed.hostname}{f':{parsed.port}' if parsed.port else ''}{parsed.path.rstrip('/')}"
    if not {"MLFLOW_HOST", "MLFLOW_PORT"} & set(os.environ) and uri.startswith("sqlite:///"):
        recorded = Path(uri.removeprefix("sqlite:///")).parent / UI_ADDRESS_FILE
        address = recorded.read_text().strip() if recorded.is_file() else ""
        if address:
            return address
    return f"http://{os.environ.get('MLFLOW_HOST', '127.0.0.1')}:{os.environ.get('MLFLOW_PORT', '5000')}"


def attach(cfg: DictConfig, config: Mapping[str, Any], run_dir: Path, datamodule, resumed: bool,
           model_files: Callable[[Path, Any, Any, Path], Path | None] | None = None) -> Tracking:
    """The loggers of the ``logger`` group and, with MLflow, the callback that records the run's params, tags and
    artifacts (and the run's model, from the files ``model_files`` writes: see ``RunRecorder``). ``config`` is the
    resolved config with secrets masked (``medexp.redact``)."""
    from hydra.utils import instantiate

    tracking = Tracking()
    for name, spec in (cfg.logger or {}).items():
        if spec is None or "_target_" not in spec:
            continue
        if name != "mlflow":
            tracking.loggers.append(instantiate(spec))
            continue
        from medexp.tracking.mlflow import RUN_ID_FILE, RunRecorder

        run_id_file = run_dir / RUN_ID_FILE
        run_id = run_id_file.read_text().strip() if resumed and run_id_file.is_file() else None
        context = sweep_child_context() or {}
        tracking.run_name = spec.run_name or context.get("run_name") or default_run_name(cfg)
        tracking.tracking_uri = str(spec.tracking_uri)
        tracking.mlflow = instantiate(spec, run_name=tracking.run_name, tags=context.get("tags", {}), run_id=run_id,
                                      results_dir=str(run_dir.resolve()), resumed=run_id is not None)
        tracking.loggers.append(tracking.mlflow)
        for copy in (run_dir / ".hydra").glob("*.yaml"):  # Hydra's own copies of the command line and config
            redact_file(copy)
        tracking.callbacks.append(RunRecorder(tracking.mlflow, config, run_dir, tags=run_tags(cfg),
                                              fingerprint=datamodule.fingerprint, resumed=resumed,
                                              choices=hydra_choices(), overridden=overridden_keys(),
                                              model_files=model_files,
                                              attachments=[(path, ARTIFACT_PATH) for path in plan_files(cfg)]))
    return tracking


def default_run_name(cfg: DictConfig) -> str:
    """``<model>-<data>-seed<seed>-<HHMMSS>``: readable in the MLflow run list, distinct within a day. The data is
    named by its own ``data.name`` where it has one (BCCD read by the VOC reader is ``bccd``, not ``voc``)."""
    from omegaconf import OmegaConf

    choices = hydra_choices()
    data = OmegaConf.select(cfg, "data.name", default=None) or choices.get("data", "data")
    return f"{choices.get('model', 'model')}-{data}-seed{cfg.seed}-{time.strftime('%H%M%S')}"


def hydra_choices() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def overridden_keys() -> list[str]:
    """The config keys this run's command line set (``model.channels=[8,16]`` -> ``model.channels``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    groups = hydra_choices()  # model=resnet18 chooses an option; model.channels=... sets a key
    keys = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task if "=" in o]
    return [key for key in keys if key not in groups]


def sweep_child_context() -> dict | None:
    """Parent run, name and tags of this job within a sweep (``medexp.tracking.sweep_parent``); None for a single run."""
    if not in_multirun():
        return None
    from medexp.tracking.sweep_parent import child_run_context

    return child_run_context()


def run_tags(cfg: DictConfig) -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    import medexp
    from medexp.tracking.mlflow import git_state

    tags = git_state(Path(medexp.__file__).parent) or git_state(Path.cwd())
    tags["run_dir"] = str(Path(cfg.paths.output_dir).resolve())
    if HydraConfig.initialized():
        tags["hydra.overrides"] = redact_text(" ".join(HydraConfig.get().overrides.task)) or "(none)"
        tags.update({f"choice.{k}": v for k, v in hydra_choices().items() if not k.startswith("hydra/")})
    tags.update({str(tag): "true" for tag in cfg.get("tags") or []})
    tags.update(plan_tags(cfg))
    return tags
