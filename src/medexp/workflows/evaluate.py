"""Re-evaluate a trained checkpoint: rebuild data and task from the config it carries, test, report, log."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf


def evaluate_checkpoint(ckpt_path: str, tracking_uri: str, experiment: str, data_root: str | None = None,
                        log_to: str = "same", accelerator: str = "cpu", report_dir: Path | None = None,
                        trusted_targets: Sequence[str] = (), trust_checkpoint: bool = False) -> dict:
    """Test metrics of ``ckpt_path`` on its test split; logged to its training run (at its last training step,
    leaving the run's times and histories alone), a new run, or nowhere (``medexp.tracking.evaluation``). The
    store is this command's (``MLFLOW_TRACKING_URI`` or its outputs folder), never the URI saved in the checkpoint:
    a run folder moves, and the saved URI has its password masked."""
    import pytorch_lightning as pl

    from medexp.checkpoints import load_checkpoint
    from medexp.factory import build_datamodule, build_task
    from medexp.quiet import quiet_libraries
    from medexp.tracking.evaluation import attach_evaluation, check_log_to

    quiet_libraries()
    check_log_to(log_to)  # before the checkpoint is read and the data loaded
    ckpt = load_checkpoint(ckpt_path, trusted_targets, trust=trust_checkpoint)
    config = ckpt["hyper_parameters"]["config"]
    cfg = OmegaConf.create(config)
    if data_root is not None:
        cfg.data.root = data_root
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule, config)
    task.load_state_dict(ckpt["state_dict"])

    tracking = attach_evaluation(ckpt_path, tracking_uri, experiment, log_to, int(ckpt.get("global_step", 0)))
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=tracking.loggers or False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    written: list[Path] = []
    try:
        (metrics,) = trainer.test(task, datamodule=datamodule, verbose=False)
        if report_dir is not None:
            report_dir.mkdir(parents=True, exist_ok=True)
            written = task.write_test_report(report_dir)
            for path in written:
                for logger in tracking.loggers:
                    logger.log_artifact(path, "eval_report")
    except BaseException:
        tracking.close(failed=True)
        raise
    tracking.close(failed=False)
    print(f"medexp-eval: metrics {tracking.where}; report: {', '.join(str(p) for p in written) or 'none'}")
    return {k: float(v) for k, v in metrics.items()}
