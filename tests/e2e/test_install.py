"""make train installs only what running needs; the developer extras come with make install / make test; the torch
build is chosen by TORCH_INDEX (the CPU-only wheels leave out the CUDA libraries)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def planned(target: str, tmp_path: Path, *variables: str) -> str:
    """The commands ``make <target>`` would run for a fresh .venv at ``tmp_path`` (``make -n``: nothing runs)."""
    return subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}", *variables], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_train_installs_no_developer_extras_and_make_test_does(tmp_path):
    train = planned("train", tmp_path)
    assert "pip install" in train and "-e ." in train and "[dev]" not in train
    assert "-e '.[dev]'" in planned("test", tmp_path)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_torch_index_picks_the_build(tmp_path):
    cpu = planned("train", tmp_path, "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert "--index-url https://download.pytorch.org/whl/cpu torch==" in cpu
    assert "--index-url" not in planned("train", tmp_path)  # pip's own default otherwise
