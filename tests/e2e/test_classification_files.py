"""Classification from files end to end: PNG files + a CSV train exactly as the ``.npz`` they came from (2D), NIfTI
volumes + a CSV exactly as the 3D MedMNIST ``.npz`` (AdrenalMNIST3D), class folders train, a 3D classifier predicts
on a NIfTI file and a folder, and the file-based module runs under DDP on 2 CPU processes (with the balanced
sampler)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from medexp.workflows.train import run_experiment
from tests.conftest import SHARED_DATA, compose_config

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
QUICK = ["logger=none", "trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0"]


def subset_npz(source: Path, target: Path, sizes: dict[str, int]) -> Path:
    """The first ``sizes[split]`` cases of each split of a MedMNIST file."""
    if not source.is_file():
        pytest.skip(f"real data not found at {source}")
    with np.load(source) as npz:
        arrays = {f"{s}_{k}": npz[f"{s}_{k}"][:n] for s, n in sizes.items() for k in ("images", "labels")}
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, **arrays)
    return target


def write_files(npz: Path, folder: Path, suffix: str) -> Path:
    """Each image of ``npz`` as its own file (PNG, or NIfTI for volumes) and ``labels.csv`` (image, label, split)."""
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(npz) as arrays, open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "split"])
        for split in ("train", "val", "test"):
            for index, (image, label) in enumerate(zip(arrays[f"{split}_images"], arrays[f"{split}_labels"][:, 0],
                                                       strict=True)):
                name = f"{split}/{index:04d}{suffix}"
                (folder / split).mkdir(exist_ok=True)
                if suffix == ".png":
                    Image.fromarray(image).save(folder / name)
                else:
                    nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / name))
                writer.writerow([name, int(label), split])
    return folder / "labels.csv"


def train(out: Path, *overrides: str) -> dict[str, float]:
    try:
        return run_experiment(compose_config([*QUICK, *overrides], out))
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None


def assert_files_train_as_the_npz(tmp_path: Path, npz: Path, table: Path, *recipe: str) -> None:
    """The recipe once on the .npz and once on its files + table, with one seed: equal test metrics."""
    from_npz = train(tmp_path / "a", *recipe, f"data.root={npz.parent}", "data.download=false")
    from_files = train(tmp_path / "b", *recipe, "data=image_table", f"data.table={table}", "data.split_column=split")
    tested = {k: v for k, v in from_npz.items() if k.startswith("test/")}
    assert tested and {k: from_files[k] for k in tested} == pytest.approx(tested, abs=1e-6)


def test_png_table_trains_exactly_as_the_npz(tmp_path):
    npz = subset_npz(SHARED_DATA / "pneumoniamnist.npz", tmp_path / "data" / "pneumoniamnist.npz",
                     {"train": 400, "val": 100, "test": 120})
    table = write_files(npz, tmp_path / "png", ".png")
    assert_files_train_as_the_npz(tmp_path, npz, table, "experiment=pneumoniamnist", "trainer.max_epochs=2", "seed=3")


def test_nifti_table_trains_exactly_as_the_3d_npz_and_predicts_on_a_file_and_a_folder(tmp_path):
    npz = subset_npz(SHARED_DATA / "adrenalmnist3d.npz", tmp_path / "data" / "adrenalmnist3d.npz",
                     {"train": 96, "val": 32, "test": 40})
    table = write_files(npz, tmp_path / "nifti", ".nii.gz")
    # data.spatial_dims=3: the adrenal config has it already; the table needs it (its default is 2D)
    assert_files_train_as_the_npz(tmp_path, npz, table, "experiment=adrenalmnist3d", "data.batch_size=32",
                                  "model.block_inplanes=[4,8,8,8]", "data.spatial_dims=3")

    from medexp.workflows.predict import predict

    (ckpt,) = (tmp_path / "b" / "run" / "checkpoints").glob("best-*.ckpt")
    one = predict(str(ckpt), str(tmp_path / "nifti" / "test" / "0000.nii.gz"), tmp_path / "pred_one")
    folder = predict(str(ckpt), str(tmp_path / "nifti" / "test"), tmp_path / "pred_folder")
    with open(tmp_path / "pred_folder" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and json.dumps(one) and json.dumps(folder)
    with open(tmp_path / "pred_one" / "predictions.csv") as handle:
        (single,) = list(csv.DictReader(handle))
    assert single["predicted_class"] == rows[0]["predicted_class"]


def test_class_folders_train_and_report(tmp_path, tracking_uri):
    rng = np.random.default_rng(0)
    for cls, brightness in (("normal", 60), ("pneumonia", 160)):
        (tmp_path / "xray" / cls).mkdir(parents=True)
        for i in range(30):
            image = np.clip(rng.normal(brightness, 40, (20, 24)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / "xray" / cls / f"{i:02d}.jpg")
    out = tmp_path / "out"
    done = subprocess.run([str(BIN / "medexp-train"), "data=image_folder", f"data.root={tmp_path / 'xray'}",
                           "data.preprocessing.size=16", "model=cnn", "data.batch_size=16", "trainer.max_epochs=3",
                           "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["test/auroc"] > 0.9
    config = (out / "config.yaml").read_text()
    assert "- normal\n  - pneumonia" in config and "num_classes: 2" in config


def test_file_table_under_ddp_counts_every_test_image_once(tmp_path, tracking_uri):
    npz = subset_npz(SHARED_DATA / "pneumoniamnist.npz", tmp_path / "data" / "p.npz",
                     {"train": 128, "val": 41, "test": 51})
    table = write_files(npz, tmp_path / "png", ".png")
    out = tmp_path / "ddp"
    # the balanced sampler's draw, shared out across the two ranks, must give both as many steps (else DDP hangs)
    done = subprocess.run([str(BIN / "medexp-train"), "trainer=ddp_cpu", "data=image_table", f"data.table={table}",
                           "data.split_column=split", "data.sampler=balanced", "model=cnn", "data.batch_size=32",
                           "trainer.max_epochs=1",
                           "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
    assert done.returncode == 0, done.stderr[-3000:]
    from medexp.workflows.evaluate import evaluate_checkpoint

    (best,) = (out / "checkpoints").glob("best-*.ckpt")
    single = evaluate_checkpoint(str(best), tracking_uri, "eval", log_to="none")
    distributed = json.loads((out / "metrics.json").read_text())["metrics"]
    assert single["test/auroc"] == pytest.approx(distributed["test/auroc"], abs=1e-6)
    assert single["test/accuracy"] == pytest.approx(distributed["test/accuracy"], abs=1e-6)


def test_3d_classifier_report_shows_middle_slices_and_grad_cam_and_exports(tmp_path, tracking_uri):
    npz = subset_npz(SHARED_DATA / "adrenalmnist3d.npz", tmp_path / "data" / "adrenalmnist3d.npz",
                     {"train": 64, "val": 24, "test": 24})
    out = tmp_path / "run"
    done = subprocess.run([str(BIN / "medexp-train"), "experiment=adrenalmnist3d", f"data.root={npz.parent}",
                           "data.download=false", "data.batch_size=32", "model.block_inplanes=[4,8,8,8]",
                           "trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
    assert done.returncode == 0, done.stderr[-3000:]
    page = (out / "report" / "index.html").read_text()
    assert "Grad-CAM" in page and page.count("data:image/png;base64") >= 10
    (best,) = (out / "checkpoints").glob("best-*.ckpt")
    exported = subprocess.run([str(BIN / "medexp-export"), f"ckpt_path={best}", "format=torchscript",
                               f"output={tmp_path / 'model.pt'}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "max |difference| from PyTorch" in exported.stdout


def write_dicom_set(folder: Path, series: bool) -> Path:
    """CT-like cases as DICOM (pydicom): 2D files (``series=False``) or series folders (3D volumes), class 1 a
    brighter disc in HU, listed in ``labels.csv`` with official splits."""
    from tests.fixtures_data import write_dicom_series

    rng = np.random.default_rng(5)
    rows = []
    yy, xx = np.mgrid[:16, :16]
    for index in range(48):
        label, split = index % 2, ["train"] * 32 + ["val"] * 8 + ["test"] * 8
        disc = ((yy - 8) ** 2 + (xx - 8) ** 2 < 20) * (250 if label else 0)
        slices = 4 if series else 1
        volume = (rng.normal(-100, 40, (16, 16, slices)) + disc[..., None]).astype(np.int16)
        written = write_dicom_series(folder / f"case{index:02d}", volume)
        image = written if series else next(written.iterdir())
        rows.append([str(image.relative_to(folder)), label, split[index]])
    with open(folder / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["image", "label", "split"], *rows])
    return folder / "labels.csv"


@pytest.mark.parametrize("series", [False, True], ids=["dicom_files", "dicom_series"])
def test_dicom_table_trains_predicts_on_one_file_and_exports_its_windowed_floats(tmp_path, series):
    """DICOM cases in HU, windowed to floats in [0, 1] (stored as floats: no 8-bit scaling), trained from a CSV;
    medexp-predict on one case and on the table, and the exported graph fed the windowed case, all agree."""
    from medexp.data.image_readers import Preprocessing, read_image_file
    from medexp.workflows.export import export
    from medexp.workflows.predict import predict

    table = write_dicom_set(tmp_path / "dicom", series)
    metrics = train(tmp_path / "run", "data=image_table", f"data.table={table}", "data.split_column=split",
                    f"data.spatial_dims={3 if series else 2}", "data.preprocessing.window=[-300,300]",
                    *(["model=resnet10", "model.block_inplanes=[4,8,8,8]"] if series else ["model=cnn"]),
                    "data.batch_size=8", "trainer.max_epochs=6", "optimizer.lr=0.01", "augmentation=none")
    assert metrics["test/auroc"] > 0.9
    (ckpt,) = (tmp_path / "run" / "run" / "checkpoints").glob("best-*.ckpt")
    case = tmp_path / "dicom" / ("case40" if series else "case40/slice_000.dcm")
    (one,) = predict(str(ckpt), str(case), tmp_path / "one")["cases"]
    predict(str(ckpt), str(table), tmp_path / "all")
    with open(tmp_path / "all" / "predictions.csv") as handle:
        rows = {Path(row["input"]).resolve(): row for row in csv.DictReader(handle)}
    with open(tmp_path / "one" / "predictions.csv") as handle:
        (single,) = list(csv.DictReader(handle))
    listed = rows[case.resolve()]
    assert len(rows) == 48 and listed["predicted_class"] == single["predicted_class"]
    predicted = [float(single["probability_0"]), float(single["probability_1"])]
    np.testing.assert_allclose([float(listed["probability_0"]), float(listed["probability_1"])], predicted, atol=1e-5)
    export(str(ckpt), "torchscript", tmp_path / "model.pt")
    import torch

    windowed = Preprocessing.from_config({"window": [-300, 300]})(read_image_file(case))
    assert windowed.dtype == np.float32 and windowed.max() <= 1
    with torch.no_grad():
        exported = torch.jit.load(str(tmp_path / "model.pt"))(torch.from_numpy(windowed[None]))[0].numpy()
    np.testing.assert_allclose(exported, predicted, atol=1e-5)
    assert json.dumps(one)
