"""BCCD blood cells (Pascal VOC, read from ../shared/data/BCCD; skipped where absent): boxes go to the model and back
to VOC's pixel convention exactly, and ``experiment=bccd_cells`` learns on a subset, its checkpoint's
``medexp-predict`` boxes landing on the ground truth of test images."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from medexp.data.detection import DetectionDataModule
from medexp.workflows.predict import predict
from medexp.workflows.train import run_experiment
from tests.conftest import SHARED_DATA, compose_config

BCCD = SHARED_DATA / "BCCD"
CLASSES = ["RBC", "WBC", "Platelets"]
pytestmark = pytest.mark.skipif(not (BCCD / "Annotations").is_dir(), reason=f"BCCD not found at {BCCD}")


def voc_boxes(stem: str) -> list[list[float]]:
    """The annotation's boxes as written (xmin, ymin, xmax, ymax), zero-area ones left out as the reader does."""
    boxes = []
    for obj in ET.parse(BCCD / "Annotations" / f"{stem}.xml").getroot().iter("object"):
        box = [float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    return boxes


def iou(a, b) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_voc_boxes_go_to_the_half_size_grid_and_back_exactly():
    """A test image's ground truth through the loader (VOC column-first corners -> row-first on the 240 x 320
    grid the model sees) and back through ``boxes_on_input`` (what medexp-predict writes) is the annotation again."""
    dm = DetectionDataModule(datalist={"kind": "voc"}, root=str(BCCD), spatial_dims=2, in_channels=3, num_classes=3,
                             class_names=CLASSES, preprocessing={"resize": [240, 320]}, validate=False)
    dm.setup()
    record = dm.split.test[0]
    batch = next(iter(dm.test_dataloader()))
    on_grid = batch["box"][0]
    assert batch["image"][0].shape == (3, 240, 320)
    expected = np.asarray(voc_boxes(record["case_id"]))
    # rows first, half size; MONAI places a resized grid's first pixel centre at 0.5 of the original's
    np.testing.assert_allclose(on_grid.numpy(), (expected[:, [1, 0, 3, 2]] - 0.5) / 2, atol=1e-4)
    (image,) = next(iter(dm.prediction_loader([record["image"]])))["image"]
    np.testing.assert_allclose(dm.boxes_on_input(on_grid, image)["voxels"].numpy(), expected, atol=1e-3)


def write_subset(root: Path, counts: dict[str, int]) -> Path:
    """A VOC folder of the first ``counts[split]`` images of each official split (links to BCCD's files)."""
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for folder in ("Annotations", "JPEGImages"):
        (root / folder).symlink_to(BCCD / folder)
    for split, count in counts.items():
        stems = (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:count]
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict[str, float], Path]:
    """experiment=bccd_cells on 60 training images for 12 epochs (180 steps), validated once (about 2.5 minutes of
    one core; 40 images for 6 epochs stayed at test mAP@0.5 0.06)."""
    out = tmp_path_factory.mktemp("bccd")
    subset = write_subset(out / "bccd", {"train": 60, "val": 6, "test": 12})
    cfg = compose_config(["experiment=bccd_cells", f"data.root={subset}", "logger=none", "trainer.max_epochs=12",
                          "trainer.check_val_every_n_epoch=12", "callbacks.progress_bar.refresh_rate=0"], out)
    try:
        metrics = run_experiment(cfg)
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    (best,) = (out / "run" / "checkpoints").glob("best-*.ckpt")
    return best, metrics, subset


@pytest.mark.slow
def test_bccd_recipe_learns_on_a_subset(trained):
    """An untrained detector (or boxes placed without looking) scores about 0; 12 short epochs clearly more."""
    _, metrics, _ = trained
    assert metrics["test/ap_iou50"] > 0.25, metrics
    assert {f"test/ap_iou50_{name}" for name in CLASSES} <= set(metrics)


@pytest.mark.slow
def test_bccd_predictions_land_on_the_ground_truth_in_voc_convention(trained, tmp_path):
    best, _, subset = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for stem in (subset / "ImageSets" / "Main" / "test.txt").read_text().split()[:3]:
        (inputs / f"{stem}.jpg").symlink_to(BCCD / "JPEGImages" / f"{stem}.jpg")
    predict(str(best), str(inputs), tmp_path / "out")
    written = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert written["box_mode"] == "xyxy" and written["box_axes"] == "xy" and written["class_names"] == CLASSES
    found = total = 0  # ground-truth cells that a detection scoring >= 0.3 covers at IoU >= 0.5
    for case in written["cases"]:
        with Image.open(case["input"]) as photo:
            assert case["shape"] == [photo.height, photo.width]  # rows, columns: the axis order of the arrays
        detected = [box for box, score in zip(case["boxes"], case["scores"], strict=True) if score >= 0.3]
        for truth in voc_boxes(Path(case["input"]).stem):
            total += 1
            found += any(iou(box, truth) >= 0.5 for box in detected)
    assert found / total > 0.5, (found, total)  # the full recipe's checkpoint: 83 of 88 on 5 test images
