"""Detection runs end as deployable models too, on real BCCD blood-smear photographs (Pascal VOC, read from
../shared/data/BCCD; skipped where absent): the MLflow model every run logs (stored images in, per image the boxes,
labels and scores in VOC's pixel convention out), its registry version served over HTTP, and ``medexp-export``'s
graph (intensity preprocessing, network, box decoding) in ONNX and TorchScript, box selection outside it.

A short ``experiment=bccd_cells`` run is trained here with MLflow on (parity is about identical outputs, not
quality); every check compares with the ``detections.json`` that ``medexp-predict`` writes for the same JPEG files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medexp.workflows.predict import predict
from tests.e2e.test_bccd import BCCD, write_subset
from tests.e2e.test_deploy_segmentation import tracked_run

REGISTERED = "medexp_test_detector"
# a short real run and RetinaNet on 480 x 640 photographs: about 5 minutes of one core in all
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (BCCD / "Annotations").is_dir(), reason=f"BCCD not found at {BCCD}")]


@pytest.fixture(scope="module")
def bccd_run(tmp_path_factory, migrated_store):
    """experiment=bccd_cells for two steps on a BCCD subset, registered; (best checkpoint, run id, tracking URI,
    the subset's test JPEGs)."""
    out = tmp_path_factory.mktemp("deploy_bccd")
    subset = write_subset(out / "bccd", {"train": 8, "val": 2, "test": 3})
    with tracked_run(out, migrated_store, "experiment=bccd_cells", f"data.root={subset}",
                     f"tracking.register_as={REGISTERED}") as (best, run_id, uri):
        stems = (subset / "ImageSets" / "Main" / "test.txt").read_text().split()
        yield best, run_id, uri, [BCCD / "JPEGImages" / f"{stem}.jpg" for stem in stems]


def stored(paths: list[Path]) -> np.ndarray:
    """The photographs as stored, channels first, float32 (N, 3, 480, 640): what the MLflow model takes."""
    return np.stack([np.moveaxis(np.asarray(Image.open(path), dtype=np.float32), -1, 0) for path in paths])


def written_detections(ckpt_path: str, paths: list[Path], out: Path) -> dict:
    """``medexp-predict``'s detections.json for the files, its cases in input order."""
    folder = out / "inputs"
    folder.mkdir(parents=True)
    for path in paths:
        (folder / path.name).symlink_to(path)
    predict(ckpt_path, str(folder), out / "preds")
    written = json.loads((out / "preds" / "detections.json").read_text())
    by_name = {Path(case["input"]).name: case for case in written["cases"]}
    return {**written, "cases": [by_name[path.name] for path in paths]}


def assert_same_detections(found: list[dict], expected: list[dict], box_tolerance: float = 0.0,
                           score_tolerance: float = 0.0) -> None:
    assert len(found) == len(expected)
    for ours, theirs in zip(found, expected, strict=True):
        assert len(ours["boxes"]) == len(theirs["boxes"]) > 0
        np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=box_tolerance, rtol=0)
        np.testing.assert_allclose(ours["scores"], theirs["scores"], atol=score_tolerance, rtol=0)
        assert ours["labels"] == theirs["labels"] and ours["classes"] == theirs["classes"]


def test_detection_run_logs_a_registered_model_giving_medexp_predicts_boxes(bccd_run, tmp_path):
    from tests.e2e.test_deploy import logged_models

    best, run_id, uri, files = bccd_run
    expected = written_detections(str(best), files, tmp_path)
    assert expected["box_mode"] == "xyxy" and expected["box_axes"] == "xy"  # VOC: xmin, ymin, xmax, ymax
    for model in logged_models(uri, run_id, REGISTERED):
        (spec,) = model.metadata.get_input_schema().inputs
        assert spec.type == np.dtype(np.float32) and spec.shape == (-1, 3, -1, -1)
        about = model.metadata.metadata
        assert about["kind"] == "detection" and about["class_names"] == ["RBC", "WBC", "Platelets"]
        assert "resized to [240, 320] inside the model" in about["input"] and about["box_mode"] == "xyxy"
        found = model.predict(stored(files))
        assert_same_detections(found, expected["cases"])  # the same code path: identical
        assert_same_detections(model.predict(stored(files[1:2])), expected["cases"][1:2])  # another batch size
    # on the 640 x 480 photograph (to the half pixel a resize's grid adds), not on the 320 x 240 grid the network saw
    boxes = np.concatenate([case["boxes"] for case in found])
    assert 320 < boxes[:, [0, 2]].max() <= 640.5 and 240 < boxes[:, [1, 3]].max() <= 480.5


def test_medexp_predict_takes_a_detection_models_uris(bccd_run, tmp_path):
    best, run_id, uri, files = bccd_run
    expected = written_detections(str(best), files, tmp_path / "ckpt")["cases"]
    for name, model_uri in (("run", f"runs:/{run_id}/model"), ("registry", f"models:/{REGISTERED}/1")):
        assert_same_detections(written_detections(model_uri, files, tmp_path / name)["cases"], expected)


def test_registered_detection_model_served_over_http_answers_invocations(bccd_run, tmp_path):
    from tests.e2e.test_deploy import serving

    best, run_id, uri, files = bccd_run
    expected = written_detections(str(best), files, tmp_path)["cases"]
    with serving(f"models:/{REGISTERED}/1", uri, tmp_path / "serve.log") as invoke:
        served = invoke({"inputs": stored(files).tolist()})
    assert sorted(served[0]) == ["boxes", "classes", "labels", "scores"]
    assert_same_detections(served, expected)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_and_box_selection_outside_it_give_medexp_predicts_boxes(bccd_run, tmp_path, fmt):
    """The exported graph on the test photographs resized to the working grid, MONAI's box selection on its
    outputs (``select_detections``), the boxes back onto the photographs: medexp-predict's detections."""
    import mlflow

    from medexp.export.formats import FORMATS
    from medexp.export.model import detection_record, select_detections, stored_cases
    from medexp.factory import load_for_inference
    from medexp.workflows.export import export

    best, run_id, uri, files = bccd_run
    output = tmp_path / f"model.{fmt}"
    result = export(str(best), fmt, output, tracking_uri=uri)
    assert result["max_abs_difference"] <= 1e-4 and result["parity_cases"] == 3 and result["parity_split"] == "test"
    assert result["spatial_axes"] == "free"
    assert "on the working grid [240, 320]" in result["outside_graph"] and "NMS at IoU 0.5" in result["outside_graph"]
    loaded = load_for_inference(str(best))
    datamodule, task = loaded.datamodule, loaded.task
    assert [Path(record["image"]).name for record in datamodule.split.test] == [path.name for path in files]
    on_grid = stored_cases(datamodule, ("resize",), None)  # the split's test photographs, resized to 240 x 320
    assert on_grid.shape == (3, 3, 240, 320)
    outputs = FORMATS[fmt][1](output, on_grid)
    found = []
    for index, detected in enumerate(select_detections(task, outputs, on_grid.shape[2:])):
        (image,) = next(iter(datamodule.prediction_loader([str(files[index])])))["image"]  # knows its resize
        found.append(detection_record(task, datamodule, detected, image)[0])
    expected = written_detections(str(best), files, tmp_path)["cases"]
    assert_same_detections(found, expected, box_tolerance=1e-3, score_tolerance=1e-4)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["boxes_0", "scores_0", "boxes_1", "scores_1",
                                                          "boxes_2", "scores_2"]
    assert f"export/{fmt}_max_abs_difference" in mlflow.MlflowClient(uri).get_run(run_id).data.metrics
