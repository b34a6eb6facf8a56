"""``medexp-predict``: tiny models trained here, then applied to new image files (PNG, JPEG, NIfTI, DICOM, .npz).

The predictions must equal what the task computes for the same images through its own test path (same
preprocessing), and segmentation masks must lie on the input's grid (size, affine) whatever the preprocessing
resampled or resized.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from PIL import Image

from medexp.errors import DataError
from medexp.factory import build_datamodule, build_task
from medexp.workflows.predict import predict
from medexp.workflows.train import run_experiment
from tests.conftest import compose_config
from tests.fixtures_data import phantom_volume, write_chase_like, write_decathlon_like, write_dicom_series, write_nifti
from tests.unit.cli.test_train import HEAVY, assert_clear_error

QUICK = ["logger=none", "test=false", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
         "+trainer.limit_val_batches=1", "callbacks.progress_bar.refresh_rate=0"]
TINY_UNET = ["model=unet", "task=segmentation", "model.channels=[8,16]", "model.strides=[2]", "model.num_res_units=1",
             "augmentation=none"]


def train(out: Path, *overrides: str, quick: tuple[str, ...] | list[str] = tuple(QUICK)) -> Path:
    """Train with ``medexp-train``'s pipeline (``quick`` first: a short run); the best checkpoint."""
    try:
        run_experiment(compose_config([*quick, *overrides], out))
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    (best,) = (out / "run" / "checkpoints").glob("best-*.ckpt")
    return best


def restored(ckpt: Path, **task_settings):
    """Data module and task as ``medexp-eval`` rebuilds them: the test path to compare predictions with; the
    trained weights under other ``task`` settings where given."""
    config = torch.load(ckpt, weights_only=True)["hyper_parameters"]["config"]
    config["task"].update(task_settings)
    cfg = OmegaConf.create(config)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule, config)
    task.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    return datamodule, task.eval()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("classifier"), "data.num_train=128", "data.num_val=32", "data.num_test=32")


@pytest.fixture(scope="module")
def segmenter_2d(tmp_path_factory) -> tuple[Path, Path]:
    """RGB fundus-like JPEGs (40x48) resized to 32x32 by the preprocessing, mirrored TTA in inference."""
    out = tmp_path_factory.mktemp("segmenter_2d")
    root = write_chase_like(out / "chase")
    ckpt = train(out, "data=chasedb1", f"data.root={root}", *TINY_UNET, "data.split.test_patients=['05','06']",
                 "data.split.val_count=1", "data.patch_size=[16,16]", "data.samples_per_image=2",
                 "+data.preprocessing.resize=[32,32]", "task.tta_flips=[[1]]")
    return ckpt, root


