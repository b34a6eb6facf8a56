"""What every task shares: the network, optimizer and scheduler from config, metric plumbing, epoch-level logging.

Tasks get the optimizer and scheduler as partials (``_partial_: true`` in conf/) and complete them with their
parameters. Metrics are torchmetrics collections per stage, logged once per epoch (per-step writes to an MLflow
sqlite store cost ~7 ms each) and synchronised across DDP ranks by torchmetrics itself.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from medexp.errors import MedexpError

STAGES = ("train", "val", "test")


class BaseTask(pl.LightningModule):
    """What the workflows rely on in every task: ``class_names`` (set by the subclass), ``task_kind`` (the kind of
    data module it takes: ``medexp.data.base.MedexpDataModule.task_kind``), ``prediction_kind`` (which
    ``medexp-predict`` writer takes its ``predict_step`` outputs), and the report writers below."""

    task_kind: str = ""
    prediction_kind: str = ""
    class_names: list[str]

    def write_test_report(self, folder: Path) -> list[Path]:
        """Write the last test run's report files (plots, tables) into ``folder``; return their paths."""
        return []

    def write_test_page(self, datamodule, folder: Path, title: str) -> list[Path]:
        """Write the tested run's report page (``index.html``, ``medexp.reports.*_page``) into ``folder`` where the
        task has one; return its paths."""
        return []

    def write_validation_report(self, folder: Path) -> list[Path]:
        """Likewise for the last validation, at the end of fitting."""
        return []

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, monitor: str = "val/loss", monitor_mode: str = "min",
                 channels_last: bool | str = False):
        super().__init__()
        # channels_last (NHWC) speeds 2D convolutions up on CPUs (oneDNN) and on tensor cores; "auto" = 2D CNNs
        if channels_last == "auto":
            channels_last = any(isinstance(m, nn.Conv2d) for m in net.modules()) and not any(
                isinstance(m, nn.Conv3d) for m in net.modules())
        self.channels_last = bool(channels_last)
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.best_monitor: float | None = None
        self._train_losses: list[torch.Tensor] = []

    def remember_config(self, config: Mapping) -> None:
        """Keep the resolved run config in checkpoints, as plain containers only: checkpoints must load with
        ``torch.load(weights_only=True)``, and ``medexp-eval`` rebuilds data and task from it."""
        self.save_hyperparameters({"config": dict(config)}, logger=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    # -- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": self.monitor}}

    # -- loss bookkeeping -------------------------------------------------------------------------------------
    def log_train_loss(self, loss: torch.Tensor) -> None:
        """Kept on the device and averaged once per epoch: no host sync, and not even a kernel per step (on a
        GPU a small model's step is bound by how fast Python issues kernels)."""
        self._train_losses.append(loss.detach())

    @property
    def train_steps(self) -> int:
        """Training steps so far in this epoch."""
        return len(self._train_losses)

    def on_train_epoch_start(self) -> None:
        self._train_losses = []

    def on_train_epoch_end(self) -> None:
        if not self._train_losses:
            return
        mean_loss = torch.stack(self._train_losses).mean()
        self._train_losses = []
        self.log("train/loss", mean_loss, sync_dist=True)
        if not math.isfinite(float(mean_loss)):
            raise MedexpError(
                f"training loss became {float(mean_loss)} in epoch {self.current_epoch}: lower optimizer.lr, set "
                "trainer.gradient_clip_val=1.0, or check the data for NaN/inf values"
            )

    def log_metrics(self, stage: str, metrics: Mapping[str, torch.Tensor]) -> None:
        """Log ``<stage>/<name>``; with the monitored metric also ``best/<monitor>``, its best value so far: the
        figure of the checkpoint that is kept, which the last epoch's value need not be."""
        logged = {f"{stage}/{k}": v for k, v in metrics.items()}
        if self.monitor in logged and not self.trainer.sanity_checking:
            value = float(logged[self.monitor])
            better = max if self.monitor_mode == "max" else min
            self.best_monitor = value if self.best_monitor is None else better(self.best_monitor, value)
            logged[f"best/{self.monitor}"] = torch.tensor(self.best_monitor, device=self.device)
        self.log_dict(logged, sync_dist=True)

    # the best monitored value travels in checkpoints, so a resumed run keeps reporting the true best
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["best_monitor"] = self.best_monitor

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_monitor = checkpoint.get("best_monitor")
