"""Classification beyond two classes on MedMNIST-format files the tests write: multi-class (RGB, 5 classes) and
multi-label (ChestMNIST-style 0/1 columns), end to end through ``medexp-train`` and ``medexp-predict``.

Each class or label is a bright square at its own place on a noisy background, so a tiny model learns it in a few
epochs and the metrics must say so; with the multi-label set some images carry several labels, some none.
"""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medexp.data.medmnist import load_medmnist
from medexp.errors import ConfigError
from medexp.tasks.classification import metric_key
from medexp.workflows.train import run_experiment
from tests.unit.cli.test_train import assert_clear_error

BIN = Path(sys.executable).parent
SIZE = 28
SPLIT_SIZES = {"train": 240, "val": 60, "test": 60}
QUICK = ["trainer.max_epochs=4", "data.batch_size=32", "data.download=false", "callbacks.progress_bar.refresh_rate=0"]


def marked(labels: np.ndarray, rgb: bool, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (N, 28, 28) or (N, 28, 28, 3): label k of an image = a bright 6x6 square in cell k of a 3x3
    grid; ``labels`` (N, K) of 0/1."""
    images = rng.normal(60, 20, (len(labels), SIZE, SIZE)).clip(0, 255)
    for k in range(labels.shape[1]):
        row, col = divmod(k, 3)
        images[labels[:, k] == 1, 2 + 9 * row: 8 + 9 * row, 2 + 9 * col: 8 + 9 * col] += 150
    images = images.clip(0, 255).astype(np.uint8)
    if rgb:  # colour images whose channels differ (MedMNIST stores them (N, H, W, 3))
        images = np.stack([images, images // 2 + 40, 255 - images], axis=-1)
    return images


def write_medmnist(path: Path, num_classes: int, multi_label: bool = False, rgb: bool = False, seed: int = 0) -> Path:
    """A MedMNIST-layout .npz: ``{split}_images`` and ``{split}_labels`` (N, 1) class indices, or (N, K) 0/1."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SPLIT_SIZES.items():
        if multi_label:  # every label present in about a third of the images, each image any subset
            labels = (rng.random((n, num_classes)) < 0.35).astype(np.uint8)
        else:
            labels = np.eye(num_classes, dtype=np.uint8)[np.arange(n) % num_classes]
        arrays[f"{split}_images"] = marked(labels, rgb, rng)
        arrays[f"{split}_labels"] = labels if multi_label else labels.argmax(1)[:, None].astype(np.uint8)
    np.savez(path, **arrays)
    return path


def medexp(command: str, *args: str, cwd: Path, tracking_uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / command), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def finished_run(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert run.info.status == "FINISHED"
    return run


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a positive case outscores a negative one (ties count half): AUROC by its definition."""
    pos, neg = scores[positive][:, None], scores[~positive][None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_medmnist_reader_keeps_rgb_channels_and_multi_label_columns(tmp_path):
    rgb = load_medmnist(write_medmnist(tmp_path / "rgb.npz", 5, rgb=True))
    assert rgb["train_images"].shape == (240, 3, SIZE, SIZE) and rgb["train_labels"].shape == (240,)
    assert not np.array_equal(rgb["train_images"][:, 0], rgb["train_images"][:, 1])
    multi = load_medmnist(write_medmnist(tmp_path / "multi.npz", 4, multi_label=True))
    assert multi["test_labels"].shape == (60, 4) and set(np.unique(multi["test_labels"])) == {0, 1}


@pytest.mark.slow
def test_five_class_rgb_run_finishes_with_macro_auroc_and_a_roc_curve_per_class(tmp_path, tracking_uri):
    """The issue's command (the PneumoniaMNIST recipe on another MedMNIST file) used to crash at the end of
    testing; now it finishes, logs MedMNIST's metrics and per-class AUROC, and predicts one column per class."""
    write_medmnist(tmp_path / "fivemnist.npz", 5, rgb=True)
    run_dir = tmp_path / "run"
    done = medexp("medexp-train", "experiment=pneumoniamnist", "data=medmnist", "data.name=fivemnist",
                  f"data.root={tmp_path}", "data.num_classes=5", "data.in_channels=3", *QUICK,
                  f"hydra.run.dir={run_dir}", cwd=tmp_path, tracking_uri=tracking_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = finished_run(tracking_uri).data.metrics
    per_class = [metrics[f"test/auroc/{k}"] for k in range(5)]
    assert all(math.isfinite(v) for v in per_class), metrics
    assert metrics["test/auroc"] == pytest.approx(np.mean(per_class), abs=1e-5)
    assert metrics["test/auroc"] > 0.9 and metrics["test/accuracy"] >= 0.4, metrics  # chance: 0.5 and 0.2
    for key in ("balanced_accuracy", "f1", "sensitivity", "specificity", "loss"):
        assert math.isfinite(metrics[f"test/{key}"]), key
    assert (run_dir / "report" / "roc_test.png").is_file() and (run_dir / "report" / "confusion_matrix_test.png").is_file()

    (ckpt,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    done = medexp("medexp-predict", f"ckpt_path={ckpt}", f"inputs={tmp_path / 'fivemnist.npz'}",
                  f"output_dir={tmp_path / 'predicted'}", cwd=tmp_path, tracking_uri=tracking_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr  # what it wrote, not Lightning's hardware lines or litlogger tip
    assert "GPU available" not in printed and "litlogger" not in printed and "prediction(s) written" in printed
    rows = read_csv(tmp_path / "predicted" / "predictions.csv")
    assert len(rows) == 60 and list(rows[0]) == ["input", "predicted_class", *(f"probability_{k}" for k in range(5))]
    probabilities = np.array([[float(row[f"probability_{k}"]) for k in range(5)] for row in rows])
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    # the logged metrics are MedMNIST's: accuracy of the argmax, AUROC one class against the rest (the checkpoint
    # tested is the one predicting; a float's difference between batchings may break a tie, hence the tolerance)
    truth = np.load(tmp_path / "fivemnist.npz")["test_labels"][:, 0]
    assert metrics["test/accuracy"] == pytest.approx((probabilities.argmax(1) == truth).mean(), abs=0.02)
    for k in range(5):
        assert metrics[f"test/auroc/{k}"] == pytest.approx(auroc(probabilities[:, k], truth == k), abs=0.01)


@pytest.mark.slow
def test_multi_label_run_logs_per_label_auroc_and_predicts_a_column_per_label(tmp_path, tracking_uri):
    """ChestMNIST-style labels with ``task=classification_multilabel``, balanced positive weights and the
    batched augmentation: per-label AUROC, their macro mean, MedMNIST's multi-label accuracy, the report."""
    names = ["effusion", "mass", "nodule", "pleural thickening"]
    write_medmnist(tmp_path / "chestlike.npz", 4, multi_label=True)
    run_dir = tmp_path / "run"
    done = medexp("medexp-train", "task=classification_multilabel", "data=medmnist", "data.name=chestlike",
                  f"data.root={tmp_path}", "data.num_classes=4", f"data.class_names=[{','.join(names)}]",
                  "model=cnn", "augmentation=light", "task.class_weights=balanced", *QUICK,
                  f"hydra.run.dir={run_dir}", cwd=tmp_path, tracking_uri=tracking_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = finished_run(tracking_uri).data.metrics
    per_label = [metrics[f"test/auroc/{metric_key(name)}"] for name in names]
    assert "test/auroc/pleural thickening" in metrics
    assert metrics["test/auroc"] == pytest.approx(np.mean(per_label), abs=1e-5)
    assert metrics["test/auroc"] > 0.9 and metrics["test/accuracy"] > 0.7, metrics
    for key in ("balanced_accuracy", "f1", "sensitivity", "specificity", "loss"):
        assert math.isfinite(metrics[f"test/{key}"]), key
    assert {"val/auroc/mass", "train/auroc/mass"} <= set(metrics)
    report = run_dir / "report"
    assert (report / "roc_test.png").is_file() and (report / "confusion_matrices_test.png").is_file()

    (ckpt,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    done = medexp("medexp-predict", f"ckpt_path={ckpt}", f"inputs={tmp_path / 'chestlike.npz'}",
                  f"output_dir={tmp_path / 'predicted'}", cwd=tmp_path, tracking_uri=tracking_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_csv(tmp_path / "predicted" / "predictions.csv")
    assert list(rows[0]) == ["input", "predicted_labels", *(f"probability_{name}" for name in names)]
    probabilities = np.array([[float(row[f"probability_{name}"]) for name in names] for row in rows])
    for row, row_probabilities in zip(rows, probabilities, strict=True):
        present = [name for name, p in zip(names, row_probabilities, strict=True) if p > 0.5]
        assert row["predicted_labels"] == ";".join(present)
    # MedMNIST's multi-label accuracy (each label at 0.5, mean over labels and images) and per-label AUROC
    truth = np.load(tmp_path / "chestlike.npz")["test_labels"].astype(bool)
    assert metrics["test/accuracy"] == pytest.approx(((probabilities > 0.5) == truth).mean(), abs=0.01)
    for k, name in enumerate(names):
        assert metrics[f"test/auroc/{metric_key(name)}"] == pytest.approx(auroc(probabilities[:, k], truth[:, k]),
                                                                          abs=0.01)


def test_task_and_data_must_agree_on_multi_label(make_cfg, tmp_path):
    write_medmnist(tmp_path / "chestlike.npz", 3, multi_label=True)
    write_medmnist(tmp_path / "threemnist.npz", 3)
    common = ["data=medmnist", f"data.root={tmp_path}", "data.num_classes=3", "data.download=false", "model=cnn",
              "logger=none", "debug=fast_dev_run"]
    with pytest.raises(ConfigError, match="3 0/1 labels per image .* use task=classification_multilabel"):
        run_experiment(make_cfg(*common, "data.name=chestlike", out=tmp_path / "a"))
    with pytest.raises(ConfigError, match="one class index per image: use task=classification$"):
        run_experiment(make_cfg(*common, "data.name=threemnist", "task=classification_multilabel",
                                out=tmp_path / "b"))


def test_multi_label_columns_must_match_num_classes(tmp_path):
    write_medmnist(tmp_path / "chestlike.npz", 4, multi_label=True)
    done = subprocess.run([str(BIN / "medexp-train"), "task=classification_multilabel", "data=medmnist",
                           "data.name=chestlike", f"data.root={tmp_path}", "data.num_classes=14", "logger=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert_clear_error(done, "4 columns", "data.num_classes=14", "set it to 4")


def test_balanced_weights_of_a_multi_label_set_are_negatives_per_positive(make_cfg, tmp_path):
    from medexp.factory import build_datamodule, class_weights

    write_medmnist(tmp_path / "chestlike.npz", 3, multi_label=True)
    cfg = make_cfg("task=classification_multilabel", "data=medmnist", "data.name=chestlike", f"data.root={tmp_path}",
                   "data.num_classes=3", "data.download=false", "model=cnn")
    labels = np.load(tmp_path / "chestlike.npz")["train_labels"]
    weights = class_weights("balanced", build_datamodule(cfg), multi_label=True)
    np.testing.assert_allclose(weights, (len(labels) - labels.sum(0)) / labels.sum(0))
