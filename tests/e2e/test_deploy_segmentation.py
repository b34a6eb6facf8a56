"""Segmentation runs end as deployable models too: the MLflow model every run logs (stored intensities on the
training grid in, label maps out), its registry version, ``medexp-predict`` on its URIs, and ``medexp-export``'s
graph (intensity preprocessing + network) in ONNX and TorchScript.

Tiny runs are trained here with MLflow on; the MLflow model's label maps must equal, voxel for voxel, the masks
``medexp-predict`` writes for the same image files (what a user gets from the checkpoint), not the deployed code.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medexp.workflows.predict import predict
from tests.conftest import SHARED_DATA
from tests.fixtures_data import phantom_volume, write_chase_like, write_decathlon_like, write_nifti
from tests.unit.workflows.test_predict import TINY_UNET, train

REAL = SHARED_DATA / "Task04_Hippocampus"
QUICK = ["test=false", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
         "callbacks.progress_bar.refresh_rate=0"]


@contextlib.contextmanager
def tracked_run(out: Path, store: Path, *overrides: str):
    """Train into a fresh copy of the migrated MLflow store (``MLFLOW_TRACKING_URI`` set while inside); yields
    (best checkpoint, run id, tracking URI)."""
    shutil.copy(store, out / "mlflow.db")
    uri, previous = f"sqlite:///{out / 'mlflow.db'}", os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        best = train(out, *overrides, quick=QUICK)
        yield best, (out / "run" / "mlflow_run_id").read_text().strip(), uri
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="module")
def photographs(tmp_path_factory, migrated_store):
    """RGB fundus-like JPEGs (40x48) resized to 32x32 inside the model, mirrored inference; registered."""
    out = tmp_path_factory.mktemp("deploy_2d")
    root = write_chase_like(out / "chase")
    with tracked_run(out, migrated_store, "data=chasedb1", f"data.root={root}", *TINY_UNET,
                     "data.split.test_patients=['05','06']", "data.split.val_count=1", "data.patch_size=[16,16]",
                     "data.samples_per_image=2", "+data.preprocessing.resize=[32,32]", "task.tta_flips=[[1]]",
                     "tracking.register_as=medexp_test_segmenter") as (best, run_id, uri):
        yield best, run_id, uri, sorted(root.glob("Image_0[56]?.jpg"))


@pytest.fixture(scope="module")
def volumes(tmp_path_factory, migrated_store):
    """NIfTI volumes (1.5 x 1.5 x 3 mm) resampled to 3 mm by the recipe, percentile clipping, 3 classes; new
    cases written already on the 3 mm training grid (the model's input)."""
    out = tmp_path_factory.mktemp("deploy_3d")
    root = write_decathlon_like(out / "Task", n_cases=4).parent
    cases = [write_nifti(out / "new" / f"case_{seed}.nii.gz", phantom_volume(seed, shape=(12, 10, 6))[0],
                         (3.0, 3.0, 3.0)) for seed in (900, 901)]
    with tracked_run(out, migrated_store, "data=decathlon", f"data.root={root}", *TINY_UNET, "data.num_classes=3",
                     "data.preprocessing.spacing=[3.0,3.0,3.0]", "data.patch_size=[8,8,8]",
                     "data.split.val_ratio=0.25", "data.split.test_ratio=0.25") as (best, run_id, uri):
        yield best, run_id, uri, cases


def stored(paths: list[Path]) -> np.ndarray:
    """Images as the data stores them, channel first, float32: what the MLflow model takes."""
    arrays = []
    for path in paths:
        if path.name.endswith(".nii.gz"):
            arrays.append(np.asarray(nib.load(path).dataobj, dtype=np.float32)[None])
        else:
            arrays.append(np.moveaxis(np.asarray(Image.open(path), dtype=np.float32), -1, 0))
    return np.stack(arrays)


def written_masks(ckpt_path: str, paths: list[Path], out: Path, **options) -> tuple[list[np.ndarray], list[dict]]:
    """``medexp-predict``'s label maps (class indices) for the files, in input order, and its cases."""
    folder = out / "inputs"
    folder.mkdir(parents=True)
    for path in paths:
        (folder / path.name).symlink_to(path)
    written = {Path(case["input"]).name: case for case in predict(ckpt_path, str(folder), out / "preds", **options)["cases"]}
    cases, masks = [written[path.name] for path in paths], []  # the folder is read in sorted order
    for case in cases:
        mask = np.asarray(Image.open(case["mask"])) if case["mask"].endswith(".png") else \
            np.asarray(nib.load(case["mask"]).dataobj)
        masks.append(mask // max(case["mask_values"].values()) if len(case["class_names"]) == 2 else mask)
    return masks, cases


def test_2d_run_logs_a_registered_model_predicting_medexp_predicts_masks(photographs, tmp_path):
    import mlflow

    best, run_id, uri, files = photographs
    masks, cases = written_masks(str(best), files, tmp_path, save_probabilities=True)
    expected = np.stack(masks)
    assert expected.shape == (4, 40, 48) and set(np.unique(expected)) == {0, 1}  # at the input size, not 32x32
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.tags["model.uri"] == f"runs:/{run_id}/model"
    assert run.data.tags["model.registered"] == "models:/medexp_test_segmenter/1"
    for model_uri in (f"runs:/{run_id}/model", "models:/medexp_test_segmenter/1"):
        model = mlflow.pyfunc.load_model(model_uri)
        (spec,) = model.metadata.get_input_schema().inputs
        assert spec.type == np.dtype(np.float32) and spec.shape == (-1, 3, -1, -1)
        assert model.metadata.get_output_schema().inputs[0].shape == (-1, -1, -1)
        assert "resized to [32, 32] inside the model" in model.metadata.metadata["input"]
        labels = model.predict(stored(files))
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(model.predict(stored(files[1:2])), expected[1:2])  # another batch size
    both = model.predict(stored(files), params={"probabilities": True})
    np.testing.assert_array_equal(both["label_map"], expected)
    for probabilities, case in zip(both["probabilities"], cases, strict=True):
        written = np.moveaxis(nib.load(case["probabilities"]).get_fdata(dtype=np.float32), -1, 0)
        np.testing.assert_array_equal(probabilities, written)


def test_medexp_predict_takes_a_segmentation_models_uris(photographs, tmp_path):
    best, run_id, uri, files = photographs
    expected = np.stack(written_masks(str(best), files, tmp_path / "ckpt")[0])
    for name, model_uri in (("run", f"runs:/{run_id}/model"), ("registry", "models:/medexp_test_segmenter/1")):
        np.testing.assert_array_equal(np.stack(written_masks(model_uri, files, tmp_path / name)[0]), expected)


@pytest.mark.slow
def test_registered_segmentation_model_served_over_http_answers_invocations(photographs, tmp_path):
    from tests.e2e.test_deploy import serving

    best, run_id, uri, files = photographs
    expected = np.stack(written_masks(str(best), files, tmp_path)[0])
    with serving("models:/medexp_test_segmenter/1", uri, tmp_path / "serve.log") as invoke:
        labels = invoke({"inputs": stored(files).tolist()})
        both = invoke({"inputs": stored(files[:1]).tolist(), "params": {"probabilities": True}})
    np.testing.assert_array_equal(np.array(labels), expected)
    np.testing.assert_array_equal(np.array(both["label_map"]), expected[:1])
    assert np.array(both["probabilities"]).shape == (1, 2, 40, 48)


def test_3d_model_takes_volumes_on_the_training_spacing(volumes, tmp_path):
    import mlflow

    best, run_id, uri, files = volumes
    expected = np.stack(written_masks(str(best), files, tmp_path)[0])
    assert expected.shape == (2, 12, 10, 6) and set(np.unique(expected)) <= {0, 1, 2}
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 1, -1, -1, -1)
    assert "resampled to the training voxel spacing [3.0, 3.0, 3.0]" in model.metadata.metadata["input"]
    np.testing.assert_array_equal(model.predict(stored(files)), expected)
    example = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/input_example.json",
                                                       dst_path=str(tmp_path / "example")))
    assert np.asarray(json.loads(example.read_text())).shape == (1, 1, 8, 8, 8)  # one case, cut to the ROI


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_is_the_models_preprocessing_and_network_with_free_axes(volumes, tmp_path, fmt):
    import mlflow

    from medexp.export.formats import FORMATS
    from medexp.workflows.export import export

    best, run_id, uri, _ = volumes
    output = tmp_path / f"model.{fmt}"
    result = export(str(best), fmt, output, tracking_uri=uri)
    assert result["max_abs_difference"] <= 1e-4 and result["parity_cases"] == 1 and result["spatial_axes"] == "free"
    # a volume the size of the sliding window's ROI is one window: the graph's probabilities are then the MLflow
    # model's, which runs medexp's own transforms (percentile clipping, z-score) and sliding window
    roi_sized = np.stack([phantom_volume(seed, shape=(8, 8, 8))[0][None] for seed in (902, 903)])
    deployed = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(roi_sized, params={"probabilities": True})
    run = FORMATS[fmt][1]
    np.testing.assert_allclose(run(output, roi_sized), deployed["probabilities"], atol=1e-4)
    np.testing.assert_allclose(run(output, roi_sized[1:]), deployed["probabilities"][1:], atol=1e-4)
    if fmt == "onnx":
        import onnxruntime

        (only,) = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"]).get_inputs()
        assert only.name == "image" and only.shape[1] == 1 and not any(isinstance(s, int) for s in only.shape[2:])
    assert f"export/{fmt}_max_abs_difference" in mlflow.MlflowClient(uri).get_run(run_id).data.metrics


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not found at {REAL}")
def test_hippocampus_model_predicts_medexp_predicts_label_maps_on_real_volumes(tmp_path, migrated_store):
    """A short experiment=hippocampus run on two cases of each of folds 0-2: its MLflow model on three real volumes
    (each its own size) against medexp-predict, and its ONNX and TorchScript exports on the validation cases."""
    import mlflow

    from medexp.workflows.export import export

    training = json.loads((REAL / "msd_task04_hippocampus_folds.json").read_text())["training"]
    rows = [{**row, "image": str(REAL / row["image"]), "label": str(REAL / row["label"])}
            for fold in (0, 1, 2) for row in [r for r in training if r["fold"] == fold][:2]]
    (tmp_path / "folds.json").write_text(json.dumps({"training": rows}))
    with tracked_run(tmp_path, migrated_store, "experiment=hippocampus", f"data.root={REAL}",
                     f"data.datalist.path={tmp_path / 'folds.json'}", "model.filters=[8,16,32,64]",
                     "trainer.check_val_every_n_epoch=1") as (best, run_id, uri):
        files = [Path(rows[0]["image"]), Path(rows[2]["image"]), sorted((REAL / "imagesTs").glob("*.nii.gz"))[0]]
        expected, _ = written_masks(str(best), files, tmp_path)
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        for path, mask in zip(files, expected, strict=True):
            assert mask.shape == nib.load(path).shape  # odd sizes (e.g. 35 x 51 x 35), as stored
            np.testing.assert_array_equal(model.predict(stored([path]))[0], mask)
        results = [export(str(best), fmt, tmp_path / f"model.{fmt}") for fmt in ("onnx", "torchscript")]
    for result in results:
        assert result["parity_cases"] == 2 and result["parity_split"] == "validation" and result["max_abs_difference"] <= 1e-4
        assert result["spatial_axes"] == "free"
