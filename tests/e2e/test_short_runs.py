"""A run shorter than its validation interval (recipes validate every 4 to 50 epochs; ``debug=limit`` runs 2) still
ends with a validation at its last epoch, a best checkpoint, ``last.ckpt`` and test metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

BIN = Path(sys.executable).parent


def test_a_run_shorter_than_its_validation_interval_keeps_checkpoints_and_metrics(tmp_path):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [str(BIN / "medexp-train"), "debug=limit", "trainer.check_val_every_n_epoch=50", "logger=none",
         "data.num_train=128", "data.num_val=64", "data.num_test=64", f"hydra.run.dir={run}",
         f"paths.output_root={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1  # debug=limit's 2 epochs, the last one saved
    assert list((run / "checkpoints").glob("best-epoch001.ckpt"))  # chosen on the last epoch's validation
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert any(key.startswith("val/") for key in metrics), metrics
    assert any(key.startswith("test/") for key in metrics), metrics
