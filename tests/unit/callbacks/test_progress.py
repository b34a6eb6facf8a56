"""The progress bar shows the loss and the monitored metric."""
from __future__ import annotations

from types import SimpleNamespace

import torch


def test_the_progress_bar_shows_the_loss_and_the_monitored_metric_not_v_num():
    from medexp.callbacks.progress import MetricsProgressBar

    trainer = SimpleNamespace(callback_metrics={"train/loss": torch.tensor(0.123456), "val/auroc": torch.tensor(0.9),
                                                "val/loss": torch.tensor(0.3)})
    shown = MetricsProgressBar().get_metrics(trainer, SimpleNamespace(monitor="val/auroc"))
    assert shown == {"loss": "0.1235", "val/auroc": "0.9"}
