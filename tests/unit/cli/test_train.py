"""The command line as a user meets it: fast --help, clear one-line errors without tracebacks."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent
HEAVY = re.compile(r"\|\s+(torch|monai|mlflow|pytorch_lightning|lightning)$", re.M)


def medexp(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "medexp-train"), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]])
def test_help_and_cfg_import_nothing_heavy(tmp_path, args):
    done = medexp(*args, cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr
    assert not HEAVY.findall(done.stderr), sorted(set(HEAVY.findall(done.stderr)))
    assert "model" in done.stdout


def test_help_lists_the_groups(tmp_path):
    out = medexp("--help", cwd=tmp_path).stdout
    for group in ("data:", "model:", "optimizer:", "trainer:", "augmentation:", "experiment:"):
        assert group in out


def assert_clear_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text[-2000:]
    for word in words:
        assert word in text, text[-2000:]


def test_missing_data_file(tmp_path):
    done = medexp("data=pneumoniamnist", f"data.root={tmp_path / 'nope'}", "data.download=false",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_clear_error(done, str(tmp_path / "nope"), "data.root")


def test_wrong_npz_keys(tmp_path):
    np.savez(tmp_path / "pneumoniamnist.npz", x=np.zeros(3))
    done = medexp("data=pneumoniamnist", f"data.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
                  cwd=tmp_path)
    assert_clear_error(done, "train_images")


def test_unknown_option_and_misspelled_key(tmp_path):
    assert_clear_error(medexp("model=resnet1800", cwd=tmp_path), "resnet18")
    assert_clear_error(medexp("optimizr.lr=0.1", cwd=tmp_path), "optimizr")


def test_unusable_tracking_uri_is_one_line_naming_the_fix(tmp_path):
    """MLflow opens in the writer process: its failure must still stop the run early, as one line."""
    done = medexp("tracking.uri=bogus://nowhere", "trainer.max_epochs=50", "data.num_train=256",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_clear_error(done, "bogus://nowhere", "logger=csv")
    assert "Epoch 2:" not in done.stdout + done.stderr  # stopped at the first epoch's logging, not at the end


def test_an_error_raised_inside_hydra_instantiate_is_still_one_line(tmp_path):
    """Hydra wraps what a constructor raises ("Error in call to target ..."): the user reads medexp's line only."""
    done = medexp("data=detection_datalist", "model=retinanet", "task=detection", "data.box_mode=nonsense", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_clear_error(done, "data.box_mode")
    assert "Error in call to target" not in done.stderr and "Error executing job" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: data.box_mode='nonsense'"), done.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["trainer.max_epoch=2"], ["did you mean trainer.max_epochs"]),
    (["modle=cnn"], ["did you mean model?"]),
    (["hparams_search=optuna"], ["add -m"]),
    (["data=chasedb1"], ["data=chasedb1 is a segmentation data set", "task=segmentation"]),
    (["data=synthetic_boxes", "task=segmentation", "model=unet"], ["task=detection model=retinanet"]),
    (["tracking.register_as=lesions"], ["tracking.register_as=lesions", "logs no MLflow run"]),  # with logger=csv
])
def test_mistakes_a_newcomer_makes_get_one_line_naming_the_fix(tmp_path, args, words):
    done = medexp(*args, "logger=csv", cwd=tmp_path)
    assert_clear_error(done, *words)
    assert done.returncode == 2 and len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
