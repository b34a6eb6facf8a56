"""DDP evaluation counts each case once: 2 CPU processes (gloo) on file-based data with an odd number of test
cases score exactly what one process scores on the same checkpoint, for segmentation and detection."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_data import write_chase_like

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
QUIET = ["callbacks.progress_bar.refresh_rate=0"]


def ddp_run_and_single_process_eval(tmp_path: Path, tracking_uri: str, *overrides: str) -> tuple[dict, dict]:
    """Test metrics of a 2-process DDP run, and of its best checkpoint evaluated again in this one process."""
    from medexp.workflows.evaluate import evaluate_checkpoint

    run_dir = tmp_path / "run"
    done = subprocess.run([str(BIN / "medexp-train"), "trainer=ddp_cpu", f"hydra.run.dir={run_dir}", *QUIET,
                           *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    single = evaluate_checkpoint(ddp_best(run_dir), tracking_uri, "eval", log_to="none")
    return ddp, single


def ddp_best(run_dir: Path) -> str:
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    return str(best)


def assert_same(ddp: dict, single: dict, names: list[str]) -> None:
    for name in names:
        assert ddp[f"test/{name}"] == pytest.approx(single[f"test/{name}"], abs=1e-5), (name, ddp, single)


def test_segmentation_with_three_test_images_on_two_processes(tmp_path, tracking_uri):
    root = write_chase_like(tmp_path / "chase", patients=(1, 2, 3, 4, 5))
    for path in root.glob("Image_05R*"):
        path.unlink()  # 3 test images: a padded sampler would score one of them twice
    ddp, single = ddp_run_and_single_process_eval(
        tmp_path, tracking_uri, "data=chasedb1", f"data.root={root}", "model=unet", "task=segmentation",
        "data.split.test_patients=['04','05']", "+data.split.val_patients=['03']", "data.patch_size=[32,32]",
        "data.samples_per_image=2", "data.batch_size=2", "trainer.max_epochs=2")
    assert_same(ddp, single, ["dice", "auroc", "loss", "hd95"])


def test_detection_with_seven_test_images_on_two_processes(tmp_path, tracking_uri):
    ddp, single = ddp_run_and_single_process_eval(
        tmp_path, tracking_uri, "experiment=synthetic_detection", f"data.root={tmp_path / 'boxes'}",
        "data.num_train=16", "data.num_val=4", "data.num_test=7", "trainer.max_epochs=2")
    assert_same(ddp, single, ["map", "mar", "froc"])
