"""Mistakes in a training command are one ``error:`` line before training starts (no traceback, no checkpoints
folder), each naming the fix: the public check's wrong class count, a network of another task, a GPU trainer on a
machine without one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "medexp-train"), *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})


def one_line_before_training(result, tmp_path: Path) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
    return errors[0]


@pytest.mark.slow
def test_a_wrong_class_count_on_pneumoniamnist_is_one_line(tmp_path, pneumonia_npz):
    line = one_line_before_training(train(tmp_path, "data=pneumoniamnist", f"data.root={pneumonia_npz.parent}",
                                          "data.num_classes=3", "trainer.max_epochs=1"), tmp_path)
    assert line.endswith("span 0..1 (2 classes): set data.num_classes=2"), line


@pytest.mark.slow
def test_a_classification_network_for_segmentation_is_one_line(tmp_path):
    line = one_line_before_training(train(tmp_path, "experiment=chasedb1_vessels", "model=resnet18"), tmp_path)
    assert "is a classification network but the task is segmentation: add model=unet" in line, line


@pytest.mark.slow
def test_a_gpu_trainer_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = one_line_before_training(train(tmp_path, "trainer=gpu"), tmp_path)
    assert "no CUDA GPU" in line and "trainer=cpu" in line, line
