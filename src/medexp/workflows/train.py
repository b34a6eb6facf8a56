"""The training run behind ``medexp-train``: check the config, build, fit, test the best checkpoint, report.

Tracking is attached through ``medexp.tracking.attach`` and ends with the outcome; whatever happens to it, the
final metrics are printed and kept in the run folder (``metrics.json``).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from medexp.hydra_setup import in_multirun
from medexp.redact import redact
from medexp.tracking import attach as tracking_seam

METRICS_FILE = "metrics.json"


def run_experiment(cfg: DictConfig, launched_at: float | None = None) -> dict[str, float]:
    """Fit on train (checkpoints chosen on val), test the best checkpoint, return the final metrics."""
    from medexp.factory import check_accelerator, check_network_fits_task
    from medexp.quiet import quiet_libraries
    from medexp.workflows.lifecycle import check_config_values, check_run_mode, check_task_fits_data

    launched_at = launched_at if launched_at is not None else time.time()
    quiet_libraries()
    check_run_mode(cfg)
    tracking_seam.prepare(cfg)  # no run yet: the writer opens the store while the checks below import torch
    check_task_fits_data(cfg)
    check_network_fits_task(cfg)
    check_accelerator(cfg)
    check_config_values(OmegaConf.to_container(cfg, resolve=True))  # before any run opens
    if not in_multirun():
        return _run(cfg, launched_at)
    from medexp.distributed import end_job_distributed, use_job_rank_commands

    use_job_rank_commands()
    try:
        return _run(cfg, launched_at)
    finally:
        end_job_distributed()


def _run(cfg: DictConfig, launched_at: float) -> dict[str, float]:
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from medexp.callbacks.pruning import raise_if_pruned
    from medexp.callbacks.signals import SaveOnSignal
    from medexp.callbacks.timing import RunTimer
    from medexp.checkpoints import check_resumable, resolve_resume
    from medexp.export.model import write_run_model
    from medexp.factory import (
        best_checkpoint,
        budget_callbacks,
        build_callbacks,
        build_datamodule,
        build_task,
        build_trainer,
        build_trial_callbacks,
    )

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    on_budget = budget_callbacks(cfg, launched_at)  # before the data: a config it refuses costs no loading
    datamodule = build_datamodule(cfg)  # first: it fills in data facts left null (num_classes, ...)
    config = redact(OmegaConf.to_container(cfg, resolve=True))  # what checkpoints and the tracking store keep
    run_dir = Path(cfg.paths.output_dir)
    if cfg.test and cfg.train:
        datamodule.test_dataloader()  # a split without test cases stops the run now, not after the training
    task = build_task(cfg, datamodule, config)
    ckpt_path = resolve_resume(cfg.ckpt_path, run_dir)
    resumed_at = check_resumable(ckpt_path, task) if ckpt_path is not None else None
    tracking = tracking_seam.attach(cfg, config, run_dir, datamodule, resumed=ckpt_path is not None,
                                    model_files=write_run_model)
    on_signal = SaveOnSignal(run_dir / "checkpoints")
    trial_callbacks = build_trial_callbacks(cfg)
    callbacks = [*build_callbacks(cfg, has_logger=bool(tracking.loggers)), *on_budget,
                 RunTimer(run_dir, launched_at), on_signal, *tracking.callbacks, *trial_callbacks]
    trainer = build_trainer(cfg, tracking.loggers, callbacks)
    if resumed_at is not None and trainer.is_global_zero:
        say(f"medexp: resuming from {ckpt_path} ({resumed_at})")
    try:
        with tracking.closing():
            if cfg.train:
                trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
                raise_if_pruned(trial_callbacks)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            best = best_checkpoint(trainer)
            best_score = trainer.checkpoint_callback.best_model_score if best is not None else None
            if best_score is not None:  # None for a checkpoint that monitors nothing (Lightning's default one)
                metrics.update(task.best_epoch_metrics)  # the kept checkpoint's evaluation, not the last epoch's
                metrics[task.monitor] = float(best_score)
            if cfg.test:
                tested = trainer.test(task, datamodule=datamodule, ckpt_path=best if cfg.train else None,
                                      verbose=False)
                metrics.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
            if trainer.is_global_zero:  # before tracking closes: they survive whatever happens to the store
                report(metrics, run_dir, best, task.monitor, task.class_names)
    except SIGTERMException as exc:
        raise on_signal.exit_status(exc) from None
    if trainer.is_global_zero:
        say("\n".join(tracking.describe()))
    return metrics


def say(text: str) -> None:
    """Print ``text`` and keep it in the run's log file (``train.log``; the ``medexp.summary`` logger writes only
    there, see conf/hydra/default.yaml)."""
    print(text, flush=True)
    logging.getLogger("medexp.summary").info(text)


def report(metrics: dict[str, float], run_dir: Path, best: str | None, monitor: str,
           class_names: Sequence[str] = ()) -> None:
    """Keep the final metrics in the run folder (``metrics.json``) and print a summary (4 significant digits): the
    monitored metric (the kept checkpoint's) and its test value first, then that quantity per class, then the other
    summary metrics of the final evaluation; the run folder and the best checkpoint. Every metric is in the file."""
    (run_dir / METRICS_FILE).write_text(json.dumps(
        {"metrics": metrics, "best_checkpoint": best, "run_dir": str(run_dir.resolve())}, indent=2))
    stage, _, quantity = monitor.partition("/")
    final = "test" if any(key.startswith("test/") for key in metrics) else stage
    headline = list(dict.fromkeys(key for key in (monitor, f"{final}/{quantity}") if key in metrics))
    per_class = _per_class(metrics, f"{final}/{quantity}", class_names)
    suffixes = tuple(suffix for name in class_names for suffix in _suffixes(name))
    others = [key for key in sorted(metrics) if final == "test" and key.startswith("test/") and key not in headline
              and not key.endswith(suffixes)]  # the other quantities per class: in metrics.json and MLflow
    lines = [_line(key, metrics[key]) for key in headline]
    if per_class:
        lines += [f"  per class ({final}/{quantity}):", *(_line(key, metrics[key], indent=4) for key in per_class)]
    lines += [_line(key, metrics[key]) for key in others]
    lines += [f"Run folder: {run_dir.resolve()}", *([f"Best checkpoint: {best}"] if best else [])]
    say("\n".join(["", "medexp: run finished", *lines]))


def _suffixes(name: str) -> tuple[str, ...]:
    from medexp.tasks.classification import metric_key

    return tuple(f"{sep}{variant}" for sep in "_/" for variant in dict.fromkeys([name, metric_key(name)]))


def _per_class(metrics: Mapping[str, float], key: str, class_names: Sequence[str]) -> list[str]:
    """``key``'s value per class as the tasks log it (``test/auroc/<class>``, ``val/dice_<class>``), in class order."""
    return [f"{key}{suffix}" for name in class_names for suffix in _suffixes(name) if f"{key}{suffix}" in metrics]


def _line(key: str, value: float, indent: int = 2) -> str:
    return " " * indent + (f"{key}: {value:.4g}" if math.isfinite(value) else f"{key}: {value}")
