"""The training run behind ``medexp-train``: check the config, build, fit, test the best checkpoint, report.

Tracking is attached through ``medexp.tracking.attach`` and ends with the outcome; whatever happens to it, the
final metrics are printed and kept in the run folder (``metrics.json``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from medexp.hydra_setup import in_multirun
from medexp.tracking import attach as tracking_seam
from medexp.tracking.redact import redact

METRICS_FILE = "metrics.json"


def run_experiment(cfg: DictConfig, launched_at: float | None = None) -> dict[str, float]:
    """Fit on train (checkpoints chosen on val), test the best checkpoint, return the final metrics."""
    from medexp.workflows.lifecycle import check_config_values, check_run_mode, check_task_fits_data
    from medexp.workflows.quiet import quiet_libraries

    launched_at = launched_at if launched_at is not None else time.time()
    quiet_libraries()
    check_run_mode(cfg)
    tracking_seam.prepare(cfg)  # no run yet: the writer opens the store while the checks below import torch
    check_task_fits_data(cfg)
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

    from medexp.sweeps.pruning import raise_if_pruned
    from medexp.tracking.timing import RunTimer
    from medexp.workflows.build import (
        best_checkpoint,
        budget_callbacks,
        build_callbacks,
        build_datamodule,
        build_task,
        build_trainer,
        build_trial_callbacks,
        check_resumable,
        resolve_ckpt_path,
    )
    from medexp.workflows.lifecycle import SaveOnSignal

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    config = redact(OmegaConf.to_container(cfg, resolve=True))  # what checkpoints and the tracking store keep
    run_dir = Path(cfg.paths.output_dir)
    on_budget = budget_callbacks(cfg, launched_at)  # before the data: a config it refuses costs no loading
    datamodule = build_datamodule(cfg)
    if cfg.test and cfg.train:
        datamodule.test_dataloader()  # a split without test cases stops the run now, not after the training
    task = build_task(cfg, datamodule, config)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if ckpt_path is not None:
        check_resumable(ckpt_path, task)
    tracking = tracking_seam.attach(cfg, config, run_dir, datamodule, resumed=ckpt_path is not None)
    on_signal = SaveOnSignal(run_dir / "checkpoints")
    trial_callbacks = build_trial_callbacks(cfg)
    callbacks = [*build_callbacks(cfg, has_logger=bool(tracking.loggers)), *on_budget,
                 RunTimer(run_dir, launched_at), on_signal, *tracking.callbacks, *trial_callbacks]
    trainer = build_trainer(cfg, tracking.loggers, callbacks)
    try:
        with tracking.closing():
            if cfg.train:
                trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
                raise_if_pruned(trial_callbacks)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            best = best_checkpoint(trainer)
            best_score = trainer.checkpoint_callback.best_model_score if best is not None else None
            if best_score is not None:  # None for a checkpoint that monitors nothing (Lightning's default one)
                metrics[task.monitor] = float(best_score)
            if cfg.test:
                tested = trainer.test(task, datamodule=datamodule, ckpt_path=best if cfg.train else None,
                                      verbose=False)
                metrics.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
            if trainer.is_global_zero:  # before tracking closes: they survive whatever happens to the store
                report(metrics, run_dir, best, task.monitor)
    except SIGTERMException as exc:
        raise on_signal.exit_status(exc) from None
    if trainer.is_global_zero:
        print("\n".join(tracking.describe()), flush=True)
    return metrics


def report(metrics: dict[str, float], run_dir: Path, best: str | None, monitor: str) -> None:
    """Keep the final metrics in the run folder (``metrics.json``) and print the test metrics and the monitored
    one (4 significant digits), the run folder and the best checkpoint."""
    (run_dir / METRICS_FILE).write_text(json.dumps(
        {"metrics": metrics, "best_checkpoint": best, "run_dir": str(run_dir.resolve())}, indent=2))
    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith("test/") or k == monitor}
    lines = [f"  {key}: {value:.4g}" if math.isfinite(value) else f"  {key}: {value}" for key, value in shown.items()]
    lines += [f"Run folder: {run_dir.resolve()}", *([f"Best checkpoint: {best}"] if best else [])]
    print("\n".join(["", "medexp: run finished", *lines]), flush=True)
