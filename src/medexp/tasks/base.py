"""What every task shares: the network, optimizer and scheduler from config, metric plumbing, epoch-level logging.

Tasks get the optimizer and scheduler as partials (``_partial_: true`` in conf/) and complete them with their
parameters. Metrics are torchmetrics collections per stage, logged once per epoch (per-step writes to an MLflow
sqlite store cost ~7 ms each) and synchronised across DDP ranks by torchmetrics itself.
"""
from __future__ import annotations

import inspect
import math
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from medexp.data.sharding import rank_seed
from medexp.errors import MedexpError

STAGES = ("train", "val", "test")


def fused_on_cuda(optimizer_factory: Callable, params: list[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` for an optimizer with a fused implementation (torch's Adam, AdamW, SGD, ...: one kernel
    updates every tensor, instead of several kernels per tensor) when every parameter is on a CUDA device and the
    config chose neither ``fused`` nor ``foreach``; else nothing: torch's default (on the CPU, its for-each loop).
    Decided here, when Lightning has moved the model to its device."""
    chosen = getattr(optimizer_factory, "keywords", {})
    try:
        takes_fused = "fused" in inspect.signature(getattr(optimizer_factory, "func", optimizer_factory)).parameters
    except (TypeError, ValueError):  # a callable without a signature: leave it as configured
        return {}
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    return {"fused": True} if takes_fused and on_cuda and not {"fused", "foreach"} & set(chosen) else {}


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

    def run_summary(self) -> str:
        """What a report page names first: the network, the epoch of the checkpoint it evaluates, the key settings
        (from the run config this task keeps)."""
        config = self.hparams.get("config") or {}
        target = str((config.get("model") or {}).get("_target_", type(self.net).__name__))
        model = target.rsplit(".", 1)[-1].removeprefix("build_")  # medexp's builders: build_retinanet -> retinanet
        millions = sum(p.numel() for p in self.net.parameters()) / 1e6
        parts = [f"Model: {model} ({millions:.2f} M parameters)"]
        epoch = self.checkpoint_epoch if self.checkpoint_epoch is not None else self.best_epoch
        if epoch is not None:
            best = f", best {self.monitor} {self.best_monitor:.4g}" if self.best_monitor is not None else ""
            parts.append(f"checkpoint of epoch {epoch}{best}")
        optimizer, data = config.get("optimizer") or {}, config.get("data") or {}
        trainer = config.get("trainer") or {}
        parts.append(f"optimizer {str(optimizer.get('_target_', '?')).rsplit('.', 1)[-1]} lr {optimizer.get('lr')}"
                     f", weight decay {optimizer.get('weight_decay', 0)}")
        data_name = data.get("name") or str(data.get("_target_", "?")).rsplit(".", 1)[-1]
        parts.append(f"data {data_name}, batch {data.get('batch_size')}, "
                     f"up to {trainer.get('max_epochs')} epochs, seed {config.get('seed')}")
        return "; ".join(parts) + "."

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, monitor: str = "val/loss", monitor_mode: str = "min",
                 channels_last: bool | str = False):
        super().__init__()
        # channels_last (NHWC, NDHWC in 3D) speeds convolutions up on CPUs (oneDNN) and on tensor cores; "auto" =
        # CNNs of one dimensionality (measured on a 2-core CPU: a 3D ResNet-10 step 1.2-2x faster)
        has_2d, has_3d = (any(isinstance(m, conv) for m in net.modules()) for conv in (nn.Conv2d, nn.Conv3d))
        if channels_last == "auto":
            channels_last = has_2d != has_3d
        self.channels_last = bool(channels_last)
        self.memory_format = torch.channels_last_3d if has_3d else torch.channels_last
        self.net = net.to(memory_format=self.memory_format) if self.channels_last else net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.best_monitor: float | None = None
        self.best_epoch_metrics: dict[str, float] = {}  # the evaluation of the best monitored epoch, all of it
        self.best_epoch: int | None = None
        self.checkpoint_epoch: int | None = None  # the epoch of the checkpoint loaded last (the one tested)
        self._train_losses: list[torch.Tensor] = []

    def remember_config(self, config: Mapping) -> None:
        """Keep the resolved run config in checkpoints, as plain containers only: checkpoints must load with
        ``torch.load(weights_only=True)``, and ``medexp-eval`` rebuilds data and task from it."""
        self.save_hyperparameters({"config": dict(config)}, logger=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == (5 if self.memory_format == torch.channels_last_3d else 4):
            x = x.contiguous(memory_format=self.memory_format)
        return self.net(x)

    def setup(self, stage: str) -> None:
        """Under DDP each rank draws its own numbers (on-device augmentation, dropout, a detector's negatives): the
        global generators are seeded again with ``rank_seed`` of the run's seed. Not by ``seed_everything``, which
        would change ``PL_GLOBAL_SEED``, from which Lightning's training sampler must shuffle alike on every rank.
        The weights stay rank 0's: DDP broadcasts them when it wraps the model, after this hook."""
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is None or self.trainer.world_size <= 1:
            return
        seed = rank_seed(int(seed), self.trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # -- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params, **fused_on_cuda(self.optimizer_factory, params))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": self.monitor}}

    def compile_network(self) -> None:
        """``trainer.compile=true``: ``torch.compile`` the network in place (``Module.compile``: its weights keep
        their names, so checkpoints load into an uncompiled one)."""
        self.net.compile()

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

    def log_metrics(self, stage: str, metrics: Mapping[str, torch.Tensor], sync_dist: bool = True) -> None:
        """Log ``<stage>/<name>``; with the monitored metric also ``best/<monitor>``, its best value so far: the
        figure of the checkpoint that is kept, which the last epoch's value need not be (that epoch's other
        metrics are kept in ``best_epoch_metrics``, for the end-of-run summary)."""
        logged = {f"{stage}/{k}": v for k, v in metrics.items()}
        if self.monitor in logged and not self.trainer.sanity_checking:
            value = float(logged[self.monitor])
            better = max if self.monitor_mode == "max" else min
            if self.best_monitor is None or better(self.best_monitor, value) != self.best_monitor:
                self.best_epoch_metrics = {k: float(v) for k, v in logged.items()}
                self.best_epoch = self.current_epoch
            self.best_monitor = value if self.best_monitor is None else better(self.best_monitor, value)
            logged[f"best/{self.monitor}"] = torch.tensor(self.best_monitor, device=self.device)
        self.log_dict(logged, sync_dist=sync_dist)

    # the best monitored value travels in checkpoints, so a resumed run keeps reporting the true best
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["best_monitor"] = self.best_monitor
        checkpoint["best_epoch_metrics"] = self.best_epoch_metrics

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_monitor = checkpoint.get("best_monitor")
        self.checkpoint_epoch = checkpoint.get("epoch")
        self.best_epoch_metrics = dict(checkpoint.get("best_epoch_metrics") or {})
