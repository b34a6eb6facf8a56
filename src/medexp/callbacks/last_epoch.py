"""The last epoch is always validated, so every run ends with a validation metric, a best checkpoint to test and
``last.ckpt``, whatever ``trainer.check_val_every_n_epoch`` says."""
from __future__ import annotations

import pytorch_lightning as pl


class ValidateLastEpoch(pl.Callback):
    """Validate epoch ``max_epochs`` even when ``check_val_every_n_epoch`` does not divide it: a recipe validating
    every 50 epochs, run for 3 (``debug=limit``, a quick look), would otherwise end with no metric, no checkpoint
    and nothing to test. Lightning reads the interval at each epoch, so the last one sets it to 1."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and (
            trainer.current_epoch == trainer.max_epochs - 1)
        if last and (trainer.check_val_every_n_epoch or 1) > 1:
            trainer.check_val_every_n_epoch = 1
