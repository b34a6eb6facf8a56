"""Segmentation end to end through ``medexp-train``'s pipeline: 2D fundus folders and 3D NIfTI volumes."""
from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_data import write_chase_like, write_decathlon_like
from medexp.workflows.train import run_experiment

REAL_CHASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "CHASEDB1"
QUIET = ["callbacks.progress_bar.refresh_rate=0"]


def chase_cfg(make_cfg, root: Path, *overrides: str):
    return make_cfg("data=chasedb1", f"data.root={root}", "model=unet", "task=segmentation",
                    "data.split.test_patients=['05','06']", "data.split.val_count=1", "data.patch_size=[32,32]",
                    "data.samples_per_image=2", *QUIET, *overrides)


def test_fast_dev_run_2d(make_cfg, tmp_path):
    root = write_chase_like(tmp_path / "chase")
    metrics = run_experiment(chase_cfg(make_cfg, root, "debug=fast_dev_run"))
    assert {"test/dice", "test/auroc", "test/hd95"} <= set(metrics)


def test_mirroring_tta_averages_the_flipped_predictions_mapped_back():
    """A net that is not mirror-symmetric (it sees the column index): TTA = mean of the re-flipped predictions."""
    import torch
    from monai.losses import DiceCELoss

    from medexp.tasks.segmentation import SegmentationTask

    class ColumnAware(torch.nn.Module):
        def forward(self, x):
            ramp = torch.linspace(-2, 2, x.shape[-1]).expand_as(x)
            return torch.cat([x * ramp, -x * ramp + x], dim=1)

    def task(flips):
        return SegmentationTask(ColumnAware(), torch.optim.SGD, num_classes=2, roi_size=[8, 8], loss=DiceCELoss,
                                tta_flips=flips)

    images = torch.rand(1, 1, 8, 8)
    plain, mirrored = task([]).predict_probabilities(images), task([[1]]).predict_probabilities(images)
    flipped_back = task([]).predict_probabilities(images.flip(-1)).flip(-1)
    assert torch.allclose(mirrored, (plain + flipped_back) / 2, atol=1e-5)
    assert not torch.allclose(mirrored, plain, atol=1e-3)
    assert torch.allclose(mirrored.sum(dim=1), torch.ones(1, 8, 8), atol=1e-5)


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
