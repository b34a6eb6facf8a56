"""Re-evaluate a trained checkpoint: rebuild data and task from the config it carries, test, report, log."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from medexp.errors import DataError


def load_checkpoint(ckpt_path: str) -> dict:
    import torch

    path = Path(ckpt_path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist: give ckpt_path=<a .ckpt written by medexp-train>")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if "config" not in ckpt.get("hyper_parameters", {}):
        raise DataError(f"{path} carries no medexp config: it was not written by medexp-train")
    return ckpt


def evaluate_checkpoint(ckpt_path: str, tracking_uri: str, experiment: str, data_root: str | None = None,
                        log_to: str = "same", accelerator: str = "cpu", report_dir: Path | None = None) -> dict:
    """Test metrics of ``ckpt_path`` on its test split; logged to its training run, a new run, or nowhere."""
    import pytorch_lightning as pl

    from medexp.pipeline import build_datamodule, build_task, tracked
    from medexp.tracking.mlflow import RUN_ID_FILE, build_mlflow_logger

    if log_to not in ("same", "new", "none"):
        raise DataError(f"log_to={log_to!r}: use same, new or none")
    ckpt = load_checkpoint(ckpt_path)
    config = ckpt["hyper_parameters"]["config"]
    cfg = OmegaConf.create(config)
    if data_root is not None:
        cfg.data.root = data_root
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule, config)
    task.load_state_dict(ckpt["state_dict"])

    logger = None
    if log_to != "none":
        run_id_file = Path(ckpt_path).resolve().parent.parent / RUN_ID_FILE
        if log_to == "same" and run_id_file.is_file():
            logger = build_mlflow_logger(cfg.tracking.uri, cfg.tracking.experiment, run_id=run_id_file.read_text().strip())
        else:
            logger = build_mlflow_logger(tracking_uri, experiment, run_name=f"eval-{Path(ckpt_path).stem}",
                                         tags={"evaluated_checkpoint": str(Path(ckpt_path).resolve())})
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=logger or False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with tracked(logger):
        (metrics,) = trainer.test(task, datamodule=datamodule, verbose=False)
        if report_dir is not None and hasattr(task, "write_test_report"):
            report_dir.mkdir(parents=True, exist_ok=True)
            for path in task.write_test_report(report_dir):
                if logger is not None:
                    logger.log_artifact(path, "eval_report")
    return {k: float(v) for k, v in metrics.items()}
