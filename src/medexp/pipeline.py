"""From a composed config to a trained, tested and tracked model: the one flow behind ``medexp-train``.

Every object comes from ``hydra.utils.instantiate`` on its config group; this module only adds what needs two
groups at once (class weights need the data, the task needs the network and the optimizer) and the run's
bookkeeping (seed, MLflow run, status on failure, returned metrics for sweeps).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medexp.errors import ConfigError


def run_experiment(cfg: DictConfig, launched_at: float | None = None) -> dict[str, float]:
    """Fit on train (checkpoints chosen on val), test the best checkpoint, return the final metrics."""
    launched_at = launched_at if launched_at is not None else time.time()
    start_tracking_early(cfg)
    if not in_multirun():
        return _run(cfg, launched_at)
    from medexp.distributed import end_job_distributed, use_job_rank_commands

    use_job_rank_commands()
    try:
        return _run(cfg, launched_at)
    finally:
        end_job_distributed()


def start_tracking_early(cfg: DictConfig) -> None:
    """With an MLflow logger, start its writer process now: it opens the store while this one imports torch."""
    spec = (cfg.get("logger") or {}).get("mlflow")
    if spec is None or "_target_" not in spec or not launched_as_rank_zero():
        return
    from medexp.tracking.writer import start_early

    start_early(str(spec.tracking_uri))


def launched_as_rank_zero() -> bool:
    """Rank zero as the launcher's environment says (Lightning is not imported yet to ask it)."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _run(cfg: DictConfig, launched_at: float) -> dict[str, float]:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from medexp.tracking.timing import RunTimer

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule, config)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    mlflow_logger, loggers = build_loggers(cfg, run_dir, resuming=ckpt_path is not None)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers)) + [RunTimer(run_dir, launched_at)]
    trial_callbacks = build_trial_callbacks(cfg)
    if mlflow_logger is not None:
        from medexp.tracking.mlflow import RunRecorder

        callbacks.append(RunRecorder(
            mlflow_logger, config, run_dir, tags=run_tags(cfg), fingerprint=datamodule.fingerprint,
            resumed=ckpt_path is not None,
        ))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks + trial_callbacks)
    with tracked(mlflow_logger):
        if cfg.train:
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
            finish_trial(trial_callbacks, mlflow_logger)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        best = best_checkpoint(trainer)
        best_score = trainer.checkpoint_callback.best_model_score if best is not None else None
        if best_score is not None:  # None for a checkpoint that monitors nothing (Lightning's default one)
            metrics[task.monitor] = float(best_score)
        if cfg.test:
            tested = trainer.test(task, datamodule=datamodule, ckpt_path=best if cfg.train else None, verbose=False)
            metrics.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
    return metrics


def build_datamodule(cfg: DictConfig):
    """The data module with the augmentation recipe and seed wired in, loaded once so the task can see it."""
    from hydra.utils import instantiate

    augmentation = OmegaConf.to_container(cfg.augmentation, resolve=True) if cfg.get("augmentation") else None
    datamodule = instantiate(cfg.data, augmentation=augmentation, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_task(cfg: DictConfig, datamodule, config: dict):
    """The LightningModule: network + optimizer/scheduler partials + class weights from the training labels."""
    from hydra.utils import instantiate

    net = instantiate(cfg.model)
    extra: dict[str, Any] = {}
    task_cfg = cfg.task
    if "class_weights" in task_cfg:
        extra["class_weights"] = class_weights(task_cfg.class_weights, datamodule)
    if getattr(datamodule, "class_names", None):
        extra["class_names"] = list(datamodule.class_names)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task = instantiate(task_cfg, net=net, optimizer=instantiate(cfg.optimizer), scheduler=scheduler, **extra)
    task.remember_config(config)
    return task


def class_weights(spec, datamodule) -> list[float] | None:
    """``null`` -> none; ``balanced`` -> N / (K * n_c) from the training labels; a list -> as given."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ConfigError(f"task.class_weights={spec!r} is not understood: use null, balanced or a list")
        counts = datamodule.class_counts("train")
        if min(counts) == 0:
            raise ConfigError(f"task.class_weights=balanced: a class has no training samples (counts {counts})")
        return [sum(counts) / (len(counts) * c) for c in counts]
    return [float(w) for w in spec]


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list:
    """The ``callbacks`` group; the LR monitor only where a logger can receive what it measures."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import LearningRateMonitor

    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None and "_target_" in c]
    return [c for c in callbacks if has_logger or not isinstance(c, LearningRateMonitor)]


