"""``experiment=hippocampus`` on a few real MSD Task04 volumes (``../shared/data``; skipped without it): a short run
validates on the provided fold and logs Dice and HD95 per structure, and ``medexp-predict`` with its checkpoint
writes label maps on each input's own grid."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import SHARED_DATA
from tests.unit.workflows.test_predict import train

REAL = SHARED_DATA / "Task04_Hippocampus"
pytestmark = [pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not found at {REAL}"), pytest.mark.slow]


@pytest.fixture(scope="module")
def hippocampus_run(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """Two cases of each of the official folds 0-2 (absolute paths), one epoch of the recipe on a narrow net."""
    out = tmp_path_factory.mktemp("hippocampus")
    training = json.loads((REAL / "msd_task04_hippocampus_folds.json").read_text())["training"]
    rows = [{**row, "image": str(REAL / row["image"]), "label": str(REAL / row["label"])}
            for fold in (0, 1, 2) for row in [r for r in training if r["fold"] == fold][:2]]
    (out / "folds.json").write_text(json.dumps({"training": rows}))
    ckpt = train(out, "experiment=hippocampus", f"data.root={REAL}", f"data.datalist.path={out / 'folds.json'}",
                 "data.fold=0", "logger=csv", "model.filters=[8,16,32,64]", "trainer.check_val_every_n_epoch=1")
    return out / "run", ckpt, rows


def test_short_run_validates_on_the_provided_fold_with_metrics_per_structure(hippocampus_run):
    run_dir, ckpt, rows = hippocampus_run
    config = torch.load(ckpt, weights_only=True)["hyper_parameters"]["config"]
    split = instantiate(OmegaConf.create(config).data).split  # the data the run saw, rebuilt from its checkpoint
    def files(records):  # resolved: the datalist resolves links, and ../shared may be one
        return [str(Path(r["image"]).resolve()) for r in records]

    assert files(split.val) == files(r for r in rows if r["fold"] == 0)
    assert files(split.train) == files(r for r in rows if r["fold"] != 0) and not split.test
    with open(run_dir / "csv" / "metrics.csv") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r.get("val/dice")]
    for structure in ("anterior", "posterior"):
        assert 0.0 <= float(row[f"val/dice_{structure}"]) <= 1.0
        assert float(row[f"val/hd95_{structure}"]) >= 0.0
    mean = (float(row["val/dice_anterior"]) + float(row["val/dice_posterior"])) / 2  # background excluded
    assert float(row["val/dice"]) == pytest.approx(mean, abs=1e-6)
    assert float(row["best/val/dice"]) == pytest.approx(float(row["val/dice"]))


def test_predict_writes_label_maps_on_each_input_grid(hippocampus_run, tmp_path):
    _, ckpt, _ = hippocampus_run
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    first = sorted((REAL / "imagesTs").glob("*.nii.gz"))[0]  # the shared copy holds one official test case
    (inputs / first.name).symlink_to(first)
    # the same volume with an oblique, offset affine: the mask must carry it, not a default one
    image = nib.load(first)
    oblique = np.array([[0.98, -0.17, 0.0, -12.5], [0.17, 0.98, 0.0, 30.0], [0.0, 0.0, 1.0, 4.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), oblique), inputs / "oblique.nii.gz")
    result = subprocess.run([str(Path(sys.executable).parent / "medexp-predict"), f"ckpt_path={ckpt}",
                             f"inputs={inputs}", f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in (first.name, "oblique.nii.gz"):
        source = nib.load(inputs / name)
        mask = nib.load(tmp_path / "out" / name.replace(".nii.gz", "_mask.nii.gz"))
        assert mask.shape == source.shape  # odd sizes (e.g. 35 x 51 x 35): the network's padding is undone
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


def test_test_true_without_test_cases_stops_before_training(tmp_path):
    """The official folds hold no test split: ``test=true`` is refused in one line before the first epoch, not
    after the whole training."""
    training = json.loads((REAL / "msd_task04_hippocampus_folds.json").read_text())["training"]
    rows = [{**row, "image": str(REAL / row["image"]), "label": str(REAL / row["label"])}
            for fold in (0, 1) for row in [r for r in training if r["fold"] == fold][:1]]
    (tmp_path / "folds.json").write_text(json.dumps({"training": rows}))
    done = subprocess.run([str(Path(sys.executable).parent / "medexp-train"), "experiment=hippocampus",
                           f"data.root={REAL}", f"data.datalist.path={tmp_path / 'folds.json'}", "test=true",
                           "logger=csv", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: data=hippocampus has no test cases: run with "
                                                            "test=false"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not list((tmp_path / "run").rglob("*.ckpt"))
