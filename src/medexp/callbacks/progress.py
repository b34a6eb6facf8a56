"""A progress bar that says how training goes: the last epoch's training loss and the monitored validation metric
(4 significant digits), instead of Lightning's default ``v_num`` (the logger's version, meaningless to a user)."""
from __future__ import annotations

from pytorch_lightning.callbacks import TQDMProgressBar


class MetricsProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar showing ``loss`` (``train/loss`` of the last epoch) and the task's monitored metric."""

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        shown = {"train/loss": "loss", pl_module.monitor: None}
        metrics = trainer.callback_metrics
        return {label or key: f"{float(metrics[key]):.4g}" for key, label in shown.items()
                if key in metrics and metrics[key].numel() == 1}