def build_loggers(cfg: DictConfig, run_dir: Path, resuming: bool):
    """Lightning loggers from the ``logger`` group; the MLflow one (if any) gets its run name, tags and parent."""
    from hydra.utils import instantiate

    mlflow_logger, loggers = None, []
    for name, spec in (cfg.logger or {}).items():
        if spec is None or "_target_" not in spec:
            continue
        if name == "mlflow":
            from medexp.tracking.mlflow import RUN_ID_FILE

            run_id_file = run_dir / RUN_ID_FILE
            run_id = run_id_file.read_text().strip() if resuming and run_id_file.is_file() else None
            name_and_tags = sweep_child_context() or {}
            mlflow_logger = instantiate(
                spec, run_name=spec.run_name or name_and_tags.get("run_name") or default_run_name(cfg),
                tags=name_and_tags.get("tags", {}), run_id=run_id,
            )
            loggers.append(mlflow_logger)
        else:
            loggers.append(instantiate(spec))
    return mlflow_logger, loggers


def default_run_name(cfg: DictConfig) -> str:
    """``<model>-<data>-seed<seed>-<HHMMSS>``: readable in the MLflow run list, distinct within a day."""
    choices = hydra_choices()
    return f"{choices.get('model', 'model')}-{choices.get('data', 'data')}-seed{cfg.seed}-{time.strftime('%H%M%S')}"


def hydra_choices() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def sweep_child_context() -> dict | None:
    """Parent run, name and tags of this job within a sweep (``medexp.tracking.sweep``); None for a single run."""
    if not in_multirun():
        return None
    from medexp.tracking.sweep import child_run_context

    return child_run_context()


def run_tags(cfg: DictConfig) -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    import medexp
    from medexp.tracking.mlflow import git_state

    tags = git_state(Path(medexp.__file__).parent) or git_state(Path.cwd())
    tags["run_dir"] = str(Path(cfg.paths.output_dir).resolve())
    if HydraConfig.initialized():
        tags["hydra.overrides"] = " ".join(HydraConfig.get().overrides.task) or "(none)"
        tags.update({f"choice.{k}": v for k, v in hydra_choices().items() if not k.startswith("hydra/")})
    return tags


def build_trial_callbacks(cfg: DictConfig) -> list:
    """The Optuna pruning callback when this job is a trial of a ``hparams_search=optuna`` sweep."""
    if cfg.get("optuna_trial") is None:
        return []
    from medexp.sweeps.pruning import make_pruning_callback

    callback = make_pruning_callback(cfg)
    return [callback] if callback is not None else []


def finish_trial(trial_callbacks: list, mlflow_logger) -> None:
    """A pruned trial is tagged in MLflow, then reported to the sweeper (``optuna.TrialPruned``)."""
    if not trial_callbacks:
        return
    from medexp.sweeps.pruning import raise_if_pruned

    if mlflow_logger is not None and any(getattr(c, "pruned", False) for c in trial_callbacks):
        mlflow_logger.log_tags({"trial_state": "PRUNED"})
    raise_if_pruned(trial_callbacks)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``last`` -> this run directory's last checkpoint; a path must exist."""
    from medexp.errors import DataError

    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise DataError(f"ckpt_path=last but {last} does not exist: resume with hydra.run.dir=<the old run's folder>")
        return str(last)
    if not Path(ckpt_path).is_file():
        raise DataError(f"checkpoint {ckpt_path} does not exist: give ckpt_path=<path to a .ckpt> or ckpt_path=last")
    return str(ckpt_path)


def best_checkpoint(trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path if path and Path(path).is_file() else None


class tracked:
    """Close the MLflow run with the right status: FINISHED, FAILED on an error, KILLED on Ctrl-C."""

    def __init__(self, mlflow_logger):
        self.logger = mlflow_logger

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.logger is None:  # (on ranks other than zero the logger's ``end`` does nothing)
            return False
        if exc_type is None:
            self.logger.end("FINISHED")
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):  # Lightning turns Ctrl-C into sys.exit(1)
            self.logger.end("KILLED")
        elif not _is_pruned(exc):
            self.logger.end("FAILED")
        else:
            self.logger.end("FINISHED")
        return False


def _is_pruned(exc: BaseException) -> bool:
    return type(exc).__name__ == "TrialPruned"
