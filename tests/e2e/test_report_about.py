"""Report pages name what they evaluate: the model, the epoch of the checkpoint, the key settings."""
from __future__ import annotations

import json
import re
from pathlib import Path

from medexp.workflows.train import run_experiment

QUIET = ["callbacks.progress_bar.refresh_rate=0"]


def about(run_dir: Path) -> str:
    page = (run_dir / "report" / "index.html").read_text()
    (line,) = re.findall(r"<p class='about'>(.*?)</p>", page)
    return line


def test_a_classification_page_names_model_checkpoint_epoch_and_settings(make_cfg, tracking_uri):
    cfg = make_cfg("data.num_train=64", "data.num_val=32", "data.num_test=32", "trainer.max_epochs=2",
                   "optimizer.lr=0.002", *QUIET)
    run_experiment(cfg)
    run_dir = Path(cfg.paths.output_dir)
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    epoch = int(re.search(r"best-epoch(\d+)", best).group(1))
    line = about(run_dir)
    assert line.startswith("Model: ClassicCNN (") and f"checkpoint of epoch {epoch}, best val/auroc " in line
    assert "optimizer Adam lr 0.002" in line and "data SyntheticLesionDataModule, batch 64, up to 2 epochs, seed 0" in line


def test_a_detection_page_names_its_model(make_cfg, tracking_uri):
    cfg = make_cfg("experiment=synthetic_detection", "data.num_train=16", "data.num_val=8", "data.num_test=8",
                   "trainer.max_epochs=1", *QUIET)
    run_experiment(cfg)
    line = about(Path(cfg.paths.output_dir))
    assert line.startswith("Model: retinanet (") and "checkpoint of epoch 0, best val/map " in line
