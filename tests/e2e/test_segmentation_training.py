"""Segmentation end to end through ``medexp-train``'s pipeline: 2D fundus folders and 3D NIfTI volumes."""
from __future__ import annotations

from pathlib import Path

import pytest

from medexp.workflows.train import run_experiment
from tests.conftest import SHARED_DATA
from tests.fixtures_data import write_chase_like, write_decathlon_like

REAL_CHASE = SHARED_DATA / "CHASEDB1"
QUIET = ["callbacks.progress_bar.refresh_rate=0"]


def chase_cfg(make_cfg, root: Path, *overrides: str):
    return make_cfg("data=chasedb1", f"data.root={root}", "model=unet", "task=segmentation",
                    "data.split.test_patients=['05','06']", "data.split.val_count=1", "data.patch_size=[32,32]",
                    "data.samples_per_image=2", *QUIET, *overrides)


def test_fast_dev_run_2d(make_cfg, tmp_path):
    root = write_chase_like(tmp_path / "chase")
    metrics = run_experiment(chase_cfg(make_cfg, root, "debug=fast_dev_run"))
    assert {"test/dice", "test/auroc", "test/hd95"} <= set(metrics)


def test_3d_unet_learns_phantom_organs_with_resampling(make_cfg, tmp_path, tracking_uri):
    """Tiny NIfTI volumes (spacing in the header) -> resampled -> patches -> 3D UNet -> sliding-window test."""
    root = write_decathlon_like(tmp_path / "Task", n_cases=6).parent
    metrics = run_experiment(make_cfg(
        "data=decathlon", f"data.root={root}", "model=unet", "task=segmentation", "data.num_classes=3",
        "data.preprocessing.spacing=[3.0,3.0,3.0]", "data.preprocessing.clip_percentiles=null",
        "data.patch_size=[8,8,8]", "data.samples_per_image=4", "data.split.val_ratio=0.17",
        "data.split.test_ratio=0.17", "model.channels=[8,16,32]", "model.strides=[2,2]", "model.num_res_units=1",
        "trainer.max_epochs=12", "optimizer.lr=1e-2", "augmentation=none", "task.hd95_stages=[]", *QUIET))
    assert metrics["test/dice"] > 0.3, metrics  # an all-background predictor scores 0


@pytest.mark.slow
def test_short_chasedb1_run_learns_vessels(make_cfg):
    if not REAL_CHASE.is_dir():
        pytest.skip(f"real data not found at {REAL_CHASE}")
    metrics = run_experiment(make_cfg(
        "experiment=chasedb1_vessels", f"data.root={REAL_CHASE}", "trainer.max_epochs=30",
        "trainer.check_val_every_n_epoch=30", "logger=none", *QUIET))  # 270 steps: a tenth of the full recipe
    # a trivial predictor: all background -> Dice 0; all vessel -> ~0.2 (vessels are ~11% of the field of view)
    assert metrics["test/dice"] > 0.4 and metrics["test/auroc"] > 0.9, metrics
