"""What the terminal shows during and after a run: the bar's loss and monitored metric, no library noise."""
from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import torch


def test_the_progress_bar_shows_the_loss_and_the_monitored_metric_not_v_num():
    from medexp.callbacks.progress import MetricsProgressBar

    trainer = SimpleNamespace(callback_metrics={"train/loss": torch.tensor(0.123456), "val/auroc": torch.tensor(0.9),
                                                "val/loss": torch.tensor(0.3)})
    shown = MetricsProgressBar().get_metrics(trainer, SimpleNamespace(monitor="val/auroc"))
    assert shown == {"loss": "0.1235", "val/auroc": "0.9"}


def test_library_noise_is_silenced_and_only_that(caplog):
    from medexp.workflows.quiet import quiet_libraries

    quiet_libraries()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()  # filters go after simplefilter: the order a run has
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=2)
        warnings.warn("The number of training batches (4) is smaller than the logging interval", UserWarning, stacklevel=2)
        warnings.warn("something a user should see", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["something a user should see"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").warning("a real warning")
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").warning("nvImageCodec is not available; skipping")
    assert [r.getMessage() for r in caplog.records] == ["a real warning"]
