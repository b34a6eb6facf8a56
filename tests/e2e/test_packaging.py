"""Packaging: the configs ship inside the wheel, the package list is complete, users can add config options."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def test_every_python_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO / "src").parts) for p in (REPO / "src").rglob("__init__.py")}
    assert found - {"medexp.conf"} <= listed and "medexp.conf" in listed


@pytest.mark.slow
def test_wheel_carries_every_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("medexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"medexp/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert configs <= names, sorted(configs - names)[:5]
    assert "hydra_plugins/medexp_optuna_sweeper/optuna_sweeper.py" in names


def test_config_dir_adds_options_outside_the_package(tmp_path):
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "tiny_cnn.yaml").write_text(
        "_target_: medexp.models.cnn.ClassicCNN\nin_channels: ${data.in_channels}\nnum_classes: 2\nimage_size: 32\n")
    done = subprocess.run([str(BIN / "medexp-train"), "--config-dir", str(tmp_path / "my_conf"), "model=tiny_cnn",
                           "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ClassicCNN" in done.stdout and "image_size: 32" in done.stdout
