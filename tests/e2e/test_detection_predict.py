"""``medexp-predict`` and ``medexp-eval`` on detection checkpoints: the boxes written for new images equal what the
task's test path detects on the same images, and go back onto each input's own voxel grid (and world coordinates)
in the datalist's box convention, whatever the preprocessing resampled or resized."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medexp.workflows.evaluate import evaluate_checkpoint
from medexp.workflows.predict import predict
from tests.unit.data.test_detection import WORLD_BOX, datamodule, png_datalist, world_box_volumes
from tests.unit.workflows.test_predict import restored, train


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """A RetinaNet trained for two steps on the synthetic boxes set (PNGs, boxes in xyxy mode)."""
    return train(tmp_path_factory.mktemp("detector"), "experiment=synthetic_detection", "data.num_train=16",
                 "data.num_val=4", "data.num_test=4", "data.cache=none")


def test_detections_match_the_test_path(detector, tmp_path):
    datamodule, task = restored(detector)
    images = [record["image"] for record in datamodule.split.test]
    summary = predict(str(detector), str(Path(images[0]).parent / "test_*.png"), tmp_path)
    written = json.loads((tmp_path / "detections.json").read_text())
    assert written["box_mode"] == "xyxy" and written["class_names"] == ["lesion"]
    assert [case["input"] for case in written["cases"]] == images
    assert summary["prediction_kind"] == "detection" and (tmp_path / "predictions.json").is_file()
    for batch, case in zip(datamodule.test_dataloader(), written["cases"], strict=True):
        with torch.no_grad():
            (expected,) = task.predict_step(batch, 0)
        assert len(case["boxes"]) > 0 and case["shape"] == [64, 64] and "world_boxes" not in case  # a PNG
        np.testing.assert_allclose(case["boxes"], expected["box"].numpy(), atol=1e-4)
        np.testing.assert_allclose(case["scores"], expected["label_scores"].numpy(), atol=1e-6)
        assert case["labels"] == expected["label"].tolist() and set(case["classes"]) == {"lesion"}


def test_the_mlflow_models_predictor_gives_the_written_detections(detector, tmp_path):
    """What a detection run's MLflow model runs (``DetectionPredictor``, stored arrays in): the boxes, scores,
    labels and classes medexp-predict writes for the same PNGs (the served model and BCCD: test_deploy_detection)."""
    from PIL import Image

    from medexp.export.model import DetectionPredictor

    datamodule, _ = restored(detector)
    images = [record["image"] for record in datamodule.split.test]
    predict(str(detector), str(Path(images[0]).parent / "test_*.png"), tmp_path)
    written = json.loads((tmp_path / "detections.json").read_text())["cases"]
    stored = np.stack([np.asarray(Image.open(path), dtype=np.float32)[None] for path in images])
    found = DetectionPredictor.from_checkpoint(str(detector))(stored)
    assert [sorted(case) for case in found] == [["boxes", "classes", "labels", "scores"]] * len(images)
    assert found == [{key: case[key] for key in ("boxes", "scores", "labels", "classes")} for case in written]


def test_medexp_eval_tests_a_detection_checkpoint(detector, tmp_path):
    metrics = evaluate_checkpoint(str(detector), "", "eval", log_to="none", report_dir=tmp_path / "report")
    assert 0.0 <= metrics["test/map"] <= 1.0 and "test/mar" in metrics and 0.0 <= metrics["test/froc"] <= 1.0
    assert (tmp_path / "report" / "froc_test.png").stat().st_size > 0


def test_boxes_on_a_resampled_volume_go_back_to_its_voxels_and_mm(tmp_path):
    """A box on the 3 mm grid of a 1.5 x 1.5 x 3 mm volume is twice as large in-plane on the volume as read, and
    lands where the datalist's world box (mm) came from."""
    dm = world_box_volumes(tmp_path)
    on_grid = next(iter(dm.test_dataloader()))["box"][0]  # the datalist's box as the model sees it
    assert on_grid[0].tolist() == pytest.approx([2.0, 3.0, 2.0, 5.0, 6.0, 6.0], abs=0.01)
    (image,) = next(iter(dm.prediction_loader([str(tmp_path / "vol4.nii.gz")])))["image"]
    assert image.shape == (1, 12, 10, 12)
    on_input = dm.boxes_on_input(on_grid, image)
    # cccwhd: voxel corners [4, 6, 2] .. [10, 12, 6] of the 24 x 20 x 12 volume
    assert on_input["voxels"][0].tolist() == pytest.approx([7.0, 9.0, 4.0, 6.0, 6.0, 4.0], abs=0.01)
    assert on_input["world"][0].tolist() == pytest.approx(WORLD_BOX, abs=0.01)


def test_boxes_on_a_resized_photograph_go_back_in_the_datalists_convention(tmp_path):
    """Column-first centre-size boxes (COCO-like) on 40 x 48 PNGs resized to 20 x 24: the box the model sees
    comes back as the datalist's box; a photograph has no world coordinates."""
    dm = datamodule(png_datalist(tmp_path, box=[25, 10, 10, 10]), box_mode="ccwh", box_axes="xy",
                    preprocessing={"resize": [20, 24]})
    on_grid = next(iter(dm.val_dataloader()))["box"][0]
    assert (on_grid[0, 2:] - on_grid[0, :2]).tolist() == pytest.approx([5.0, 5.0])  # half the 10 x 10 box
    (image,) = next(iter(dm.prediction_loader([str(tmp_path / "images" / "case3.png")])))["image"]
    on_input = dm.boxes_on_input(on_grid, image)
    assert on_input["voxels"][0].tolist() == pytest.approx([25.0, 10.0, 10.0, 10.0], abs=1e-4)
    assert "world" not in on_input
