"""Wall-clock landmarks of a run: seconds from launch to the first training step, training images/s.

Saved to ``timing.json`` in the run folder and logged as ``time/*`` metrics, so the cost of start-up (imports, data,
MLflow) is visible per run, and ``benchmarks/bench_train.py`` reads it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only


def batch_size(batch) -> int:
    first = batch["image"] if isinstance(batch, dict) else batch[0]
    return len(first)  # a tensor's first dimension, or a list of images (detection)


def device_done(pl_module: pl.LightningModule) -> None:
    """Wait for the kernels queued on a CUDA device: the host runs ahead of them, so an epoch's clock would stop
    before its last steps ran and images/s would read high."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


class RunTimer(pl.Callback):
    def __init__(self, run_dir: Path, launched_at: float):
        self.run_dir, self.launched_at = Path(run_dir), launched_at
        self.first_step_at = None
        self.train_seconds = 0.0
        self.images = 0
        self._epoch_started = self._val_started = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.first_step_at is None:
            device_done(pl_module)
            self.first_step_at = time.time()
        self.images += batch_size(batch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        device_done(pl_module)
        self._epoch_started = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        device_done(pl_module)
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        device_done(pl_module)
        if trainer.training:  # validation inside a training epoch is not training time
            self._epoch_started += time.perf_counter() - self._val_started

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        device_done(pl_module)
        self.train_seconds += time.perf_counter() - self._epoch_started

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        if self.first_step_at is None:
            return
        figures = {
            "seconds_to_first_step": self.first_step_at - self.launched_at,
            "train_seconds": self.train_seconds,
            "train_images_per_second": self.images * trainer.world_size / max(self.train_seconds, 1e-9),
        }
        (self.run_dir / "timing.json").write_text(json.dumps({**figures, "launched_at": self.launched_at,
                                                              "first_step_at": self.first_step_at}, indent=2))
        for logger in trainer.loggers:
            logger.log_metrics({f"time/{k}": v for k, v in figures.items()}, step=trainer.global_step)
