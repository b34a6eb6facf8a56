"""Re-evaluate a trained checkpoint: rebuild data and task from the config it carries, test, report, log."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from medexp.errors import DataError, MedexpError

LOG_TO = ("same", "new", "none")


def evaluate_checkpoint(ckpt_path: str, tracking_uri: str, experiment: str, data_root: str | None = None,
                        log_to: str = "same", accelerator: str = "cpu", report_dir: Path | None = None,
                        trusted_targets: Sequence[str] = (), trust_checkpoint: bool = False) -> dict:
    """Test metrics of ``ckpt_path`` on its test split; logged to its training run (at its last training step), a
    new run, or nowhere. The store is this command's (``MLFLOW_TRACKING_URI`` or its outputs folder), never the
    URI saved in the checkpoint: a run folder moves, and the saved URI has its password masked."""
    import pytorch_lightning as pl

    from medexp.checkpoints import load_checkpoint
    from medexp.tracking.mlflow import RUN_ID_FILE, build_mlflow_logger
    from medexp.workflows.build import build_datamodule, build_task
    from medexp.workflows.quiet import quiet_libraries

    quiet_libraries()
    if log_to not in LOG_TO:
        raise DataError(f"log_to={log_to!r}: use one of {', '.join(LOG_TO)}")
    ckpt = load_checkpoint(ckpt_path, trusted_targets, trust=trust_checkpoint)
    config = ckpt["hyper_parameters"]["config"]
    cfg = OmegaConf.create(config)
    if data_root is not None:
        cfg.data.root = data_root
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule, config)
    task.load_state_dict(ckpt["state_dict"])

    logger, where = None, "not logged (log_to=none)"
    if log_to != "none":
        run_id_file = Path(ckpt_path).resolve().parent.parent / RUN_ID_FILE
        if log_to == "same" and run_id_file.is_file():
            run_id = run_id_file.read_text().strip()
            logger = build_mlflow_logger(tracking_uri, experiment, run_id=run_id,
                                         step_offset=int(ckpt.get("global_step", 0)))
            where = f"logged to the training run {run_id} at step {ckpt.get('global_step', 0)}"
        else:
            logger = build_mlflow_logger(tracking_uri, experiment, run_name=f"eval-{Path(ckpt_path).stem}",
                                         tags={"evaluated_checkpoint": str(Path(ckpt_path).resolve())})
            where = f"logged to a new run in experiment {experiment!r}"
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=logger or False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    written: list[Path] = []
    try:
        (metrics,) = trainer.test(task, datamodule=datamodule, verbose=False)
        if report_dir is not None:
            report_dir.mkdir(parents=True, exist_ok=True)
            written = task.write_test_report(report_dir)
            for path in written:
                if logger is not None:
                    logger.log_artifact(path, "eval_report")
    except BaseException:
        if logger is not None:
            with contextlib.suppress(MedexpError):  # the error that stopped the test is the one to show
                logger.end("FAILED")
        raise
    if logger is not None:
        try:
            logger.end("FINISHED")
        except MedexpError as exc:
            raise MedexpError(f"{exc}; medexp-eval logs to MLFLOW_TRACKING_URI (or tracking.uri=...), or use "
                              "log_to=new / log_to=none") from None
    print(f"medexp-eval: metrics {where}; report: {', '.join(str(p) for p in written) or 'none'}")
    return {k: float(v) for k, v in metrics.items()}