@pytest.fixture(scope="module")
def segmenter_3d(tmp_path_factory) -> tuple[Path, Path]:
    """NIfTI volumes (1.5 x 1.5 x 3 mm) resampled to 3 mm isotropic by the preprocessing; 3 classes."""
    out = tmp_path_factory.mktemp("segmenter_3d")
    root = write_decathlon_like(out / "Task", n_cases=4).parent
    ckpt = train(out, "data=decathlon", f"data.root={root}", *TINY_UNET, "data.num_classes=3",
                 "data.preprocessing.spacing=[3.0,3.0,3.0]", "data.preprocessing.clip_percentiles=null",
                 "data.patch_size=[8,8,8]", "data.split.val_ratio=0.25", "data.split.test_ratio=0.25")
    return ckpt, root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_classification_csv_matches_the_test_path_for_files_and_npz(classifier, tmp_path):
    datamodule, task = restored(classifier)
    images = datamodule.arrays.images["test"][:6]  # uint8 (N, 1, 32, 32): lossless as PNG
    with torch.no_grad():
        expected = torch.softmax(task(datamodule.standardise(datamodule.tensors["test"][0][:6])), dim=1).numpy()
    folder = tmp_path / "new"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(folder / f"case_{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    np.savez(tmp_path / "new.npz", test_images=images[:, 0])  # MedMNIST layout (N, H, W)

    for inputs, labels in [(folder, [str(folder / f"case_{i:02d}.png") for i in range(6)]),
                           (tmp_path / "new.npz", [f"{tmp_path / 'new.npz'}[test_images][{i}]" for i in range(6)])]:
        out = tmp_path / f"out_{Path(inputs).stem}"
        summary = predict(str(classifier), str(inputs), out, batch_size=4)
        rows = read_csv(out / "predictions.csv")
        assert [row["input"] for row in rows] == labels
        probabilities = np.array([[float(row["probability_benign"]), float(row["probability_malignant"])]
                                  for row in rows])
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        assert [row["predicted_class"] for row in rows] == [["benign", "malignant"][i] for i in expected.argmax(1)]
        assert summary["prediction_kind"] == "classification" and len(summary["cases"]) == 6
        assert (out / "predictions.json").is_file()


def test_classification_needs_only_the_checkpoint_not_the_training_data(classifier, tmp_path, monkeypatch):
    """The training set's mean/std travel in the checkpoint (the data module's state): predicting on another
    machine must not read, or try to download, the training data."""
    from medexp.data.synthetic import SyntheticLesionDataModule

    datamodule, task = restored(classifier)
    image = datamodule.arrays.images["test"][0]
    with torch.no_grad():
        expected = torch.softmax(task(datamodule.standardise(datamodule.tensors["test"][0][:1])), dim=1).numpy()
    Image.fromarray(image[0]).save(tmp_path / "case.png")

    def no_training_data(self):
        raise AssertionError("medexp-predict read the training data")

    monkeypatch.setattr(SyntheticLesionDataModule, "load_arrays", no_training_data)
    predict(str(classifier), str(tmp_path / "case.png"), tmp_path / "out")
    (row,) = read_csv(tmp_path / "out" / "predictions.csv")
    np.testing.assert_allclose([float(row["probability_benign"]), float(row["probability_malignant"])], expected[0],
                               atol=1e-5)


def test_2d_masks_match_the_test_path_resized_back_to_each_image(segmenter_2d, tmp_path):
    ckpt, root = segmenter_2d
    datamodule, task = restored(ckpt)
    summary = predict(str(ckpt), str(root / "Image_0[56]?.jpg"), tmp_path, save_probabilities=True)
    assert len(summary["cases"]) == 4
    for batch in datamodule.test_dataloader():  # the test split: the same four images
        with torch.no_grad():
            test_path = task.predict_probabilities(batch["image"])  # (1, 2, 32, 32): resized, mirrored TTA
        back_to_input = torch.nn.functional.interpolate(test_path, size=(40, 48), mode="bilinear")[0]
        name = batch["case_id"][0]
        probabilities = np.moveaxis(nib.load(tmp_path / f"{name}_probabilities.nii.gz").get_fdata(), -1, 0)
        # the test split reads its cached image as float16 (docs/file-data.md), prediction preprocesses in float32
        np.testing.assert_allclose(probabilities, back_to_input.numpy(), atol=2e-4)
        mask = np.asarray(Image.open(tmp_path / f"{name}_mask.png"))
        assert mask.dtype == np.uint8 and mask.shape == (40, 48)
        np.testing.assert_array_equal(mask, probabilities.argmax(0) * 255)  # binary: 0/255, as the data's own masks
    assert summary["cases"][0]["mask_values"] == dict(zip(task.class_names, (0, 255), strict=True))


def test_3d_masks_keep_the_input_grid_for_nifti_and_dicom(segmenter_3d, tmp_path):
    ckpt, root = segmenter_3d
    summary = predict(str(ckpt), str(root / "imagesTs" / "*.nii.gz"), tmp_path / "nifti")
    (case,) = summary["cases"]
    image, mask = nib.load(root / "imagesTs" / "phantom_900.nii.gz"), nib.load(case["mask"])
    assert mask.shape == image.shape == (24, 20, 12)  # resampled to 3 mm for the model, back for the mask
    assert np.asanyarray(mask.dataobj).dtype == np.uint8 and set(np.unique(mask.dataobj)) <= {0, 1, 2}
    np.testing.assert_array_equal(mask.affine, image.affine)

    series = write_dicom_series(tmp_path / "series", phantom_volume(seed=900)[0], spacing=(0.8, 0.7, 2.5))
    (case,) = predict(str(ckpt), str(series), tmp_path / "dicom")["cases"]
    mask = nib.load(case["mask"])
    assert case["mask"].endswith("series_mask.nii.gz") and mask.shape == (24, 20, 12)
    np.testing.assert_allclose(mask.affine, np.diag([-0.8, -0.7, 2.5, 1.0]), atol=1e-6)  # RAS, as NIfTI wants


def test_bad_inputs_are_one_clear_line(classifier, segmenter_2d, tmp_path):
    segmentation_ckpt, _ = segmenter_2d
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    small, gray = tmp_path / "small.png", tmp_path / "gray.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(small)
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(gray)
    volume = write_nifti(tmp_path / "volume.nii.gz", np.zeros((8, 8, 8), np.float32), (1.0, 1.0, 1.0))
    np.savez(tmp_path / "other.npz", x=np.zeros((2, 32, 32), np.uint8))
    np.savez(tmp_path / "images.npz", test_images=np.zeros((2, 40, 48, 3), np.uint8))
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "nope.ckpt", small, "does not exist: give ckpt_path="),
        (foreign, small, "not written by medexp-train"),
        (classifier, tmp_path / "empty", "no images found at inputs="),
        (classifier, tmp_path / "*.dcm", "no images found at inputs="),
        (classifier, corrupt, f"cannot read image {corrupt}"),
        (classifier, small, "has shape (1, 28, 28) (channels, rows, columns) but the model was trained on (1, 32, 32)"),
        (classifier, tmp_path / "other.npz", "holds no array 'test_images' (it has x): set npz_key="),
        (segmentation_ckpt, corrupt, f"cannot read image {corrupt}"),
        (segmentation_ckpt, gray, f"image {gray} has 1 channel(s) but the model was trained on 3-channel images"),
        (segmentation_ckpt, volume, f"image {volume} is 3D but the model was trained on 2D images"),
        (segmentation_ckpt, tmp_path / "images.npz", "not .npz arrays"),
    ]
    for ckpt, inputs, message in cases:
        with pytest.raises(DataError) as error:
            predict(str(ckpt), str(inputs), tmp_path / "out", npz_key="test_images")
        assert message in str(error.value) and "\n" not in str(error.value), (inputs, str(error.value))


def test_console_script(classifier, tmp_path):
    script = str(Path(sys.executable).parent / "medexp-predict")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run([script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and "ckpt_path" in done.stdout
    assert not HEAVY.findall(done.stderr), sorted(set(HEAVY.findall(done.stderr)))

    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(tmp_path / "case.png")
    done = subprocess.run([script, f"ckpt_path={classifier}", f"inputs={tmp_path / 'case.png'}",
                           f"output_dir={tmp_path / 'preds'}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 classification prediction(s) written" in done.stdout
    assert [row["input"] for row in read_csv(tmp_path / "preds" / "predictions.csv")] == [str(tmp_path / "case.png")]

    done = subprocess.run([script, f"ckpt_path={classifier}", f"inputs={tmp_path / 'nothing_here'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert_clear_error(done, "no images found at inputs=")
