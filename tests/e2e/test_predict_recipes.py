"""medexp-predict works on the checkpoint of every recipe (experiment=...), as a user runs them: train a short
smoke run of the recipe, then predict on a few of its own kind of images. (BCCD and Hippocampus have their own
predict round trips in test_bccd.py and test_hippocampus.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA

BIN = Path(sys.executable).parent
SHARED = SHARED_DATA


def pneumonia_inputs(folder: Path) -> str:
    from PIL import Image

    folder.mkdir()
    images = np.load(SHARED / "pneumoniamnist.npz")["test_images"][:3]
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"case{index}.png")
    return str(folder)


def npz_of_noise(folder: Path, size: int) -> str:
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)
    np.savez(folder / "new.npz", test_images=images)
    return str(folder / "new.npz")


RECIPES = {  # experiment -> (extra overrides, inputs maker, data needed)
    "synthetic_lesions": ([], lambda folder: npz_of_noise(folder, size=32), None),
    "pneumoniamnist": ([f"data.root={SHARED}"], pneumonia_inputs, SHARED / "pneumoniamnist.npz"),
    "chasedb1_vessels": ([f"data.root={SHARED / 'CHASEDB1'}", "trainer.check_val_every_n_epoch=1"], lambda folder: str(SHARED / "CHASEDB1" / "Image_11L.jpg"),
                         SHARED / "CHASEDB1"),
    "synthetic_detection": ([], None, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_predict_works_on_every_recipes_checkpoint(experiment, tmp_path):
    overrides, make_inputs, needs = RECIPES[experiment]
    if needs is not None and not needs.exists():
        pytest.skip(f"real data not found at {needs}")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    train = subprocess.run([str(BIN / "medexp-train"), f"experiment={experiment}", *overrides, "debug=limit",
                            "trainer.max_epochs=1", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = next((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))
    if make_inputs is None:  # the synthetic boxes set writes its images where the data module keeps them
        inputs = str(next(p for p in (tmp_path / "outputs" / "data").rglob("*.png")))
    else:
        inputs = make_inputs(tmp_path / "inputs")
    predict = subprocess.run([str(BIN / "medexp-predict"), f"ckpt_path={ckpt}", f"inputs={inputs}",
                              f"output_dir={tmp_path / 'preds'}"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert predict.returncode == 0, predict.stderr[-3000:]
    summary = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    assert summary["cases"] and all(Path(v).is_file() for case in summary["cases"]
                                    for k, v in case.items() if k in ("csv", "mask", "json"))
