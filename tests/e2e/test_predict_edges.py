"""medexp-predict at its edges: a broken file among good ones, a run folder as ckpt_path, its own --help and
did-you-mean, inputs of another size (resize=true), predictions drawn on their images (overlays=true)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medexp.data.inmemory import fit_to_shape
from medexp.errors import ConfigError, DataError
from medexp.workflows.predict import predict
from tests.fixtures_data import write_chase_like
from tests.unit.workflows.test_predict import TINY_UNET, train

SCRIPT = str(Path(sys.executable).parent / "medexp-predict")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A 32 px grey classifier (synthetic lesions), its run folder beside its checkpoint."""
    return train(tmp_path_factory.mktemp("classifier"), "data.num_train=128", "data.num_val=32", "data.num_test=32")


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args, f"hydra.run.dir={cwd / 'run'}"], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=os.environ)


def test_a_truncated_png_is_skipped_and_named_and_the_others_are_written(classifier, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(folder / f"case_{i}.png")
    whole = (folder / "case_1.png").read_bytes()
    (folder / "case_1.png").write_bytes(whole[: len(whole) // 2])  # a download cut short
    done = run(f"ckpt_path={classifier}", f"inputs={folder}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(folder / "case_1.png") in errors[0], done.stderr[-2000:]
    written = [row["input"] for row in rows(tmp_path / "out" / "predictions.csv")]
    assert written == [str(folder / "case_0.png"), str(folder / "case_2.png")]
    skipped = json.loads((tmp_path / "out" / "predictions.json").read_text())["skipped"]
    assert [case["input"] for case in skipped] == [str(folder / "case_1.png")]


def test_a_run_folder_predicts_with_its_best_checkpoint(classifier, tmp_path):
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(tmp_path / "case.png")
    run_folder = classifier.parent.parent
    summary = predict(str(run_folder), str(tmp_path / "case.png"), tmp_path / "out")
    assert summary["checkpoint"] == str(classifier.resolve())
    with pytest.raises(DataError, match="is a folder without a best checkpoint"):
        predict(str(tmp_path), str(tmp_path / "case.png"), tmp_path / "out2")


def test_help_lists_predict_s_options_and_a_typo_points_at_predict_s_config(tmp_path):
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "ckpt_path" in done.stdout and "resize" in done.stdout
    assert "hparams_search" not in done.stdout and "Configuration groups" not in done.stdout
    done = run("ckpt_pth=x", "inputs=y", cwd=tmp_path)
    assert done.returncode == 2 and "did you mean ckpt_path?" in done.stderr
    assert "medexp-predict --cfg job" in done.stderr and "medexp-train" not in done.stderr


def test_fit_to_shape_resamples_and_converts_colour_in_the_stored_dtype():
    colour = np.zeros((3, 64, 64), np.uint8)
    colour[0], colour[1], colour[2] = 200, 100, 50
    grey = fit_to_shape(colour, (1, 32, 32))
    assert grey.shape == (1, 32, 32) and grey.dtype == np.uint8
    assert np.all(grey == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50))
    halves = np.zeros((1, 64, 64), np.float32)
    halves[:, :, 32:] = 1.0
    small = fit_to_shape(halves, (3, 32, 32))
    assert small.shape == (3, 32, 32) and small[:, :, :15].max() == 0 and small[:, :, 17:].min() == 1


def test_resize_true_brings_a_large_colour_image_to_the_training_size(classifier, tmp_path):
    big = np.zeros((512, 512, 3), np.uint8)
    big[128:384, 128:384] = 220
    Image.fromarray(big).save(tmp_path / "xray.png")
    with pytest.raises(DataError, match="add resize=true"):
        predict(str(classifier), str(tmp_path / "xray.png"), tmp_path / "refused")
    predict(str(classifier), str(tmp_path / "xray.png"), tmp_path / "resized", resize=True)
    Image.fromarray(fit_to_shape(np.moveaxis(big, -1, 0), (1, 32, 32))[0]).save(tmp_path / "small.png")
    predict(str(classifier), str(tmp_path / "small.png"), tmp_path / "small")
    resized, small = rows(tmp_path / "resized" / "predictions.csv"), rows(tmp_path / "small" / "predictions.csv")
    assert resized[0]["probability_benign"] == small[0]["probability_benign"]
    with pytest.raises(ConfigError, match="overlays=true draws segmentation and detection"):
        predict(str(classifier), str(tmp_path / "small.png"), tmp_path / "none", overlays=True)


def test_overlays_draw_a_segmentation_on_its_image(tmp_path):
    root = write_chase_like(tmp_path / "chase")
    ckpt = train(tmp_path, "data=chasedb1", f"data.root={root}", *TINY_UNET, "data.split.test_patients=['05','06']",
                 "data.split.val_count=1", "data.patch_size=[16,16]", "data.samples_per_image=2",
                 "+data.preprocessing.resize=[32,32]")
    image = sorted(root.glob("Image_05*"))[0]
    summary = predict(str(ckpt), str(image), tmp_path / "out", overlays=True)
    (case,) = summary["cases"]
    overlay = Image.open(case["overlay"])
    assert overlay.size[0] > 200 and Path(case["overlay"]).name == f"{image.stem}_overlay.png"


def test_overlays_draw_detections_on_their_image(tmp_path):
    ckpt = train(tmp_path, "experiment=synthetic_detection", "data.num_train=16", "data.num_val=4", "data.num_test=4",
                 "data.cache=none")
    image = sorted(tmp_path.rglob("test_*.png"))[0]
    summary = predict(str(ckpt), str(image), tmp_path / "out", overlays=True)
    (case,) = summary["cases"]
    assert Path(case["overlay"]).name == f"{image.stem}_overlay.png" and Image.open(case["overlay"]).size[0] > 200
